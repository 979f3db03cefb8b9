package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/clientcredentials"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

const (
	prefix   = "tokenbroker:v1:"
	clientID = "svc-client"
	// A secret with every character RFC 6749 §2.3.1 encoding must survive.
	clientSecret = "s3cr+t%2B:!^= with space"
	skew         = 60 * time.Second
	lifetime     = time.Hour
)

// env is one broker served over real gRPC on loopback, in front of a
// client_credentials emulator, with a fake clock shared by both.
type env struct {
	client  tokenbrokerv1.TokenBrokerServiceClient
	emu     *ccemu.Server
	clock   *cachetest.Clock
	advance func(d time.Duration)
	redis   *redis.Client // nil for the memory cache
	logs    *logtest.Buffer
	// override, when set, is the body of a 200 the upstream gives instead
	// of asking the emulator: an answer ccemu never gives.
	override *atomic.Pointer[[]byte]
}

type backend struct {
	name string
	open func(t *testing.T, clock *cachetest.Clock) (cache.Cache, *redis.Client, func(time.Duration))
}

var backends = []backend{
	{"memory", func(t *testing.T, clock *cachetest.Clock) (cache.Cache, *redis.Client, func(time.Duration)) {
		c, err := memory.New(memory.Options{Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return c, nil, func(time.Duration) {}
	}},
	{"redis", func(t *testing.T, clock *cachetest.Clock) (cache.Cache, *redis.Client, func(time.Duration)) {
		srv := redistest.Start(t)
		c, err := rediscache.New(rediscache.Options{Client: rediscache.NewClient(rediscache.ClientConfig{Addrs: []string{srv.Addr()}}), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		raw := srv.Client(t)
		// Redis keeps real time; emulate the fake clock's advance by
		// shortening every key's remaining lifetime.
		return c, raw, func(d time.Duration) { redistest.AdvanceTTLs(t, raw, prefix, d) }
	}},
}

type connSpec struct {
	name, authStyle string
	timeout         time.Duration
}

func start(t *testing.T, be backend, specs ...connSpec) *env {
	t.Helper()
	if len(specs) == 0 {
		specs = []connSpec{{name: "cc", authStyle: "basic"}}
	}
	clock := cachetest.NewClock(time.Unix(1_700_000_000, 0))
	emu := ccemu.New(ccemu.Options{ClientID: clientID, ClientSecret: clientSecret, Lifetime: lifetime, Now: clock.Now})
	override := new(atomic.Pointer[[]byte])
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if body := override.Load(); body != nil {
			w.Header().Set("Content-Type", "application/json")
			w.Write(*body)
			return
		}
		emu.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	log, logs := logtest.New()
	t.Cleanup(func() {
		logtest.AssertNoSecrets(t, logs.String(), emuSecrets(emu))
	})

	c, raw, adv := be.open(t, clock)
	t.Cleanup(func() { c.Close() })
	loader := secret.Loader{LookupEnv: func(k string) (string, bool) { return clientSecret, k == "CC_SECRET" }}
	var conns []broker.Connection
	for _, s := range specs {
		timeout := s.timeout
		if timeout == 0 {
			timeout = 5 * time.Second
		}
		cfg := &clientcredentials.Config{TokenURL: up.URL + "/o/token/", ClientID: clientID,
			ClientSecret: secret.Ref{Env: "CC_SECRET"}, AuthStyle: s.authStyle,
			Timeout: providers.Duration{Duration: timeout}}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		p, err := cfg.Open(providers.Env{Name: s.name, Now: clock.Now, HTTPClient: up.Client(), Logger: log, Secrets: loader})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, broker.Connection{Name: s.name, Type: "client_credentials", Provider: p, Skew: skew})
	}
	b, err := broker.New(broker.Options{Cache: c, Connections: conns, Now: clock.Now, Logger: log, Encode: server.EncodeToken})
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		client: serve(t, server.New(server.Config{Broker: b, Logger: log}), grpc.ForceServerCodecV2(server.Codec())), emu: emu, clock: clock,
		advance: func(d time.Duration) { clock.Advance(d); adv(d) }, redis: raw, logs: logs, override: override,
	}
}

// emuSecrets is every credential the run could have leaked.
var issuedTokens sync.Map // token text → struct{}, filled by getToken

func emuSecrets(_ *ccemu.Server) logtest.Secrets {
	s := logtest.Secrets{"client secret": clientSecret}
	issuedTokens.Range(func(k, _ any) bool {
		s[fmt.Sprintf("access token %d", len(s))] = k.(string)
		return true
	})
	return s
}

func (e *env) getToken(t *testing.T, req *tokenbrokerv1.GetTokenRequest) *tokenbrokerv1.GetTokenResponse {
	t.Helper()
	resp, err := e.client.GetToken(context.Background(), req)
	if err != nil {
		t.Fatalf("GetToken(%s, %v) error = %v", req.GetConnection(), req.GetScopes(), err)
	}
	issuedTokens.Store(resp.GetAccessToken(), struct{}{})
	return resp
}

func forEachBackend(t *testing.T, fn func(t *testing.T, be backend)) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) { fn(t, be) })
	}
}

