package auth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/tlsutil"
	"github.com/tokenbroker/tokenbroker/internal/tlsutil/tlstest"
)

// fakeService answers every RPC, reporting the caller it was given.
type fakeService struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
}

func callerOf(ctx context.Context) (string, error) {
	c, ok := auth.CallerFrom(ctx)
	if !ok {
		return "", status.Error(codes.Internal, "no caller in context")
	}
	return c.Name + "/" + c.Via, nil
}

func (fakeService) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	who, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	return &tokenbrokerv1.GetTokenResponse{AccessToken: "token-for-" + req.GetConnection(), TokenType: who}, nil
}

func (fakeService) InvalidateToken(ctx context.Context, _ *tokenbrokerv1.InvalidateTokenRequest) (*tokenbrokerv1.InvalidateTokenResponse, error) {
	_, err := callerOf(ctx)
	return &tokenbrokerv1.InvalidateTokenResponse{Invalidated: true}, err
}

func (fakeService) ListConnections(ctx context.Context, _ *tokenbrokerv1.ListConnectionsRequest) (*tokenbrokerv1.ListConnectionsResponse, error) {
	_, err := callerOf(ctx)
	return &tokenbrokerv1.ListConnectionsResponse{}, err
}

func (fakeService) StartAuthorization(ctx context.Context, _ *tokenbrokerv1.StartAuthorizationRequest) (*tokenbrokerv1.StartAuthorizationResponse, error) {
	_, err := callerOf(ctx)
	return &tokenbrokerv1.StartAuthorizationResponse{AuthorizationUrl: "https://upstream.test/authorize"}, err
}

func (fakeService) CompleteAuthorization(ctx context.Context, _ *tokenbrokerv1.CompleteAuthorizationRequest) (*tokenbrokerv1.CompleteAuthorizationResponse, error) {
	_, err := callerOf(ctx)
	return &tokenbrokerv1.CompleteAuthorizationResponse{}, err
}

// startServer serves the fake service and health on 127.0.0.1 behind a's
// interceptors, with TLS if tlsCfg is not nil.
func startServer(t *testing.T, a *auth.Authenticator, tlsCfg *tls.Config) string {
	t.Helper()
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(a.UnaryInterceptor(server.RefusalStatus)), grpc.StreamInterceptor(a.StreamInterceptor(server.RefusalStatus))}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	s := grpc.NewServer(opts...)
	tokenbrokerv1.RegisterTokenBrokerServiceServer(s, fakeService{})
	healthpb.RegisterHealthServer(s, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// clientTLS trusts the server CA and, if client is not nil, sends its
// certificate whatever CAs the server asks for.
func clientTLS(roots *x509.CertPool, client *tlstest.Leaf) credentials.TransportCredentials {
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if client != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &client.TLS, nil }
	}
	return credentials.NewTLS(cfg)
}

func ctxWithTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func bearer(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// call makes one RPC by short name.
func call(ctx context.Context, cc *grpc.ClientConn, rpc, connection string, scopes ...string) (string, error) {
	c := tokenbrokerv1.NewTokenBrokerServiceClient(cc)
	switch rpc {
	case "GetToken":
		r, err := c.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: connection, Scopes: scopes})
		return r.GetTokenType(), err
	case "InvalidateToken":
		_, err := c.InvalidateToken(ctx, &tokenbrokerv1.InvalidateTokenRequest{Connection: connection, Scopes: scopes})
		return "", err
	case "ListConnections":
		_, err := c.ListConnections(ctx, &tokenbrokerv1.ListConnectionsRequest{})
		return "", err
	case "StartAuthorization":
		_, err := c.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Connection: connection})
		return "", err
	case "CompleteAuthorization":
		_, err := c.CompleteAuthorization(ctx, &tokenbrokerv1.CompleteAuthorizationRequest{Connection: connection})
		return "", err
	}
	panic("unknown rpc " + rpc)
}

const (
	operatorKey = "op-key-0123456789abcdef"
	payKey      = "pay-key-0123456789abcdef"
	wrongKey    = "wrong-key-0123456789abcdef"
)

