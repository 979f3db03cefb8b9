package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
)

const (
	waxClientID = "wax-app-1"
	// waxSecret has the characters a form-encoding of Basic would change.
	waxSecret = "wax!secret^with+plus"
)

// waxEnv is a broker serving gRPC and its OAuth callback on loopback, in
// front of a WAX emulator that redirects browsers to that callback.
type waxEnv struct {
	client  tokenbrokerv1.TokenBrokerServiceClient
	emu     *waxemu.Server
	advance func(time.Duration)
	// callback is the broker's redirect URI.
	callback string
	logs     *logtest.Buffer
	secrets  logtest.Secrets
}

func startWAX(t *testing.T, be backend) *waxEnv {
	t.Helper()
	clock := cachetest.NewClock(time.Unix(1_700_000_000, 0))
	emu := waxemu.New(waxemu.Options{ClientID: waxClientID, ClientSecret: waxSecret, Now: clock.Now})
	up := httptest.NewServer(emu)
	t.Cleanup(up.Close)
	log, logs := logtest.New()
	e := &waxEnv{emu: emu, logs: logs, secrets: logtest.Secrets{"client secret": waxSecret}}
	t.Cleanup(func() {
		for i, s := range emu.Secrets() {
			e.secrets["emulator secret "+strings.Repeat("#", i+1)] = s
		}
		logtest.AssertNoSecrets(t, logs.String(), e.secrets)
	})

	c, _, adv := be.open(t, clock)
	t.Cleanup(func() { c.Close() })
	e.advance = func(d time.Duration) { clock.Advance(d); adv(d) }
	cfg := &authcode.WAXConfig{Config: authcode.Config{
		AuthorizeURL: up.URL + waxemu.AuthorizePath, TokenURL: up.URL + waxemu.TokenPath,
		ClientID: waxClientID, ClientSecret: secret.Ref{Env: "WAX_SECRET"},
	}}
	p, err := cfg.Open(providers.Env{Name: "wax", Now: clock.Now, HTTPClient: up.Client(), Logger: log,
		Secrets: secret.Loader{LookupEnv: func(k string) (string, bool) { return waxSecret, k == "WAX_SECRET" }}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Cache: c, Now: clock.Now, Logger: log,
		Connections: []broker.Connection{{Name: "wax", Type: "wax", Provider: p, Skew: skew}}})
	if err != nil {
		t.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.Handle("GET "+server.CallbackPath, server.NewCallbackHandler(b, log))
	admin := httptest.NewServer(mux)
	t.Cleanup(admin.Close)
	e.callback = admin.URL + server.CallbackPath
	emu.SetRedirectURL(e.callback)

	e.client = serve(t, server.New(server.Config{Broker: b, Logger: log}), grpc.ForceServerCodecV2(server.Codec()))
	return e
}

// startAuthorization calls the RPC and notes the state for the log check.
func (e *waxEnv) startAuthorization(t *testing.T) *tokenbrokerv1.StartAuthorizationResponse {
	t.Helper()
	resp, err := e.client.StartAuthorization(context.Background(), &tokenbrokerv1.StartAuthorizationRequest{Connection: "wax"})
	if err != nil {
		t.Fatalf("StartAuthorization() = %v", err)
	}
	e.secrets["state "+strings.Repeat("#", len(e.secrets))] = resp.GetState()
	return resp
}

// approve opens the authorization URL without following the redirect back
// and returns the callback URL the browser would go to.
func (e *waxEnv) approve(t *testing.T, authURL string) string {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, e.callback+"?") {
		t.Fatalf("authorization URL answered %d to %q; want 302 to the broker's callback", resp.StatusCode, loc)
	}
	return loc
}

type page struct {
	status int
	body   string
	header http.Header
}

func get(t *testing.T, u string) page {
	t.Helper()
	resp, err := http.Get(u) // follows redirects, as a browser or curl -L
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return page{status: resp.StatusCode, body: string(body), header: resp.Header}
}

func reason(err error) (codes.Code, string) {
	return status.Code(err), errorInfo(err).GetReason()
}

// errorInfo is the status's ErrorInfo, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			return i
		}
	}
	return nil
}

func (e *waxEnv) connection(t *testing.T) *tokenbrokerv1.Connection {
	t.Helper()
	resp, err := e.client.ListConnections(context.Background(), &tokenbrokerv1.ListConnectionsRequest{})
	if err != nil || len(resp.GetConnections()) != 1 {
		t.Fatalf("ListConnections() = %v, %v; want one connection", resp, err)
	}
	return resp.GetConnections()[0]
}