func TestGetTokenCachesUntilSkew(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		e := start(t, be)
		req := &tokenbrokerv1.GetTokenRequest{Connection: "cc", Scopes: []string{"read"}}
		first := e.getToken(t, req)
		if !e.emu.Valid(first.GetAccessToken()) {
			t.Fatalf("GetToken returned a token the emulator did not issue")
		}
		wantExpiry := e.clock.Now().Add(lifetime)
		if got := first.GetExpiresAt().AsTime(); !got.Equal(wantExpiry) {
			t.Errorf("ExpiresAt = %v; want %v", got, wantExpiry)
		}
		if e.redis != nil {
			ttl, err := e.redis.PTTL(context.Background(), prefix+"token:{cc}:read").Result()
			if err != nil {
				t.Fatal(err)
			}
			want := lifetime - skew // expires_at - skew - now
			if ttl < want-2*time.Second || ttl > want+2*time.Second {
				t.Errorf("Redis TTL = %v; want %v ± 2s", ttl, want)
			}
		}
		e.advance(lifetime - skew - time.Second)
		second := e.getToken(t, req)
		if second.GetAccessToken() != first.GetAccessToken() {
			t.Errorf("second GetToken within the lifetime returned a new token")
		}
		if got := e.emu.Requests(); got != 1 {
			t.Errorf("upstream requests = %d; want 1", got)
		}
		e.advance(2 * time.Second) // now past expires_at - skew
		third := e.getToken(t, req)
		if third.GetAccessToken() == first.GetAccessToken() {
			t.Errorf("GetToken after expires_at - skew returned the old token")
		}
		if got := e.emu.Requests(); got != 2 {
			t.Errorf("upstream requests = %d; want 2", got)
		}
	})
}

func TestMinTTLAndForceRefresh(t *testing.T) {
	e := start(t, backends[0])
	first := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc"})
	e.advance(30 * time.Minute)
	same := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc", MinTtl: durationpb.New(20 * time.Minute)})
	if same.GetAccessToken() != first.GetAccessToken() {
		t.Errorf("min_ttl 20m with 30m left fetched a new token")
	}
	longer := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc", MinTtl: durationpb.New(40 * time.Minute)})
	if longer.GetAccessToken() == first.GetAccessToken() {
		t.Errorf("min_ttl 40m with 30m left returned the old token")
	}
	for range 3 {
		_, err := e.client.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Connection: "cc", MinTtl: durationpb.New(2 * lifetime)})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("GetToken(min_ttl beyond the token lifetime) = %v; want InvalidArgument", err)
		}
	}
	forced := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc", ForceRefresh: true})
	if forced.GetAccessToken() == longer.GetAccessToken() {
		t.Errorf("force_refresh returned the cached token")
	}
	if got := e.emu.Requests(); got != 3 {
		t.Errorf("upstream requests = %d; want 3 (an impossible min_ttl never reaches the upstream)", got)
	}
}

func TestConcurrentColdMissesShareOneRequest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		e := start(t, be)
		e.emu.SetFailure(ccemu.Slow(200 * time.Millisecond)) // keep the flight open while callers pile up
		var wg sync.WaitGroup
		tokens := make([]string, 100)
		errs := make([]error, 100)
		for i := range tokens {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := e.client.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Connection: "cc", Scopes: []string{"write", "read"}})
				errs[i] = err
				tokens[i] = resp.GetAccessToken()
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			if tokens[i] != tokens[0] {
				t.Fatalf("call %d got a different token", i)
			}
		}
		issuedTokens.Store(tokens[0], struct{}{})
		if got := e.emu.Requests(); got != 1 {
			t.Errorf("upstream requests = %d; want exactly 1", got)
		}
	})
}