func testConfig() auth.Config {
	return auth.Config{Callers: []auth.CallerConfig{
		{Name: "svc-a", URISANs: []string{"spiffe://example.org/svc/a"},
			Policy: auth.Policy{Connections: []string{"conn-a"}, RPCs: []string{"service"}}},
		{Name: "svc-b", DNSSANs: []string{"svc-b.internal"},
			Policy: auth.Policy{Connections: []string{"conn-b"}}}, // rpcs default to service
		{Name: "ops", APIKeySHA256: []string{keyHash("old-operator-key"), keyHash(operatorKey)},
			Policy: auth.Policy{Connections: []string{"*"}, RPCs: []string{"operator"}}},
		{Name: "payments", APIKeySHA256: []string{keyHash(payKey)},
			Policy: auth.Policy{Connections: []string{"pay-*"}, Scopes: []string{"payments:read", "profile:*"}, RPCs: []string{"service", "InvalidateToken"}}},
	}}
}

func TestInterceptorOverMTLS(t *testing.T) {
	serverCA, clientCA, otherCA := tlstest.NewCA(t, "server CA"), tlstest.NewCA(t, "client CA"), tlstest.NewCA(t, "other CA")
	a, err := auth.New(testConfig())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srvCert := serverCA.Localhost(t)
	// Client certificates are optional here so that API keys work on the
	// same listener; the ones sent are verified.
	addr := startServer(t, a, &tls.Config{
		Certificates: []tls.Certificate{srvCert.TLS},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCA.Pool(),
		MinVersion:   tls.VersionTLS12,
	})
	roots := serverCA.Pool()
	svcA := clientCA.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/a"}})
	svcB := clientCA.Issue(t, tlstest.Options{DNSNames: []string{"SVC-B.internal"}})
	unknown := clientCA.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/z"}})
	both := clientCA.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/a"}, DNSNames: []string{"svc-b.internal"}})
	untrusted := otherCA.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/a"}})

	anonConn := dial(t, addr, clientTLS(roots, nil))
	conns := map[string]*grpc.ClientConn{
		"none":    anonConn,
		"svc-a":   dial(t, addr, clientTLS(roots, svcA)),
		"svc-b":   dial(t, addr, clientTLS(roots, svcB)),
		"unknown": dial(t, addr, clientTLS(roots, unknown)),
		"both":    dial(t, addr, clientTLS(roots, both)),
	}

	tests := []struct {
		name       string
		cert       string // key of conns
		key        string // API key; empty sends none
		header     string // raw authorization header, instead of key
		rpc        string
		connection string
		scopes     []string
		want       codes.Code
		wantCaller string   // for OK GetToken calls
		wantMsg    []string // substrings of the status message
	}{
		{name: "no credentials", cert: "none", rpc: "GetToken", connection: "conn-a", want: codes.Unauthenticated, wantMsg: []string{"no credentials"}},
		{name: "wrong API key", cert: "none", key: wrongKey, rpc: "GetToken", connection: "conn-a", want: codes.Unauthenticated, wantMsg: []string{"unknown API key"}},
		{name: "wrong API key beats a good certificate", cert: "svc-a", key: wrongKey, rpc: "GetToken", connection: "conn-a", want: codes.Unauthenticated},
		{name: "not bearer", cert: "none", header: "Basic b3BzOnNlY3JldA==", rpc: "GetToken", connection: "conn-a", want: codes.Unauthenticated, wantMsg: []string{"Bearer <API key>"}},
		{name: "empty bearer", cert: "none", header: "Bearer ", rpc: "GetToken", connection: "conn-a", want: codes.Unauthenticated},
		{name: "certificate of no configured caller", cert: "unknown", rpc: "GetToken", connection: "conn-a", want: codes.Unauthenticated, wantMsg: []string{"no configured caller"}},
		{name: "certificate naming two callers", cert: "both", rpc: "GetToken", connection: "conn-a", want: codes.Unauthenticated, wantMsg: []string{"two callers"}},

		{name: "spiffe caller, allowed connection", cert: "svc-a", rpc: "GetToken", connection: "conn-a", want: codes.OK, wantCaller: "svc-a/mtls"},
		{name: "spiffe caller, other connection", cert: "svc-a", rpc: "GetToken", connection: "conn-b", want: codes.PermissionDenied, wantMsg: []string{`caller "svc-a" may not use connection "conn-b"`}},
		{name: "service role may not invalidate", cert: "svc-a", rpc: "InvalidateToken", connection: "conn-a", want: codes.PermissionDenied, wantMsg: []string{`caller "svc-a" may not call InvalidateToken`}},
		{name: "service role may not list", cert: "svc-a", rpc: "ListConnections", want: codes.PermissionDenied},
		{name: "service role may not authorize", cert: "svc-a", rpc: "StartAuthorization", connection: "conn-a", want: codes.PermissionDenied},
		{name: "dns caller, case-insensitive", cert: "svc-b", rpc: "GetToken", connection: "conn-b", want: codes.OK, wantCaller: "svc-b/mtls"},
		{name: "default rpcs are service", cert: "svc-b", rpc: "CompleteAuthorization", connection: "conn-b", want: codes.PermissionDenied},

		{name: "operator gets any token", cert: "none", key: operatorKey, rpc: "GetToken", connection: "anything", want: codes.OK, wantCaller: "ops/api_key"},
		{name: "operator over a client certificate", cert: "svc-a", key: operatorKey, rpc: "GetToken", connection: "conn-b", want: codes.OK, wantCaller: "ops/api_key"},
		{name: "operator invalidates", cert: "none", key: operatorKey, rpc: "InvalidateToken", connection: "conn-a", want: codes.OK},
		{name: "operator lists", cert: "none", key: operatorKey, rpc: "ListConnections", want: codes.OK},
		{name: "operator starts authorization", cert: "none", key: operatorKey, rpc: "StartAuthorization", connection: "conn-a", want: codes.OK},
		{name: "operator completes authorization", cert: "none", key: operatorKey, rpc: "CompleteAuthorization", connection: "conn-a", want: codes.OK},
		{name: "rotated-out key still listed", cert: "none", key: "old-operator-key", rpc: "ListConnections", want: codes.OK},
		{name: "scheme is case-insensitive", cert: "none", header: "bearer " + operatorKey, rpc: "ListConnections", want: codes.OK},

		{name: "glob connection and allowed scopes", cert: "none", key: payKey, rpc: "GetToken", connection: "pay-eu", scopes: []string{"payments:read", "profile:email"}, want: codes.OK, wantCaller: "payments/api_key"},
		{name: "scope outside the globs", cert: "none", key: payKey, rpc: "GetToken", connection: "pay-eu", scopes: []string{"payments:read", "payments:write"}, want: codes.PermissionDenied, wantMsg: []string{`caller "payments" may not request scope "payments:write" on connection "pay-eu"`}},
		{name: "default scopes with restricted scopes", cert: "none", key: payKey, rpc: "GetToken", connection: "pay-eu", want: codes.PermissionDenied, wantMsg: []string{"name them in scopes"}},
		{name: "connection outside the glob", cert: "none", key: payKey, rpc: "GetToken", connection: "payroll", scopes: []string{"payments:read"}, want: codes.PermissionDenied, wantMsg: []string{`caller "payments" may not use connection "payroll"`}},
		{name: "explicit InvalidateToken", cert: "none", key: payKey, rpc: "InvalidateToken", connection: "pay-us", scopes: []string{"payments:read"}, want: codes.OK},
		{name: "invalidate outside scopes", cert: "none", key: payKey, rpc: "InvalidateToken", connection: "pay-us", scopes: []string{"admin"}, want: codes.PermissionDenied},
		{name: "long connection names are clipped", cert: "none", key: payKey, rpc: "GetToken", connection: strings.Repeat("x", 500), want: codes.PermissionDenied, wantMsg: []string{strings.Repeat("x", 64) + "…"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxWithTimeout(t)
			switch {
			case tt.header != "":
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tt.header)
			case tt.key != "":
				ctx = bearer(ctx, tt.key)
			}
			who, err := call(ctx, conns[tt.cert], tt.rpc, tt.connection, tt.scopes...)
			st := status.Convert(err)
			if st.Code() != tt.want {
				t.Fatalf("%s(%q) = %v; want code %v", tt.rpc, tt.connection, err, tt.want)
			}
			if tt.wantCaller != "" && who != tt.wantCaller {
				t.Errorf("handler saw caller %q; want %q", who, tt.wantCaller)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(st.Message(), m) {
					t.Errorf("status message %q; want it to contain %q", st.Message(), m)
				}
			}
			for _, secret := range []string{operatorKey, payKey, wrongKey} {
				if strings.Contains(st.Message(), secret) || strings.Contains(st.Message(), secret[:10]) {
					t.Errorf("status message contains an API key")
				}
			}
			if tt.want != codes.OK {
				checkErrorInfo(t, st, tt.want)
			}
		})
	}

	t.Run("untrusted client certificate", func(t *testing.T) {
		cc := dial(t, addr, clientTLS(roots, untrusted))
		_, err := call(ctxWithTimeout(t), cc, "GetToken", "conn-a")
		if err == nil {
			t.Fatal("GetToken with a certificate from another CA succeeded; want refused")
		}
		t.Logf("refused: %v", err)
		if c := status.Code(err); c != codes.Unavailable && c != codes.Unauthenticated {
			t.Errorf("GetToken with a certificate from another CA = %v; want UNAVAILABLE or UNAUTHENTICATED", err)
		}
	})

	t.Run("health is exempt", func(t *testing.T) {
		r, err := healthpb.NewHealthClient(anonConn).Check(ctxWithTimeout(t), &healthpb.HealthCheckRequest{})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Health.Check without credentials = %v, %v; want SERVING", r.GetStatus(), err)
		}
	})

	t.Run("health streams are exempt", func(t *testing.T) {
		w, err := healthpb.NewHealthClient(anonConn).Watch(ctxWithTimeout(t), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Health.Watch without credentials = %v, %v; want SERVING", r.GetStatus(), err)
		}
	})
}