// TestWAXFlowThroughCallback is the whole flow a person runs: the
// authorization URL from StartAuthorization, the emulator's redirect to the
// broker's callback, then GetToken, then a refresh once the token expires.
func TestWAXFlowThroughCallback(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		e := startWAX(t, be)
		ctx := context.Background()
		if got := e.connection(t).GetState(); got != tokenbrokerv1.ConnectionState_CONNECTION_STATE_NEEDS_AUTHORIZATION {
			t.Errorf("before authorization: state = %v; want NEEDS_AUTHORIZATION", got)
		}
		_, err := e.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "wax"})
		if c, r := reason(err); c != codes.FailedPrecondition || r != server.ReasonNeedsAuthorization {
			t.Errorf("GetToken() before authorization = %v, %s; want FAILED_PRECONDITION %s", c, r, server.ReasonNeedsAuthorization)
		}

		start := e.startAuthorization(t)
		p := get(t, start.GetAuthorizationUrl())
		if p.status != http.StatusOK || !strings.Contains(p.body, "Authorization complete") || !strings.Contains(p.body, "<code>wax</code>") {
			t.Fatalf("callback page: status %d, body %q; want 200 with success", p.status, p.body)
		}
		if got := p.header.Get("Referrer-Policy"); got != "no-referrer" {
			t.Errorf("callback Referrer-Policy = %q; want no-referrer", got)
		}
		if strings.Contains(p.body, start.GetState()) {
			t.Errorf("callback page shows the state")
		}

		c := e.connection(t)
		if c.GetState() != tokenbrokerv1.ConnectionState_CONNECTION_STATE_READY || strings.Join(c.GetGrantedScopes(), " ") != "identity_basic" {
			t.Errorf("after authorization: state = %v, scopes %q; want READY with identity_basic", c.GetState(), c.GetGrantedScopes())
		}

		first, err := e.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "wax"})
		if err != nil {
			t.Fatalf("GetToken() = %v", err)
		}
		if !e.emu.Valid(first.GetAccessToken()) || first.GetTokenType() != "bearer" {
			t.Errorf("GetToken() returned a token the emulator did not issue, or type %q", first.GetTokenType())
		}
		if n := e.emu.Counts().TokenRequests; n != 1 {
			t.Errorf("token requests = %d; want 1 (the exchanged token is cached)", n)
		}

		e.advance(waxemu.TokenLifetime)
		next, err := e.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "wax"})
		if err != nil {
			t.Fatalf("GetToken() after expiry = %v", err)
		}
		if next.GetAccessToken() == first.GetAccessToken() || !e.emu.Valid(next.GetAccessToken()) {
			t.Errorf("GetToken() after expiry: want a fresh token from a refresh")
		}
		if cnt := e.emu.Counts(); cnt.CodeExchanges != 1 || cnt.Refreshes != 1 || cnt.InvalidClient != 0 {
			t.Errorf("emulator counts = %+v; want 1 exchange and 1 refresh, no client failures", cnt)
		}

		_, err = e.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "wax", Scopes: []string{"items"}})
		if c, r := reason(err); c != codes.FailedPrecondition || r != server.ReasonNeedsAuthorization || !strings.Contains(err.Error(), "not granted") {
			t.Errorf("GetToken(ungranted scope) = %v; want FAILED_PRECONDITION saying it was not granted", err)
		}
	})
}

func TestCallbackRepeatAndRPC(t *testing.T) {
	e := startWAX(t, backends[0])
	ctx := context.Background()
	cb := e.approve(t, e.startAuthorization(t).GetAuthorizationUrl())
	for i := range 3 {
		if p := get(t, cb); p.status != http.StatusOK {
			t.Fatalf("callback #%d: status %d; want 200 (the first outcome)", i+1, p.status)
		}
	}
	if n := e.emu.Counts(); n.CodeExchanges != 1 || n.ReusedCodes != 0 {
		t.Errorf("code exchanges = %d, reused = %d; want 1, 0", n.CodeExchanges, n.ReusedCodes)
	}

	// An operator pastes code and state instead.
	back, _ := url.Parse(e.approve(t, e.startAuthorization(t).GetAuthorizationUrl()))
	req := &tokenbrokerv1.CompleteAuthorizationRequest{Connection: "wax", Code: back.Query().Get("code"), State: back.Query().Get("state")}
	resp, err := e.client.CompleteAuthorization(ctx, req)
	if err != nil {
		t.Fatalf("CompleteAuthorization() = %v", err)
	}
	if c := resp.GetConnection(); c.GetName() != "wax" || c.GetState() != tokenbrokerv1.ConnectionState_CONNECTION_STATE_READY || c.GetTokenExpiresAt() == nil {
		t.Errorf("CompleteAuthorization().Connection = %v; want wax, READY, with a token expiry", c)
	}
	if _, err := e.client.CompleteAuthorization(ctx, req); err != nil {
		t.Errorf("CompleteAuthorization() repeated = %v; want the first outcome", err)
	}

	tests := []struct {
		name       string
		req        *tokenbrokerv1.CompleteAuthorizationRequest
		code       codes.Code
		wantReason string
	}{
		{"unknown state", &tokenbrokerv1.CompleteAuthorizationRequest{Connection: "wax", Code: "c", State: "forged"}, codes.InvalidArgument, server.ReasonInvalidState},
		{"no code", &tokenbrokerv1.CompleteAuthorizationRequest{Connection: "wax", State: "s"}, codes.InvalidArgument, server.ReasonInvalidArgument},
		{"no state", &tokenbrokerv1.CompleteAuthorizationRequest{Connection: "wax", Code: "c"}, codes.InvalidArgument, server.ReasonInvalidArgument},
		{"unknown connection", &tokenbrokerv1.CompleteAuthorizationRequest{Connection: "nope", Code: "c", State: "s"}, codes.NotFound, server.ReasonUnknownConnection},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.client.CompleteAuthorization(ctx, tt.req)
			if c, r := reason(err); c != tt.code || r != tt.wantReason {
				t.Errorf("CompleteAuthorization() = %v, %s (%v); want %v, %s", c, r, err, tt.code, tt.wantReason)
			}
		})
	}
	if n := e.emu.Counts().CodeExchanges; n != 2 {
		t.Errorf("code exchanges = %d; want 2", n)
	}
}

