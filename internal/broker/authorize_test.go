package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

const (
	waxClientID = "wax-app-1"
	// waxClientSecret has the characters a form-encoding would change.
	waxClientSecret = "cl!ent^secret+42/x="
)

// azHarness is a WAX emulator and what a broker in front of it needs. All
// clocks are one fake clock.
type azHarness struct {
	clk    *cachetest.Clock
	emu    *waxemu.Server
	emuURL string
	log    *slog.Logger
	logs   *logtest.Buffer
	device bool
	// idle is the WAX connections' grant_idle_lifetime.
	idle time.Duration
	// states and codes seen, for the log check.
	mu      sync.Mutex
	secrets logtest.Secrets
}

func newAZHarness(t *testing.T, device bool) *azHarness {
	t.Helper()
	clk := cachetest.NewClock(time.Unix(1_700_000_000, 0))
	opts := waxemu.Options{ClientID: waxClientID, Now: clk.Now, RedirectURL: "https://broker.example/oauth2/callback"}
	if !device {
		opts.ClientSecret = waxClientSecret
	}
	emu := waxemu.New(opts)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	log, logs := logtest.New()
	return &azHarness{clk: clk, emu: emu, emuURL: srv.URL, log: log, logs: logs, device: device,
		secrets: logtest.Secrets{"client secret": waxClientSecret}}
}