func checkErrorInfo(t *testing.T, st *status.Status, code codes.Code) {
	t.Helper()
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			want := server.ReasonUnauthenticated
			if code == codes.PermissionDenied {
				want = server.ReasonPermissionDenied
			}
			if ei.GetDomain() != server.ErrorDomain || ei.GetReason() != want {
				t.Errorf("ErrorInfo = %s/%s; want %s/%s", ei.GetDomain(), ei.GetReason(), server.ErrorDomain, want)
			}
			return
		}
	}
	t.Errorf("status %v has no ErrorInfo", st.Code())
}

// A certificate that the TLS layer did not verify is no identity, even if
// its SAN names a caller.
func TestUnverifiedCertificateIsNoIdentity(t *testing.T) {
	serverCA, otherCA := tlstest.NewCA(t, "server CA"), tlstest.NewCA(t, "other CA")
	a, err := auth.New(testConfig())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	addr := startServer(t, a, &tls.Config{
		Certificates: []tls.Certificate{serverCA.Localhost(t).TLS},
		ClientAuth:   tls.RequestClientCert, // asks, never verifies
		MinVersion:   tls.VersionTLS12,
	})
	forged := otherCA.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/a"}})
	cc := dial(t, addr, clientTLS(serverCA.Pool(), forged))
	_, err = call(ctxWithTimeout(t), cc, "GetToken", "conn-a")
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("GetToken with an unverified certificate = %v; want UNAUTHENTICATED", err)
	}
}

