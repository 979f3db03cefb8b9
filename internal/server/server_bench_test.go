package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/reqlog"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// A cached GetToken through the service, the interceptor chain cmd/broker
// installs, and real gRPC on loopback, next to a do-nothing server. Run with
//
//	go test -run '^$' -bench . -benchmem ./internal/server

const benchToken = "0123456789abcdefghijABCDEFGHIJ-_0123456789a" // 43 characters, as the demo emulator's

type benchProvider struct{}

func (benchProvider) Token(_ context.Context, req providers.Request) (*providers.Token, error) {
	return &providers.Token{AccessToken: secret.New(benchToken), TokenType: "Bearer",
		Expiry: time.Now().Add(10 * time.Hour), Scopes: req.Scopes}, nil
}

// benchSetup is the broker's gRPC stack as cmd/broker assembles it for -demo:
// JSON logs at info level through reqlog, the gRPC server metrics, and auth
// admitting anonymous loopback callers.
type benchSetup struct {
	svc *server.Service
	m   *metrics.Metrics
	// getToken calls GetToken's handler as RegisterService registers it,
	// with benchRequest.
	getToken getTokenCall
	// chain is what cmd/broker installs: server.UnaryInterceptor, the
	// three below folded into one.
	chain []grpc.UnaryServerInterceptor
	// layers are reqlog, metrics and auth as separate interceptors, in the
	// order the fold keeps.
	layers []grpc.UnaryServerInterceptor
}

func newBenchSetup(b testing.TB) *benchSetup {
	b.Helper()
	c, err := memory.New(memory.Options{})
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(reqlog.NewHandler(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})))
	m := metrics.New()
	br, err := broker.New(broker.Options{Cache: c, Logger: log, Metrics: m, Encode: server.EncodeToken, Connections: []broker.Connection{
		{Name: "demo-cc", Type: "client_credentials", Provider: benchProvider{}, Skew: time.Minute}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close(); c.Close() })
	authn, err := auth.New(auth.Config{AllowAnonymous: auth.AnonymousConfig{Enabled: true, LoopbackOnly: true,
		Policy: auth.Policy{Connections: []string{"*"}, RPCs: []string{auth.RoleOperator}}}})
	if err != nil {
		b.Fatal(err)
	}
	s := &benchSetup{
		svc:    server.New(server.Config{Broker: br, Logger: log, Metrics: m}),
		m:      m,
		chain:  []grpc.UnaryServerInterceptor{server.UnaryInterceptor(log, m.GRPC, authn)},
		layers: []grpc.UnaryServerInterceptor{reqlog.UnaryInterceptor(log), m.GRPC.UnaryServerInterceptor(), authn.UnaryInterceptor(server.RefusalStatus)},
	}
	// As cmd/broker does once the services are registered.
	gs := grpc.NewServer()
	server.RegisterService(gs, s.svc)
	m.GRPC.InitializeMetrics(gs)
	var r registrar
	server.RegisterService(&r, s.svc)
	s.getToken = r.handler(b, benchRequest)
	return s
}

// registrar keeps what is registered on it, to call a method's handler as
// grpc-go does, transport aside.
type registrar struct {
	desc *grpc.ServiceDesc
	impl any
}

func (r *registrar) RegisterService(desc *grpc.ServiceDesc, impl any) { r.desc, r.impl = desc, impl }

// handler returns GetToken's handler, bound to the registered service and
// to req, as a call that also encodes the answer with codec, as grpc-go
// sends it.
func (r *registrar) handler(tb testing.TB, req *tokenbrokerv1.GetTokenRequest) getTokenCall {
	tb.Helper()
	// The decoder fills the handler's request without allocating, so what
	// is measured is the handler's own work.
	dec := func(m any) error {
		r := m.(*tokenbrokerv1.GetTokenRequest)
		r.Connection, r.Account, r.Scopes = req.Connection, req.Account, req.Scopes
		return nil
	}
	for _, m := range r.desc.Methods {
		if m.MethodName != "GetToken" {
			continue
		}
		return func(ctx context.Context, ic grpc.UnaryServerInterceptor, codec encoding.CodecV2) (any, error) {
			resp, err := m.Handler(r.impl, ctx, dec, ic)
			if err != nil {
				return nil, err
			}
			data, err := codec.Marshal(resp)
			if err != nil {
				return nil, err
			}
			data.Free()
			return resp, nil
		}
	}
	tb.Fatal("no GetToken method")
	return nil
}

// getTokenCall is a call of GetToken's handler: through ic (nil: none), the
// answer encoded with codec.
type getTokenCall func(ctx context.Context, ic grpc.UnaryServerInterceptor, codec encoding.CodecV2) (any, error)

var benchRequest = &tokenbrokerv1.GetTokenRequest{Connection: "demo-cc", Scopes: []string{"read"}}