func TestCallbackRefusals(t *testing.T) {
	tests := []struct {
		name string
		// url returns the request's URL; method is GET unless set.
		url    func(t *testing.T, e *waxEnv) string
		method string
		status int
		want   string // in the page
	}{
		{"no parameters", func(_ *testing.T, e *waxEnv) string { return e.callback }, "", http.StatusBadRequest, "not accepted"},
		{"unknown state", func(_ *testing.T, e *waxEnv) string { return e.callback + "?state=forged&code=c" }, "", http.StatusBadRequest, "not accepted"},
		{"no code", func(t *testing.T, e *waxEnv) string {
			return e.callback + "?state=" + url.QueryEscape(e.startAuthorization(t).GetState())
		}, "", http.StatusBadRequest, "not accepted"},
		{"repeated parameter", func(t *testing.T, e *waxEnv) string {
			return e.approve(t, e.startAuthorization(t).GetAuthorizationUrl()) + "&code=again"
		}, "", http.StatusBadRequest, "Malformed"},
		{"too long", func(_ *testing.T, e *waxEnv) string {
			return e.callback + "?state=s&code=" + strings.Repeat("c", server.MaxCallbackQuery)
		}, "", http.StatusRequestURITooLong, "too large"},
		{"POST", func(t *testing.T, e *waxEnv) string {
			return e.approve(t, e.startAuthorization(t).GetAuthorizationUrl())
		}, http.MethodPost, http.StatusMethodNotAllowed, ""},
		{"HEAD", func(t *testing.T, e *waxEnv) string {
			return e.approve(t, e.startAuthorization(t).GetAuthorizationUrl())
		}, http.MethodHead, http.StatusMethodNotAllowed, ""},
		{"denied", func(t *testing.T, e *waxEnv) string {
			e.emu.SetApprove(false)
			return e.approve(t, e.startAuthorization(t).GetAuthorizationUrl())
		}, "", http.StatusForbidden, "Access denied"},
		{"upstream error with markup", func(t *testing.T, e *waxEnv) string {
			st := e.startAuthorization(t).GetState()
			return e.callback + "?" + url.Values{"state": {st}, "error": {"invalid_scope<b>"},
				"error_description": {"<script>alert(1)</script>"}}.Encode()
		}, "", http.StatusBadGateway, "invalid_scope&lt;b&gt;"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startWAX(t, backends[0])
			u := tt.url(t, e)
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, u, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.want) {
				t.Errorf("%s callback: status %d, body %q; want %d containing %q", method, resp.StatusCode, body, tt.status, tt.want)
			}
			if strings.Contains(string(body), "<script>") {
				t.Errorf("callback page contains unescaped markup")
			}
			if n := e.emu.Counts().TokenRequests; n != 0 {
				t.Errorf("token requests = %d; want 0", n)
			}
			if got := e.connection(t).GetState(); got != tokenbrokerv1.ConnectionState_CONNECTION_STATE_NEEDS_AUTHORIZATION {
				t.Errorf("state = %v; want NEEDS_AUTHORIZATION", got)
			}
		})
	}
}

func TestWAXRevokedThroughGRPC(t *testing.T) {
	e := startWAX(t, backends[0])
	if p := get(t, e.startAuthorization(t).GetAuthorizationUrl()); p.status != http.StatusOK {
		t.Fatalf("authorization: callback status %d", p.status)
	}
	e.emu.RevokeAll()
	e.advance(waxemu.TokenLifetime)
	_, err := e.client.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Connection: "wax"})
	if c, r := reason(err); c != codes.FailedPrecondition || r != server.ReasonRevoked || !strings.Contains(err.Error(), "re-authorize") {
		t.Errorf("GetToken() after revocation = %v; want FAILED_PRECONDITION %s saying re-authorize", err, server.ReasonRevoked)
	}
	if got := errorInfo(err).GetMetadata()["oauth_error"]; got != providers.CodeInvalidGrant {
		t.Errorf("GetToken() after revocation: ErrorInfo oauth_error = %q; want %q", got, providers.CodeInvalidGrant)
	}
	if got := e.connection(t).GetState(); got != tokenbrokerv1.ConnectionState_CONNECTION_STATE_REVOKED {
		t.Errorf("state after invalid_grant = %v; want REVOKED", got)
	}
}