func TestAnonymous(t *testing.T) {
	anyConn := auth.Policy{Connections: []string{"*"}}
	tests := []struct {
		name       string
		anon       auth.AnonymousConfig
		rpc        string
		want       codes.Code
		wantCaller string
	}{
		{name: "refused by default", rpc: "GetToken", want: codes.Unauthenticated},
		{name: "policy without enabled is still refused", anon: auth.AnonymousConfig{LoopbackOnly: true, Policy: anyConn}, rpc: "GetToken", want: codes.Unauthenticated},
		{name: "enabled", anon: auth.AnonymousConfig{Enabled: true, Policy: anyConn}, rpc: "GetToken", want: codes.OK, wantCaller: "anonymous/anonymous"},
		{name: "loopback only, from loopback", anon: auth.AnonymousConfig{Enabled: true, LoopbackOnly: true, Policy: anyConn}, rpc: "GetToken", want: codes.OK, wantCaller: "anonymous/anonymous"},
		{name: "policy still applies", anon: auth.AnonymousConfig{Enabled: true, LoopbackOnly: true, Policy: anyConn}, rpc: "StartAuthorization", want: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := auth.New(auth.Config{AllowAnonymous: tt.anon})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			cc := dial(t, startServer(t, a, nil), insecure.NewCredentials())
			who, err := call(ctxWithTimeout(t), cc, tt.rpc, "demo")
			if status.Code(err) != tt.want {
				t.Fatalf("%s = %v; want %v", tt.rpc, err, tt.want)
			}
			if who != tt.wantCaller {
				t.Errorf("handler saw caller %q; want %q", who, tt.wantCaller)
			}
		})
	}
}