// incomingContext is what grpc-go hands a handler for a call from a
// grpc-go client on loopback.
func incomingContext() context.Context {
	md := metadata.Pairs(":authority", "127.0.0.1:9090", "content-type", "application/grpc", "user-agent", "grpc-go/1.85.0")
	ctx := metadata.NewIncomingContext(context.Background(), md)
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50123}, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090}})
}

func BenchmarkGetToken(b *testing.B) {
	s := newBenchSetup(b)
	ctx := incomingContext()
	codec := server.Codec()
	if _, err := s.getToken(ctx, nil, codec); err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, call func() (any, error)) {
		b.ReportAllocs()
		stop := cpuMeter(b)
		for b.Loop() {
			if _, err := call(); err != nil {
				b.Fatal(err)
			}
		}
		stop()
	}
	// baseline: the do-nothing service's generated handler and grpc-go's
	// own codec, what the broker's figures compare with.
	var base registrar
	tokenbrokerv1.RegisterTokenBrokerServiceServer(&base, &emptyService{resp: &tokenbrokerv1.GetTokenResponse{
		AccessToken: benchToken, TokenType: "Bearer", ExpiresAt: timestamppb.Now(), Scopes: []string{"read"}}})
	baseCall := base.handler(b, benchRequest)
	protoCodec := encoding.GetCodecV2("proto")
	b.Run("baseline", func(b *testing.B) {
		run(b, func() (any, error) { return baseCall(ctx, nil, protoCodec) })
	})
	// handler: GetToken's handler and the codec, no interceptor; chain:
	// with the interceptor cmd/broker installs; layers: the same work as
	// three interceptors.
	b.Run("handler", func(b *testing.B) {
		run(b, func() (any, error) { return s.getToken(ctx, nil, codec) })
	})
	for _, c := range []struct {
		name  string
		chain []grpc.UnaryServerInterceptor
	}{{"chain", s.chain}, {"layers", s.layers}} {
		ic := chainInterceptors(c.chain)
		b.Run(c.name, func(b *testing.B) {
			run(b, func() (any, error) { return s.getToken(ctx, ic, codec) })
		})
	}
	for i, name := range []string{"reqlog", "metrics", "auth"} {
		ic := chainInterceptors(s.layers[i : i+1])
		b.Run("only="+name, func(b *testing.B) {
			run(b, func() (any, error) { return s.getToken(ctx, ic, codec) })
		})
	}
}

// chainInterceptors is grpc.ChainUnaryInterceptor's composition: one
// interceptor is used as it is.
func chainInterceptors(chain []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	if len(chain) == 1 {
		return chain[0]
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return chainUnary(chain, info, h)(ctx, req)
	}
}

func chainUnary(chain []grpc.UnaryServerInterceptor, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) grpc.UnaryHandler {
	for i := len(chain) - 1; i >= 0; i-- {
		next, ic := h, chain[i]
		h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
	}
	return h
}

// emptyService is the do-nothing baseline: a constant response of the same shape.
type emptyService struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	resp *tokenbrokerv1.GetTokenResponse
}

func (s *emptyService) GetToken(context.Context, *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	return s.resp, nil
}

// BenchmarkGRPC is the whole round trip over loopback TCP, client included,
// one call at a time: the difference between the two is what the broker adds.
func BenchmarkGRPC(b *testing.B) {
	s := newBenchSetup(b)
	servers := map[string]func() *grpc.Server{
		"baseline": func() *grpc.Server {
			gs := grpc.NewServer()
			tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, &emptyService{resp: &tokenbrokerv1.GetTokenResponse{
				AccessToken: benchToken, TokenType: "Bearer", ExpiresAt: timestamppb.Now(), Scopes: []string{"read"}}})
			return gs
		},
		"broker": func() *grpc.Server {
			gs := grpc.NewServer(grpc.MaxRecvMsgSize(64<<10), grpc.ForceServerCodecV2(server.Codec()), grpc.ChainUnaryInterceptor(s.chain...))
			server.RegisterService(gs, s.svc)
			s.m.GRPC.InitializeMetrics(gs)
			return gs
		},
	}
	for _, name := range []string{"baseline", "broker"} {
		b.Run(name, func(b *testing.B) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			gs := servers[name]()
			go gs.Serve(lis)
			defer gs.Stop()
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			client := tokenbrokerv1.NewTokenBrokerServiceClient(cc)
			ctx := context.Background()
			if _, err := client.GetToken(ctx, benchRequest); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			stop := cpuMeter(b)
			for b.Loop() {
				if _, err := client.GetToken(ctx, benchRequest); err != nil {
					b.Fatal(err)
				}
			}
			stop()
		})
	}
}

// cpuMeter reports the process's CPU time per operation as cpu-ns/op next
// to ns/op: on a shared machine wall time per op swings with other work,
// CPU time much less. Start it right before the loop; call the function it
// returns right after.
func cpuMeter(b *testing.B) func() {
	start := processCPU()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