// open returns a broker over c with connections wax and wax-other (both WAX
// against the emulator) and plain (no authorization code grant).
func (h *azHarness) open(t *testing.T, c cache.Cache) *broker.Broker {
	t.Helper()
	var conns []broker.Connection
	for _, name := range []string{"wax", "wax-other"} {
		cfg := &authcode.WAXConfig{Config: authcode.Config{
			AuthorizeURL:  h.emuURL + waxemu.AuthorizePath,
			TokenURL:      h.emuURL + waxemu.TokenPath,
			RevocationURL: h.emuURL + waxemu.RevokePath,
			ClientID:      waxClientID,
		}}
		if h.device {
			cfg.DeviceSecret = true
		} else {
			cfg.ClientSecret = secret.Ref{Env: "WAX_SECRET"}
		}
		p, err := cfg.Open(providers.Env{Name: name, Now: h.clk.Now, Logger: h.log,
			Secrets: secret.Loader{LookupEnv: func(string) (string, bool) { return waxClientSecret, true }}})
		if err != nil {
			t.Fatalf("Open(%s) = %v", name, err)
		}
		conns = append(conns, broker.Connection{Name: name, Type: "wax", Provider: p, Skew: time.Minute, GrantIdleLifetime: h.idle})
	}
	conns = append(conns, broker.Connection{Name: "plain", Type: "fake", Provider: plainProvider{}})
	b, err := broker.New(broker.Options{Cache: c, Connections: conns, Now: h.clk.Now, Logger: h.log, KeepAliveEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("broker.New() = %v", err)
	}
	return b
}

func (h *azHarness) memCache(t *testing.T, stateFile string) cache.Cache {
	t.Helper()
	c, err := memory.New(memory.Options{Now: h.clk.Now, StateFile: stateFile})
	if err != nil {
		t.Fatalf("memory.New() = %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// start runs StartAuthorization and follows the URL to the emulator, which
// answers at once; it returns the state and the query of the redirect back.
func (h *azHarness) start(t *testing.T, b *broker.Broker, conn string) (state string, back url.Values) {
	t.Helper()
	authURL, state, exp, err := b.StartAuthorization(context.Background(), conn, "")
	if err != nil {
		t.Fatalf("StartAuthorization(%s) = %v", conn, err)
	}
	if want := h.clk.Now().Add(broker.AuthStateTTL); !exp.Equal(want) {
		t.Errorf("StartAuthorization() expires = %v; want %v", exp, want)
	}
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(authURL)
	if err != nil {
		t.Fatalf("GET authorization URL: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("GET authorization URL: status %d; want 302", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("bad Location: %v", err)
	}
	back = loc.Query()
	if back.Get("state") != state {
		t.Fatalf("the emulator returned another state")
	}
	h.mu.Lock()
	h.secrets["state "+state[:6]] = state
	h.mu.Unlock()
	return state, back
}

// authorize runs the whole authorization of conn.
func (h *azHarness) authorize(t *testing.T, b *broker.Broker, conn string) {
	t.Helper()
	state, back := h.start(t, b, conn)
	if err := b.CompleteAuthorization(context.Background(), conn, "", back.Get("code"), state); err != nil {
		t.Fatalf("CompleteAuthorization(%s) = %v", conn, err)
	}
}

// checkLogs fails t if any code, token, device secret, client secret or
// state appears in the logs.
func (h *azHarness) checkLogs(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, s := range h.emu.Secrets() {
		h.secrets["emulator secret #"+string(rune('a'+i%26))+strings.Repeat("'", i/26)] = s
	}
	logtest.AssertNoSecrets(t, h.logs.String(), h.secrets)
}

func connState(t *testing.T, b *broker.Broker, name string) broker.ConnectionInfo {
	t.Helper()
	for _, info := range b.Connections(context.Background()) {
		if info.Name == name {
			return info
		}
	}
	t.Fatalf("connection %s not listed", name)
	return broker.ConnectionInfo{}
}

type plainProvider struct{}

func (plainProvider) Token(context.Context, providers.Request) (*providers.Token, error) {
	return nil, errors.New("not used")
}

func TestAuthorizationFlow(t *testing.T) {
	tests := []struct {
		name           string
		device, rotate bool
	}{
		{"client secret", false, false},
		{"device secret with rotation", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newAZHarness(t, tt.device)
			h.emu.SetRotate(tt.rotate)
			b := h.open(t, h.memCache(t, ""))
			ctx := context.Background()

			if got := connState(t, b, "wax").State; got != broker.StateNeedsAuthorization {
				t.Errorf("before authorization: state = %v; want needs authorization", got)
			}
			if _, err := b.GetToken(ctx, broker.Request{Connection: "wax"}); !errors.Is(err, providers.ErrNeedsAuthorization) {
				t.Fatalf("GetToken() before authorization = %v; want ErrNeedsAuthorization", err)
			}
			h.authorize(t, b, "wax")

			info := connState(t, b, "wax")
			if info.State != broker.StateReady || info.LastError != "" {
				t.Errorf("after authorization: state = %v, last error %q; want ready", info.State, info.LastError)
			}
			if diff := cmp.Diff([]string{"identity_basic"}, info.GrantedScopes); diff != "" {
				t.Errorf("granted scopes mismatch (-want +got):\n%s", diff)
			}

			// The exchanged token is served from the cache.
			tok, err := b.GetToken(ctx, broker.Request{Connection: "wax"})
			if err != nil {
				t.Fatalf("GetToken() = %v", err)
			}
			if !h.emu.Valid(tok.AccessToken.Reveal()) {
				t.Errorf("GetToken() returned a token the emulator did not issue")
			}
			if c := h.emu.Counts(); c.TokenRequests != 1 {
				t.Errorf("token requests after the exchange = %d; want 1", c.TokenRequests)
			}
			if _, err := b.GetToken(ctx, broker.Request{Connection: "wax", Scopes: []string{"identity_basic"}}); err != nil {
				t.Fatalf("GetToken(granted scopes) = %v", err)
			}
			if c := h.emu.Counts(); c.TokenRequests != 1 {
				t.Errorf("GetToken(granted scopes) called the token endpoint: %d requests; want 1", c.TokenRequests)
			}

			// Each expiry brings one refresh, with the same device secret.
			for i := 1; i <= 3; i++ {
				h.clk.Advance(waxemu.TokenLifetime)
				next, err := b.GetToken(ctx, broker.Request{Connection: "wax"})
				if err != nil {
					t.Fatalf("GetToken() after expiry #%d = %v", i, err)
				}
				if next.AccessToken.Equal(tok.AccessToken) || !h.emu.Valid(next.AccessToken.Reveal()) {
					t.Errorf("GetToken() after expiry #%d: want a new token the emulator issued", i)
				}
				tok = next
				if c := h.emu.Counts(); c.Refreshes != i || c.CodeExchanges != 1 {
					t.Errorf("after expiry #%d: refreshes = %d, exchanges = %d; want %d, 1", i, c.Refreshes, c.CodeExchanges, i)
				}
			}
			if c := h.emu.Counts(); c.DeviceSecretMismatches != 0 || c.InvalidClient != 0 || c.InvalidGrant != 0 {
				t.Errorf("emulator saw client or grant failures: %+v", c)
			}

			// Scopes outside the grant are refused without an upstream call.
			before := h.emu.Counts().TokenRequests
			_, err = b.GetToken(ctx, broker.Request{Connection: "wax", Scopes: []string{"items"}})
			if !errors.Is(err, providers.ErrNeedsAuthorization) || !strings.Contains(err.Error(), "not granted") {
				t.Errorf("GetToken(ungranted scope) = %v; want ErrNeedsAuthorization saying it was not granted", err)
			}
			if got := h.emu.Counts().TokenRequests; got != before {
				t.Errorf("GetToken(ungranted scope) called the token endpoint")
			}
			h.checkLogs(t)
		})
	}
}

func TestStateRejected(t *testing.T) {
	tests := []struct {
		name string
		// run returns the error of a completion that must be refused.
		run func(t *testing.T, h *azHarness, b *broker.Broker) error
	}{
		{"unknown", func(t *testing.T, h *azHarness, b *broker.Broker) error {
			_, back := h.start(t, b, "wax")
			return b.CompleteAuthorization(context.Background(), "wax", "", back.Get("code"), "no-such-state")
		}},
		{"expired", func(t *testing.T, h *azHarness, b *broker.Broker) error {
			state, back := h.start(t, b, "wax")
			h.clk.Advance(broker.AuthStateTTL)
			return b.CompleteAuthorization(context.Background(), "wax", "", back.Get("code"), state)
		}},
		{"reused", func(t *testing.T, h *azHarness, b *broker.Broker) error {
			state, back := h.start(t, b, "wax")
			if err := b.CompleteAuthorization(context.Background(), "wax", "", back.Get("code"), state); err != nil {
				t.Fatalf("first CompleteAuthorization() = %v", err)
			}
			_, other := h.start(t, b, "wax") // a valid, unspent code
			before := h.emu.Counts()
			err := b.CompleteAuthorization(context.Background(), "wax", "", other.Get("code"), state)
			if after := h.emu.Counts(); after.TokenRequests != before.TokenRequests {
				t.Errorf("reused state: token endpoint called")
			}
			return err
		}},
		{"other connection", func(t *testing.T, h *azHarness, b *broker.Broker) error {
			state, back := h.start(t, b, "wax")
			err := b.CompleteAuthorization(context.Background(), "wax-other", "", back.Get("code"), state)
			// The state is left for its own connection.
			if err2 := b.CompleteAuthorization(context.Background(), "wax", "", back.Get("code"), state); err2 != nil {
				t.Errorf("completing for the right connection afterwards = %v", err2)
			}
			return err
		}},
		{"too long", func(t *testing.T, h *azHarness, b *broker.Broker) error {
			_, back := h.start(t, b, "wax")
			return b.CompleteAuthorization(context.Background(), "wax", "", back.Get("code"), strings.Repeat("s", broker.MaxStateLength+1))
		}},
		{"callback with unknown state", func(t *testing.T, h *azHarness, b *broker.Broker) error {
			_, back := h.start(t, b, "wax")
			_, err := b.HandleAuthorizationResponse(context.Background(), broker.AuthorizationResponse{State: "forged", Code: back.Get("code")})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newAZHarness(t, false)
			b := h.open(t, h.memCache(t, ""))
			before := h.emu.Counts()
			err := tt.run(t, h, b)
			if !errors.Is(err, broker.ErrInvalidState) {
				t.Fatalf("completion = %v; want ErrInvalidState", err)
			}
			after := h.emu.Counts()
			// Only the completions the case itself expects may have
			// reached the token endpoint; the refused one never does.
			if got := after.CodeExchanges - before.CodeExchanges; got > 1 || (got == 1 && tt.name != "reused" && tt.name != "other connection") {
				t.Errorf("token endpoint code exchanges = %d", got)
			}
			if after.ReusedCodes != 0 {
				t.Errorf("a code was redeemed twice")
			}
			h.checkLogs(t)
		})
	}
}

func TestDuplicateCompletion(t *testing.T) {
	t.Run("sequential", func(t *testing.T) {
		h := newAZHarness(t, false)
		b := h.open(t, h.memCache(t, ""))
		state, back := h.start(t, b, "wax")
		for i := range 3 {
			conn, err := b.HandleAuthorizationResponse(context.Background(), broker.AuthorizationResponse{State: state, Code: back.Get("code")})
			if err != nil || conn != "wax" {
				t.Fatalf("completion #%d = %q, %v; want wax, nil", i+1, conn, err)
			}
		}
		if err := b.CompleteAuthorization(context.Background(), "wax", "", back.Get("code"), state); err != nil {
			t.Fatalf("CompleteAuthorization() after callbacks = %v; want the first outcome (nil)", err)
		}
		if err := b.CompleteAuthorization(context.Background(), "wax-other", "", back.Get("code"), state); !errors.Is(err, broker.ErrInvalidState) {
			t.Fatalf("CompleteAuthorization(other connection) of a finished state = %v; want ErrInvalidState", err)
		}
		if c := h.emu.Counts(); c.CodeExchanges != 1 || c.ReusedCodes != 0 {
			t.Errorf("code exchanges = %d, reused = %d; want 1, 0", c.CodeExchanges, c.ReusedCodes)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		h := newAZHarness(t, true)
		b := h.open(t, h.memCache(t, ""))
		state, back := h.start(t, b, "wax")
		const n = 16
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, errs[i] = b.HandleAuthorizationResponse(context.Background(), broker.AuthorizationResponse{State: state, Code: back.Get("code")})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("completion #%d = %v; want nil", i+1, err)
			}
		}
		if c := h.emu.Counts(); c.CodeExchanges != 1 || c.ReusedCodes != 0 {
			t.Errorf("code exchanges = %d, reused = %d; want 1, 0", c.CodeExchanges, c.ReusedCodes)
		}
	})
	t.Run("failure is repeated", func(t *testing.T) {
		h := newAZHarness(t, false)
		b := h.open(t, h.memCache(t, ""))
		state, back := h.start(t, b, "wax")
		// Spend the code behind the broker's back: its exchange fails.
		hc := &http.Client{}
		form := url.Values{"grant_type": {"authorization_code"}, "code": {back.Get("code")}}
		req, _ := http.NewRequest(http.MethodPost, h.emuURL+waxemu.TokenPath, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(waxClientID, waxClientSecret)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for i := range 2 {
			err := b.CompleteAuthorization(context.Background(), "wax", "", back.Get("code"), state)
			if providers.OAuthCode(err) != providers.CodeInvalidGrant {
				t.Fatalf("completion #%d = %v; want the upstream's invalid_grant", i+1, err)
			}
		}
		if c := h.emu.Counts(); c.ReusedCodes != 1 {
			t.Errorf("reused codes = %d; want 1 (the broker tried once)", c.ReusedCodes)
		}
	})
}

func TestAccessDenied(t *testing.T) {
	h := newAZHarness(t, false)
	b := h.open(t, h.memCache(t, ""))
	h.emu.SetApprove(false)
	state, back := h.start(t, b, "wax")
	if back.Get("error") != "access_denied" || back.Has("code") {
		t.Fatalf("emulator did not deny")
	}
	for i := range 2 {
		conn, err := b.HandleAuthorizationResponse(context.Background(),
			broker.AuthorizationResponse{State: state, Error: back.Get("error"), ErrorDescription: "The user\ndenied"})
		if !errors.Is(err, providers.ErrRejected) || providers.OAuthCode(err) != providers.CodeAccessDenied || conn != "wax" {
			t.Fatalf("denied completion #%d = %q, %v; want wax and access_denied under ErrRejected", i+1, conn, err)
		}
	}
	// The state is spent.
	_, other := func() (string, url.Values) { h.emu.SetApprove(true); return h.start(t, b, "wax") }()
	if err := b.CompleteAuthorization(context.Background(), "wax", "", other.Get("code"), state); !errors.Is(err, broker.ErrInvalidState) {
		t.Errorf("completing a denied state with a code = %v; want ErrInvalidState", err)
	}
	if c := h.emu.Counts(); c.TokenRequests != 0 {
		t.Errorf("token requests = %d; want 0", c.TokenRequests)
	}
	if got := connState(t, b, "wax").State; got != broker.StateNeedsAuthorization {
		t.Errorf("state after denial = %v; want needs authorization", got)
	}
}

func TestInvalidGrantRevokes(t *testing.T) {
	h := newAZHarness(t, true)
	b := h.open(t, h.memCache(t, ""))
	ctx := context.Background()
	h.authorize(t, b, "wax")
	h.emu.RevokeAll()
	h.clk.Advance(waxemu.TokenLifetime)

	_, err := b.GetToken(ctx, broker.Request{Connection: "wax"})
	if !errors.Is(err, providers.ErrRevoked) || providers.OAuthCode(err) != providers.CodeInvalidGrant || !strings.Contains(err.Error(), "re-authorize") {
		t.Fatalf("GetToken() after revocation = %v; want ErrRevoked with invalid_grant saying re-authorize", err)
	}
	if got := connState(t, b, "wax").State; got != broker.StateRevoked {
		t.Errorf("state after invalid_grant = %v; want revoked", got)
	}
	before := h.emu.Counts().TokenRequests
	if _, err := b.GetToken(ctx, broker.Request{Connection: "wax"}); !errors.Is(err, providers.ErrRevoked) {
		t.Errorf("GetToken() again = %v; want ErrRevoked", err)
	}
	if h.emu.Counts().TokenRequests != before {
		t.Errorf("GetToken() on a revoked grant called the token endpoint")
	}

	// Authorizing again makes it ready.
	h.authorize(t, b, "wax")
	if got := connState(t, b, "wax").State; got != broker.StateReady {
		t.Errorf("state after re-authorization = %v; want ready", got)
	}
	if _, err := b.GetToken(ctx, broker.Request{Connection: "wax"}); err != nil {
		t.Errorf("GetToken() after re-authorization = %v", err)
	}
	h.checkLogs(t)
}

func TestTemporaryGrant(t *testing.T) {
	h := newAZHarness(t, false)
	cfg := &authcode.WAXConfig{Duration: authcode.WAXTemporary, Config: authcode.Config{
		AuthorizeURL: h.emuURL + waxemu.AuthorizePath, TokenURL: h.emuURL + waxemu.TokenPath,
		ClientID: waxClientID, ClientSecret: secret.Ref{Env: "X"}}}
	p, err := cfg.Open(providers.Env{Now: h.clk.Now, Secrets: secret.Loader{LookupEnv: func(string) (string, bool) { return waxClientSecret, true }}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Cache: h.memCache(t, ""), Now: h.clk.Now,
		Connections: []broker.Connection{{Name: "wax", Type: "wax", Provider: p, Skew: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	h.authorize(t, b, "wax")
	ctx := context.Background()
	if _, err := b.GetToken(ctx, broker.Request{Connection: "wax"}); err != nil {
		t.Fatalf("GetToken() before expiry = %v", err)
	}
	h.clk.Advance(waxemu.TokenLifetime)
	if _, err := b.GetToken(ctx, broker.Request{Connection: "wax"}); !errors.Is(err, providers.ErrNeedsAuthorization) {
		t.Errorf("GetToken() after a temporary grant expired = %v; want ErrNeedsAuthorization", err)
	}
	if c := h.emu.Counts(); c.TokenRequests != 1 {
		t.Errorf("token requests = %d; want 1", c.TokenRequests)
	}
}

func TestStartAuthorizationErrors(t *testing.T) {
	h := newAZHarness(t, false)
	b := h.open(t, h.memCache(t, ""))
	tests := []struct {
		conn string
		want error
	}{
		{"plain", providers.ErrNotSupported},
		{"nope", broker.ErrUnknownConnection},
		{"", broker.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run("conn="+tt.conn, func(t *testing.T) {
			if _, _, _, err := b.StartAuthorization(context.Background(), tt.conn, ""); !errors.Is(err, tt.want) {
				t.Errorf("StartAuthorization(%q) = %v; want %v", tt.conn, err, tt.want)
			}
		})
	}
}

func TestCompletionArguments(t *testing.T) {
	h := newAZHarness(t, false)
	b := h.open(t, h.memCache(t, ""))
	tests := []struct {
		name string
		r    broker.AuthorizationResponse
		want error
	}{
		{"no state", broker.AuthorizationResponse{Code: "c"}, broker.ErrInvalidArgument},
		{"no code", broker.AuthorizationResponse{State: "s"}, broker.ErrInvalidArgument},
		{"code and error", broker.AuthorizationResponse{State: "s", Code: "c", Error: "access_denied"}, broker.ErrInvalidArgument},
		{"long code", broker.AuthorizationResponse{State: "s", Code: strings.Repeat("c", broker.MaxCodeLength+1)}, broker.ErrInvalidArgument},
		{"bad error code", broker.AuthorizationResponse{State: "s", Error: "access\"denied"}, broker.ErrInvalidArgument},
		{"plain connection", broker.AuthorizationResponse{Connection: "plain", State: "s", Code: "c"}, providers.ErrNotSupported},
		{"unknown connection", broker.AuthorizationResponse{Connection: "nope", State: "s", Code: "c"}, broker.ErrUnknownConnection},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := b.HandleAuthorizationResponse(context.Background(), tt.r); !errors.Is(err, tt.want) {
				t.Errorf("HandleAuthorizationResponse() = %v; want %v", err, tt.want)
			}
		})
	}
	if c := h.emu.Counts(); c.TokenRequests != 0 {
		t.Errorf("token requests = %d; want 0", c.TokenRequests)
	}
}

// TestRestartKeepsGrant authorizes once, then replaces the broker (and its
// cache client) and checks that the new one refreshes with the stored grant,
// the same device secret and no new authorization.
func TestRestartKeepsGrant(t *testing.T) {
	tests := []struct {
		name string
		// caches returns a cache for the first broker, and a function that
		// "restarts" and returns the cache for the second.
		caches func(t *testing.T, h *azHarness) (cache.Cache, func() cache.Cache)
	}{
		{"embedded state file", func(t *testing.T, h *azHarness) (cache.Cache, func() cache.Cache) {
			file := filepath.Join(t.TempDir(), "state.json")
			first := h.memCache(t, file)
			return first, func() cache.Cache {
				_ = first.Close()
				st, err := os.Stat(file)
				if err != nil {
					t.Fatalf("state file: %v", err)
				}
				if mode := st.Mode().Perm(); mode != 0o600 {
					t.Errorf("state file mode = %v; want 0600", mode)
				}
				return h.memCache(t, file)
			}
		}},
		{"redis", func(t *testing.T, h *azHarness) (cache.Cache, func() cache.Cache) {
			srv := redistest.Start(t, redistest.WithPersistence())
			open := func() cache.Cache {
				c, err := rediscache.New(rediscache.Options{Client: srv.Client(t), Prefix: "tokenbroker:v1:"})
				if err != nil {
					t.Fatalf("redis.New() = %v", err)
				}
				return c
			}
			first := open()
			return first, func() cache.Cache {
				_ = first.Close()
				srv.Restart(t) // Redis itself restarts too, from its append-only file
				return open()
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newAZHarness(t, true)
			first, restart := tt.caches(t, h)
			b := h.open(t, first)
			h.authorize(t, b, "wax")
			tok, err := b.GetToken(context.Background(), broker.Request{Connection: "wax"})
			if err != nil {
				t.Fatalf("GetToken() = %v", err)
			}

			b2 := h.open(t, restart())
			info := connState(t, b2, "wax")
			if info.State != broker.StateReady || len(info.GrantedScopes) == 0 {
				t.Errorf("after restart: state = %v, scopes %q; want ready with the granted scopes", info.State, info.GrantedScopes)
			}
			h.clk.Advance(waxemu.TokenLifetime)
			next, err := b2.GetToken(context.Background(), broker.Request{Connection: "wax"})
			if err != nil {
				t.Fatalf("GetToken() after restart and expiry = %v", err)
			}
			if next.AccessToken.Equal(tok.AccessToken) {
				t.Errorf("GetToken() after expiry returned the expired token")
			}
			c := h.emu.Counts()
			if c.CodeExchanges != 1 || c.Refreshes != 1 || c.DeviceSecretMismatches != 0 || c.Authorize != 1 {
				t.Errorf("emulator counts = %+v; want 1 authorization, 1 exchange, 1 refresh with the same device secret", c)
			}
			h.checkLogs(t)
		})
	}
}

// TestAuthorizationPKCE: for a generic authorization_code connection with
// pkce on, the broker makes a verifier per authorization, keeps it with the
// state (shared cache, so any replica can complete), and the exchange passes
// the emulator's RFC 7636 check; the verifier never reaches a log.
func TestAuthorizationPKCE(t *testing.T) {
	clk := cachetest.NewClock(time.Unix(1_700_000_000, 0))
	emu := waxemu.New(waxemu.Options{ClientID: waxClientID, ClientSecret: waxClientSecret, Now: clk.Now,
		RedirectURL: "https://broker.example/oauth2/callback", PKCE: true})
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	log, logs := logtest.New()
	cfg := &authcode.Config{AuthorizeURL: srv.URL + waxemu.AuthorizePath, TokenURL: srv.URL + waxemu.TokenPath,
		ClientID: waxClientID, ClientSecret: secret.Ref{Env: "S"}, BasicEncoding: authcode.BasicRaw, PKCE: true}
	p, err := cfg.Open(providers.Env{Name: "app", Now: clk.Now, Logger: log,
		Secrets: secret.Loader{LookupEnv: func(string) (string, bool) { return waxClientSecret, true }}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := memory.New(memory.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	conns := []broker.Connection{{Name: "app", Type: "authorization_code", Provider: p, Skew: time.Minute}}
	starter, err := broker.New(broker.Options{Cache: c, Connections: conns, Now: clk.Now, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer starter.Close()
	h := &azHarness{clk: clk, emu: emu, emuURL: srv.URL, log: log, logs: logs, secrets: logtest.Secrets{"client secret": waxClientSecret}}
	state, back := h.start(t, starter, "app")

	// Another replica (same shared cache) completes it.
	completer, err := broker.New(broker.Options{Cache: c, Connections: conns, Now: clk.Now, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer completer.Close()
	if err := completer.CompleteAuthorization(context.Background(), "app", "", back.Get("code"), state); err != nil {
		t.Fatalf("CompleteAuthorization() = %v", err)
	}
	if _, err := completer.GetToken(context.Background(), broker.Request{Connection: "app"}); err != nil {
		t.Fatalf("GetToken() after authorization = %v", err)
	}
	if got := emu.Counts(); got.CodeExchanges != 1 || got.PKCEFailures != 0 || got.Issued != 1 {
		t.Errorf("emulator counts = %+v; want one exchange, no PKCE failure, one token", got)
	}
	h.checkLogs(t)
}