// The listener in TestAnonymous is on loopback, so the refusal of a remote
// anonymous caller is checked by calling the interceptor with a peer.
func TestAnonymousLoopbackOnly(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want codes.Code
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, codes.OK},
		{&net.TCPAddr{IP: net.IPv4(127, 3, 2, 1), Port: 5000}, codes.OK},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 5000}, codes.OK},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 5000}, codes.OK},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5000}, codes.Unauthenticated},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5000}, codes.Unauthenticated},
		{&net.UnixAddr{Name: "/run/broker.sock", Net: "unix"}, codes.Unauthenticated},
		{nil, codes.Unauthenticated},
	}
	a, err := auth.New(auth.Config{AllowAnonymous: auth.AnonymousConfig{Enabled: true, LoopbackOnly: true, Policy: auth.Policy{Connections: []string{"*"}}}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	intercept := a.UnaryInterceptor(server.RefusalStatus)
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/GetToken"}
	for _, tt := range tests {
		ctx := t.Context()
		if tt.addr != nil {
			ctx = peer.NewContext(ctx, &peer.Peer{Addr: tt.addr})
		}
		_, err := intercept(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "demo"}, info, func(ctx context.Context, _ any) (any, error) {
			if c, ok := auth.CallerFrom(ctx); !ok || c.Name != auth.AnonymousName {
				return nil, errors.New("handler: no anonymous caller in context")
			}
			return nil, nil
		})
		if status.Code(err) != tt.want {
			t.Errorf("peer %v: interceptor = %v; want %v", tt.addr, err, tt.want)
		}
	}
}