func TestScopeSets(t *testing.T) {
	e := start(t, backends[0])
	a := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc", Scopes: []string{"read", "write"}})
	b := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc", Scopes: []string{"write", "read", "read", "write"}})
	c := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc", Scopes: []string{"read"}})
	if a.GetAccessToken() != b.GetAccessToken() {
		t.Errorf("same scope set in another order or with duplicates got a different token")
	}
	if a.GetAccessToken() == c.GetAccessToken() {
		t.Errorf("different scope sets got the same token")
	}
	if got, want := strings.Join(a.GetScopes(), " "), "read write"; got != want {
		t.Errorf("Scopes = %q; want %q", got, want)
	}
	if got := e.emu.Requests(); got != 2 {
		t.Errorf("upstream requests = %d; want 2", got)
	}
}

func TestAuthStyles(t *testing.T) {
	e := start(t, backends[0], connSpec{name: "basic", authStyle: "basic"}, connSpec{name: "body", authStyle: "body"})
	for _, name := range []string{"basic", "body"} {
		t.Run(name, func(t *testing.T) {
			e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: name})
			id, sec := e.emu.LastCredentials()
			if id != clientID || sec != clientSecret {
				t.Errorf("upstream received client id %q and a secret of %d bytes; want %q and the %d-byte secret intact", id, len(sec), clientID, len(clientSecret))
			}
		})
	}
}

func TestErrors(t *testing.T) {
	e := start(t, backends[0], connSpec{name: "cc", authStyle: "basic"}, connSpec{name: "fast", authStyle: "basic", timeout: 100 * time.Millisecond})
	tooMany := make([]string, 200)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("s%d", i)
	}
	tests := []struct {
		name      string
		failure   ccemu.Failure
		req       *tokenbrokerv1.GetTokenRequest
		code      codes.Code
		oauthCode string
	}{
		{"invalid_client", ccemu.InvalidClient, &tokenbrokerv1.GetTokenRequest{Connection: "cc"}, codes.FailedPrecondition, "invalid_client"},
		{"invalid_scope", ccemu.InvalidScope, &tokenbrokerv1.GetTokenRequest{Connection: "cc"}, codes.FailedPrecondition, "invalid_scope"},
		{"upstream 500", ccemu.ServerError, &tokenbrokerv1.GetTokenRequest{Connection: "cc"}, codes.Unavailable, ""},
		{"upstream 502 html", ccemu.BadGateway502HTML, &tokenbrokerv1.GetTokenRequest{Connection: "cc"}, codes.Unavailable, ""},
		{"non-JSON 200", ccemu.NonJSON200, &tokenbrokerv1.GetTokenRequest{Connection: "cc"}, codes.Unavailable, ""},
		{"upstream timeout", ccemu.Slow(2 * time.Second), &tokenbrokerv1.GetTokenRequest{Connection: "fast"}, codes.Unavailable, ""},
		{"unknown connection", ccemu.None, &tokenbrokerv1.GetTokenRequest{Connection: "nope"}, codes.NotFound, ""},
		{"empty connection", ccemu.None, &tokenbrokerv1.GetTokenRequest{}, codes.InvalidArgument, ""},
		{"200 scopes", ccemu.None, &tokenbrokerv1.GetTokenRequest{Connection: "cc", Scopes: tooMany}, codes.InvalidArgument, ""},
		{"bad scope character", ccemu.None, &tokenbrokerv1.GetTokenRequest{Connection: "cc", Scopes: []string{"a b"}}, codes.InvalidArgument, ""},
		{"negative min_ttl", ccemu.None, &tokenbrokerv1.GetTokenRequest{Connection: "cc", MinTtl: durationpb.New(-time.Second)}, codes.InvalidArgument, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.emu.SetFailure(tt.failure)
			defer e.emu.SetFailure(ccemu.None)
			// A rejection is remembered for a while; InvalidateToken
			// without a token forgets it.
			defer e.client.InvalidateToken(context.Background(), &tokenbrokerv1.InvalidateTokenRequest{Connection: "cc"})
			tt.req.ForceRefresh = true
			_, err := e.client.GetToken(context.Background(), tt.req)
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Fatalf("GetToken() code = %v (%s); want %v", st.Code(), st.Message(), tt.code)
			}
			var info *errdetails.ErrorInfo
			for _, d := range st.Details() {
				if i, ok := d.(*errdetails.ErrorInfo); ok {
					info = i
				}
			}
			if info == nil {
				t.Fatalf("status has no ErrorInfo")
			}
			if got := info.GetMetadata()["oauth_error"]; got != tt.oauthCode {
				t.Errorf("ErrorInfo oauth_error = %q; want %q", got, tt.oauthCode)
			}
			if strings.Contains(st.Message(), clientSecret) {
				t.Errorf("status message contains the client secret")
			}
		})
	}
}

func TestInvalidateToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		e := start(t, be)
		ctx := context.Background()
		first := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc"})
		resp, err := e.client.InvalidateToken(ctx, &tokenbrokerv1.InvalidateTokenRequest{Connection: "cc", AccessToken: "not-the-cached-one"})
		if err != nil || resp.GetInvalidated() {
			t.Fatalf("InvalidateToken(other token) = %v, %v; want false, nil", resp.GetInvalidated(), err)
		}
		if again := e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc"}); again.GetAccessToken() != first.GetAccessToken() {
			t.Fatalf("a mismatching invalidation dropped the token")
		}
		// Many callers report the same dead token: one refresh.
		for range 5 {
			if _, err := e.client.InvalidateToken(ctx, &tokenbrokerv1.InvalidateTokenRequest{Connection: "cc", AccessToken: first.GetAccessToken()}); err != nil {
				t.Fatal(err)
			}
			e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc"})
		}
		if got := e.emu.Requests(); got != 2 {
			t.Errorf("upstream requests = %d; want 2 (one refresh for five reports of one token)", got)
		}
		resp, err = e.client.InvalidateToken(ctx, &tokenbrokerv1.InvalidateTokenRequest{Connection: "cc"})
		if err != nil || !resp.GetInvalidated() {
			t.Fatalf("InvalidateToken(unconditional) = %v, %v; want true, nil", resp.GetInvalidated(), err)
		}
	})
}

func TestListConnections(t *testing.T) {
	e := start(t, backends[0])
	e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc"})
	resp, err := e.client.ListConnections(context.Background(), &tokenbrokerv1.ListConnectionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetConnections()) != 1 {
		t.Fatalf("ListConnections returned %d connections; want 1", len(resp.GetConnections()))
	}
	c := resp.GetConnections()[0]
	if c.GetName() != "cc" || c.GetProvider() != "client_credentials" || c.GetState() != tokenbrokerv1.ConnectionState_CONNECTION_STATE_READY || c.GetTokenExpiresAt() == nil {
		t.Errorf("ListConnections()[0] = %v", c)
	}
}

// TestInvalidUpstreamResponse: a 200 whose access token would inject a
// header is refused as UNAVAILABLE UPSTREAM_INVALID_RESPONSE, is not
// cached, and its value is in neither the status nor the logs.
func TestInvalidUpstreamResponse(t *testing.T) {
	const injected = "X\nX-Injected: 1\r\n\u0001"
	forEachBackend(t, func(t *testing.T, be backend) {
		e := start(t, be)
		body, err := json.Marshal(map[string]any{"access_token": injected, "token_type": "Bearer", "expires_in": 3600})
		if err != nil {
			t.Fatal(err)
		}
		e.override.Store(&body)
		req := &tokenbrokerv1.GetTokenRequest{Connection: "cc"}
		resp, err := e.client.GetToken(context.Background(), req)
		st := status.Convert(err)
		if st.Code() != codes.Unavailable || errorInfo(err).GetReason() != server.ReasonUpstreamInvalid {
			t.Fatalf("GetToken() = %v %s; want UNAVAILABLE %s", st.Code(), errorInfo(err).GetReason(), server.ReasonUpstreamInvalid)
		}
		if resp.GetAccessToken() != "" {
			t.Errorf("GetToken() returned a token with its error")
		}
		for _, part := range []string{"X-Injected", injected} {
			if strings.Contains(st.Message(), part) {
				t.Errorf("status message quotes the upstream's access token")
			}
			if strings.Contains(e.logs.String(), part) {
				t.Errorf("logs quote the upstream's access token")
			}
		}
		const rule = "access_token is not an RFC 6750 b64token"
		if !strings.Contains(st.Message(), rule) {
			t.Errorf("status message %q does not name the field and the rule", st.Message())
		}
		if !strings.Contains(e.logs.String(), rule) {
			t.Errorf("no log line names the field and the rule %q", rule)
		}

		// Nothing was cached: with the upstream sane again, the next call
		// asks it.
		e.override.Store(nil)
		tok := e.getToken(t, req)
		if !e.emu.Valid(tok.GetAccessToken()) {
			t.Errorf("GetToken() after the upstream recovered returned a token the emulator did not issue")
		}
		if got := e.emu.Requests(); got != 1 {
			t.Errorf("emulator requests = %d; want 1 (the refused token must not have been cached)", got)
		}
	})
}