// Methods outside TokenBrokerService are refused unless exempt, and the
// operator role covers exactly the service's methods: an RPC added to the
// proto must be added to the policy too.
func TestMethods(t *testing.T) {
	a, err := auth.New(auth.Config{AllowAnonymous: auth.AnonymousConfig{Enabled: true,
		Policy: auth.Policy{Connections: []string{"*"}, RPCs: []string{"operator"}}}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	intercept := a.UnaryInterceptor(server.RefusalStatus)
	ok := func(context.Context, any) (any, error) { return nil, nil }
	var methods []string
	for _, m := range tokenbrokerv1.TokenBrokerService_ServiceDesc.Methods {
		methods = append(methods, m.MethodName)
		full := "/" + tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName + "/" + m.MethodName
		if _, err := intercept(t.Context(), struct{}{}, &grpc.UnaryServerInfo{FullMethod: full}, ok); err != nil {
			t.Errorf("operator calling %s = %v; want allowed", full, err)
		}
	}
	if len(tokenbrokerv1.TokenBrokerService_ServiceDesc.Streams) != 0 {
		t.Errorf("TokenBrokerService has streaming methods; check that the operator role covers them")
	}
	slices.Sort(methods)
	if want := []string{"CompleteAuthorization", "DeleteAccount", "GetToken", "ImportGrant", "InvalidateToken", "ListAccounts", "ListConnections", "StartAuthorization"}; !slices.Equal(methods, want) {
		t.Errorf("TokenBrokerService methods = %v; want %v (update the auth policy's RPC names)", methods, want)
	}
	for _, full := range []string{"/tokenbroker.v1.AdminService/Shutdown", "/tokenbroker.v2.TokenBrokerService/GetToken", "/grpc.healthz/Check"} {
		_, err := intercept(t.Context(), struct{}{}, &grpc.UnaryServerInfo{FullMethod: full}, ok)
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("operator calling %s = %v; want PERMISSION_DENIED", full, err)
		}
	}
	refuseAll, err := auth.New(auth.Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, full := range []string{"/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"} {
		if _, err := refuseAll.UnaryInterceptor(server.RefusalStatus)(t.Context(), struct{}{}, &grpc.UnaryServerInfo{FullMethod: full}, ok); err != nil {
			t.Errorf("%s without credentials = %v; want exempt", full, err)
		}
	}
}

// fakeStream hands the handler one request.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
	req *tokenbrokerv1.GetTokenRequest
}

func (s *fakeStream) Context() context.Context { return s.ctx }
func (s *fakeStream) RecvMsg(m any) error {
	m.(*tokenbrokerv1.GetTokenRequest).Connection = s.req.GetConnection()
	return nil
}

func TestStreamInterceptor(t *testing.T) {
	a, err := auth.New(auth.Config{Callers: []auth.CallerConfig{{Name: "ops", APIKeySHA256: []string{keyHash(operatorKey)},
		Policy: auth.Policy{Connections: []string{"conn-a"}, RPCs: []string{"operator"}}}}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	info := &grpc.StreamServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/GetToken", IsClientStream: true}
	withKey := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer "+operatorKey))
	tests := []struct {
		name       string
		ctx        context.Context
		connection string
		want       codes.Code
	}{
		{"no credentials", t.Context(), "conn-a", codes.Unauthenticated},
		{"allowed", withKey, "conn-a", codes.OK},
		{"other connection", withKey, "conn-b", codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := &fakeStream{ctx: tt.ctx, req: &tokenbrokerv1.GetTokenRequest{Connection: tt.connection}}
			err := a.StreamInterceptor(server.RefusalStatus)(nil, ss, info, func(_ any, s grpc.ServerStream) error {
				if c, ok := auth.CallerFrom(s.Context()); !ok || c.Name != "ops" {
					return errors.New("handler: no caller in the stream's context")
				}
				return s.RecvMsg(new(tokenbrokerv1.GetTokenRequest))
			})
			if status.Code(err) != tt.want {
				t.Errorf("stream = %v; want %v", err, tt.want)
			}
		})
	}
}

// The listener as the broker sets it up: certificates from files through
// tlsutil, client certificates required and verified.
func TestWithReloader(t *testing.T) {
	serverCA, clientCA := tlstest.NewCA(t, "server CA"), tlstest.NewCA(t, "client CA")
	dir := t.TempDir()
	cfg := tlsutil.ServerConfig{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		ClientCAFile: filepath.Join(dir, "clients.pem"), MinVersion: "1.3"}
	srv := serverCA.Localhost(t)
	tlstest.WriteFile(t, cfg.CertFile, srv.CertPEM)
	tlstest.WriteFile(t, cfg.KeyFile, srv.KeyPEM)
	tlstest.WriteFile(t, cfg.ClientCAFile, clientCA.CertPEM)
	r, err := tlsutil.NewReloader(cfg, nil)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	a, err := auth.New(testConfig())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	addr := startServer(t, a, r.TLSConfig())
	roots := serverCA.Pool()

	svcA := clientCA.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/a"}})
	who, err := call(ctxWithTimeout(t), dial(t, addr, clientTLS(roots, svcA)), "GetToken", "conn-a")
	if err != nil || who != "svc-a/mtls" {
		t.Errorf("GetToken as svc-a = %q, %v; want svc-a/mtls", who, err)
	}
	_, err = call(ctxWithTimeout(t), dial(t, addr, clientTLS(roots, svcA)), "GetToken", "conn-b")
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("GetToken as svc-a for conn-b = %v; want PERMISSION_DENIED", err)
	}
	// require_and_verify: no certificate, not even with an API key.
	_, err = call(bearer(ctxWithTimeout(t), operatorKey), dial(t, addr, clientTLS(roots, nil)), "GetToken", "conn-a")
	if err == nil {
		t.Errorf("GetToken without a client certificate succeeded; want the handshake refused")
	}
}

func TestMayUseConnection(t *testing.T) {
	if !auth.MayUseConnection(context.Background(), "pay") {
		t.Error("MayUseConnection without a caller = false; want true (in-process calls are not gated here)")
	}
	if !auth.MayUseConnection(auth.NewContext(context.Background(), auth.Caller{Name: "x"}), "pay") {
		t.Error("MayUseConnection after NewContext = false; want true")
	}
	a, err := auth.New(auth.Config{AllowAnonymous: auth.AnonymousConfig{Enabled: true,
		Policy: auth.Policy{Connections: []string{"pay-*", "ops"}, RPCs: []string{auth.RoleOperator}}}})
	if err != nil {
		t.Fatal(err)
	}
	info := &grpc.UnaryServerInfo{FullMethod: tokenbrokerv1.TokenBrokerService_ListConnections_FullMethodName}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}})
	_, err = a.UnaryInterceptor(nil)(ctx, &tokenbrokerv1.ListConnectionsRequest{}, info, func(ctx context.Context, _ any) (any, error) {
		for name, want := range map[string]bool{"pay-eu": true, "ops": true, "payroll": false, "other": false} {
			if got := auth.MayUseConnection(ctx, name); got != want {
				t.Errorf("MayUseConnection(%q) = %v; want %v", name, got, want)
			}
		}
		return nil, nil
	})
	if err != nil {
		t.Fatalf("interceptor: %v", err)
	}
}

// TestRefusalDetails: a refusal's status over gRPC carries the message and
// exactly the ErrorInfo metadata auth has always given: the caller once
// identified, and the connection as the request named it (if at most 64
// bytes, valid name or not).
func TestRefusalDetails(t *testing.T) {
	a, err := auth.New(testConfig())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	cc := dial(t, startServer(t, a, nil), insecure.NewCredentials())
	tests := []struct {
		name, key, rpc, connection string
		code                       codes.Code
		reason, msg                string
		meta                       map[string]string
	}{
		{"unknown key", wrongKey, "GetToken", "conn-a", codes.Unauthenticated, "UNAUTHENTICATED", "unknown API key", map[string]string{}},
		{"connection", payKey, "GetToken", "conn-a", codes.PermissionDenied, "PERMISSION_DENIED",
			`caller "payments" may not use connection "conn-a"`, map[string]string{"caller": "payments", "connection": "conn-a"}},
		{"method", payKey, "ListConnections", "", codes.PermissionDenied, "PERMISSION_DENIED",
			`caller "payments" may not call ListConnections`, map[string]string{"caller": "payments"}},
		{"name outside the pattern", payKey, "GetToken", "Pay EU!", codes.PermissionDenied, "PERMISSION_DENIED",
			`caller "payments" may not use connection "Pay EU!"`, map[string]string{"caller": "payments", "connection": "Pay EU!"}},
		{"name too long", payKey, "GetToken", strings.Repeat("x", 65), codes.PermissionDenied, "PERMISSION_DENIED",
			`caller "payments" may not use connection "` + strings.Repeat("x", 64) + `…"`, map[string]string{"caller": "payments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := call(bearer(ctxWithTimeout(t), tt.key), cc, tt.rpc, tt.connection)
			st := status.Convert(err)
			if st.Code() != tt.code || st.Message() != tt.msg {
				t.Errorf("%s = %v %q; want %v %q", tt.rpc, st.Code(), st.Message(), tt.code, tt.msg)
			}
			var ei *errdetails.ErrorInfo
			for _, d := range st.Details() {
				if e, ok := d.(*errdetails.ErrorInfo); ok {
					ei = e
				}
			}
			if ei.GetDomain() != "tokenbroker.v1" || ei.GetReason() != tt.reason {
				t.Errorf("ErrorInfo = %s/%s; want tokenbroker.v1/%s", ei.GetDomain(), ei.GetReason(), tt.reason)
			}
			if diff := cmp.Diff(tt.meta, ei.GetMetadata(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ErrorInfo metadata (-want +got):\n%s", diff)
			}
		})
	}
}
