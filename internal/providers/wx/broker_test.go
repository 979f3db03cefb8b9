package wx_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

const connName = "wx-main"

// brokered is a broker serving one wx connection against the fixture's
// emulator, all on the fixture's clock.
type brokered struct {
	*fixture
	b      *broker.Broker
	cache  cache.Cache
	timers *timers
}

// timers stands in for time.AfterFunc in the broker's refresh-ahead: nothing
// fires until the test says so.
type timers struct {
	mu      sync.Mutex
	pending []*timer
}

type timer struct {
	f       func()
	stopped bool
}

func (ts *timers) AfterFunc(_ time.Duration, f func()) func() bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	tm := &timer{f: f}
	ts.pending = append(ts.pending, tm)
	return func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		was := !tm.stopped
		tm.stopped = true
		return was
	}
}

// fire runs every timer scheduled and not stopped, once, and returns how many.
func (ts *timers) fire() int {
	ts.mu.Lock()
	var run []func()
	for _, tm := range ts.pending {
		if !tm.stopped {
			tm.stopped = true
			run = append(run, tm.f)
		}
	}
	ts.pending = nil
	ts.mu.Unlock()
	for _, f := range run {
		f()
	}
	return len(run)
}

func newBrokered(t *testing.T, opts wxemu.Options, log *slog.Logger) *brokered {
	t.Helper()
	f := newFixture(t, opts)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f.env.Logger = log
	p, err := f.cfg.Open(f.env)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	c, err := memory.New(memory.Options{Now: f.clk.Now})
	if err != nil {
		t.Fatalf("memory.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	tm := &timers{}
	b, err := broker.New(broker.Options{
		Cache:       c,
		Connections: []broker.Connection{{Name: connName, Type: "wx", Provider: p, Skew: time.Minute}},
		Now:         f.clk.Now,
		Logger:      log,
		AfterFunc:   tm.AfterFunc,
		// Retries are the upstream package's business; here one call is one request.
		Upstream: &upstream.Policy{MaxAttempts: 1},
	})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	t.Cleanup(b.Close)
	return &brokered{fixture: f, b: b, cache: c, timers: tm}
}

func (bf *brokered) get(t *testing.T) *broker.Token {
	t.Helper()
	tok, err := bf.b.GetToken(context.Background(), broker.Request{Connection: connName})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	return tok
}

// counts is the emulator's view: requests per grant type and refresh tokens
// presented again after rotation replaced them.
type counts struct {
	Password, Refresh, RefreshIssued, Reused int
}

func (bf *brokered) counts() counts {
	return counts{
		Password:      bf.emu.Count(wxemu.GrantPassword),
		Refresh:       bf.emu.Count(wxemu.GrantRefreshToken),
		RefreshIssued: bf.emu.Issued(wxemu.GrantRefreshToken),
		Reused:        bf.emu.ReusedRefreshTokens(),
	}
}

func (bf *brokered) wantCounts(t *testing.T, step string, want counts) {
	t.Helper()
	if diff := cmp.Diff(want, bf.counts()); diff != "" {
		t.Fatalf("%s: emulator counts (-want +got):\n%s", step, diff)
	}
}

// storedGrant returns the grant record the broker keeps for the connection,
// raw. Its key and format are the broker's (key.go, encoding.go); tests only
// look for tokens in it.
func (bf *brokered) storedGrant(t *testing.T) []byte {
	t.Helper()
	raw, err := bf.cache.Get(context.Background(), "grant:{"+connName+"}")
	if err != nil {
		t.Fatalf("reading the stored grant: %v", err)
	}
	return raw
}

// TestBrokerLifecycle follows one connection through the broker: password
// grant, cached token, refresh while the refresh token lives (with rotation,
// the new refresh token stored before the token is handed out), a password
// grant after invalid_grant, and a password grant without a refresh attempt
// once the refresh token is past its exp.
func TestBrokerLifecycle(t *testing.T) {
	for _, mode := range []wxemu.ExpiresIn{wxemu.Absolute, wxemu.Relative} {
		t.Run(mode.String(), func(t *testing.T) {
			bf := newBrokered(t, wxemu.Options{Rotation: true, ExpiresIn: mode}, nil)

			first := bf.get(t)
			bf.wantCounts(t, "first GetToken", counts{Password: 1})
			if got := first.Expiry; got.After(signedExpiry) || got.Before(signedExpiry.Add(-time.Second)) {
				t.Errorf("first token expiry = %v; want %v or up to a second earlier", got.UTC(), signedExpiry.UTC())
			}

			bf.clk.Advance(30 * time.Minute)
			if again := bf.get(t); !again.AccessToken.Equal(first.AccessToken) {
				t.Error("a fresh cached token was not served from the cache")
			}
			bf.wantCounts(t, "GetToken within the fresh period", counts{Password: 1})

			// Past the fresh period (expiry − 1m skew): refresh, many times.
			prev := first
			_, prevRT := bf.wire.lastTokens()
			const cycles = 20
			for i := range cycles {
				bf.clk.Advance(time.Hour)
				tok := bf.get(t)
				at, rt := bf.wire.lastTokens()
				if !tok.AccessToken.Equal(secret.New(at)) || tok.AccessToken.Equal(prev.AccessToken) {
					t.Fatalf("cycle %d: GetToken did not return the newly refreshed token", i)
				}
				if !tok.Expiry.After(bf.clk.Now()) {
					t.Fatalf("cycle %d: token expiry %v is not after now %v", i, tok.Expiry.UTC(), bf.clk.Now().UTC())
				}
				if got := bf.wire.lastForm().Get("refresh_token"); got != prevRT {
					t.Fatalf("cycle %d: the refresh request did not present the latest refresh token", i)
				}
				// The rotated refresh token is in the store the moment the
				// token is handed out, and the replaced one is gone.
				g := bf.storedGrant(t)
				if !bytes.Contains(g, []byte(rt)) {
					t.Fatalf("cycle %d: the stored grant lacks the new refresh token", i)
				}
				if bytes.Contains(g, []byte(prevRT)) {
					t.Fatalf("cycle %d: the stored grant still holds the replaced refresh token", i)
				}
				prev, prevRT = tok, rt
			}
			bf.wantCounts(t, "after refresh cycles", counts{Password: 1, Refresh: cycles, RefreshIssued: cycles})

			// The gateway revokes the refresh tokens: the broker's refresh
			// gets invalid_grant and it runs the password grant by itself.
			bf.emu.RevokeRefreshTokens()
			bf.clk.Advance(time.Hour)
			afterRevoke := bf.get(t)
			if afterRevoke.AccessToken.Equal(prev.AccessToken) {
				t.Error("GetToken after revocation returned the old token")
			}
			bf.wantCounts(t, "after revocation", counts{Password: 2, Refresh: cycles + 1, RefreshIssued: cycles})
			_, rt := bf.wire.lastTokens()
			if !bytes.Contains(bf.storedGrant(t), []byte(rt)) {
				t.Fatal("the stored grant lacks the refresh token of the new password grant")
			}

			// And refreshing works again with the new grant.
			bf.clk.Advance(time.Hour)
			bf.get(t)
			bf.wantCounts(t, "refresh after the new password grant", counts{Password: 2, Refresh: cycles + 2, RefreshIssued: cycles + 1})

			// A refresh token past its exp is not even tried.
			bf.emu.SetRefreshLifetime(90 * time.Minute)
			bf.emu.RevokeRefreshTokens()
			bf.clk.Advance(time.Hour)
			bf.get(t) // invalid_grant, then a password grant with a 90m refresh token
			bf.wantCounts(t, "password grant with a short refresh token", counts{Password: 3, Refresh: cycles + 3, RefreshIssued: cycles + 1})
			bf.clk.Advance(2 * time.Hour)
			bf.get(t)
			bf.wantCounts(t, "refresh token past its exp", counts{Password: 4, Refresh: cycles + 3, RefreshIssued: cycles + 1})
		})
	}
}

// TestBrokerConcurrent: many callers at once cause one upstream request per
// token lifetime, and rotation never makes a refresh token be used twice.
func TestBrokerConcurrent(t *testing.T) {
	bf := newBrokered(t, wxemu.Options{Rotation: true}, nil)
	const callers = 24
	for round := range 5 {
		var wg sync.WaitGroup
		tokens := make([]string, callers)
		for i := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := bf.b.GetToken(context.Background(), broker.Request{Connection: connName})
				if err != nil {
					t.Errorf("round %d: GetToken: %v", round, err)
					return
				}
				tokens[i] = tok.AccessToken.Reveal()
			}()
		}
		wg.Wait()
		for i := range tokens {
			if tokens[i] != tokens[0] {
				t.Fatalf("round %d: callers got different tokens", round)
			}
		}
		want := counts{Password: 1, Refresh: round, RefreshIssued: round}
		bf.wantCounts(t, fmt.Sprintf("round %d", round), want)
		bf.clk.Advance(time.Hour)
	}
}

// TestBrokerRefreshAhead: a token in use is refreshed in the background
// shortly before its fresh period ends, through the refresh grant, and the
// rotated refresh token is stored.
func TestBrokerRefreshAhead(t *testing.T) {
	bf := newBrokered(t, wxemu.Options{Rotation: true}, nil)
	tok := bf.get(t)
	for round := 1; round <= 3; round++ {
		// 20s before the fresh period (expiry − 1m skew) ends, a caller
		// reads the token from the shared cache; 15s later another is
		// served from L1, so the token counts as in use.
		bf.clk.Advance(tok.Expiry.Add(-time.Minute - 20*time.Second).Sub(bf.clk.Now()))
		bf.get(t)
		bf.clk.Advance(15 * time.Second)
		bf.get(t)
		if n := bf.timers.fire(); n == 0 {
			t.Fatalf("round %d: no refresh-ahead was scheduled", round)
		}
		want := counts{Password: 1, Refresh: round, RefreshIssued: round}
		bf.wantCounts(t, fmt.Sprintf("round %d", round), want)
		next := bf.get(t) // the new token, with no request
		bf.wantCounts(t, fmt.Sprintf("round %d, served", round), want)
		if next.AccessToken.Equal(tok.AccessToken) || !next.Expiry.After(tok.Expiry) {
			t.Fatalf("round %d: refresh-ahead did not replace the token", round)
		}
		_, rt := bf.wire.lastTokens()
		if !bytes.Contains(bf.storedGrant(t), []byte(rt)) {
			t.Fatalf("round %d: the stored grant lacks the rotated refresh token", round)
		}
		tok = next
	}
}

func TestBrokerErrors(t *testing.T) {
	tests := []struct {
		name     string
		prepare  func(bf *brokered)
		wantIs   error
		wantCode string
	}{
		{name: "invalid client", prepare: func(bf *brokered) { bf.emu.SetFailure(wxemu.InvalidClient) },
			wantIs: providers.ErrRejected, wantCode: providers.CodeInvalidClient},
		{name: "server error", prepare: func(bf *brokered) { bf.emu.SetFailure(wxemu.ServerError) },
			wantIs: providers.ErrUnavailable},
		{name: "expiry beyond the signed one", prepare: func(bf *brokered) { bf.emu.SetExpiryOffsets(time.Hour, time.Hour) },
			wantIs: providers.ErrInvalidResponse},
		{name: "expiry in the past", prepare: func(bf *brokered) { bf.emu.SetExpiryOffsets(-2*time.Hour, -2*time.Hour) },
			wantIs: providers.ErrInvalidResponse},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bf := newBrokered(t, wxemu.Options{}, nil)
			tc.prepare(bf)
			_, err := bf.b.GetToken(context.Background(), broker.Request{Connection: connName})
			if !errors.Is(err, tc.wantIs) || providers.OAuthCode(err) != tc.wantCode {
				t.Fatalf("GetToken error = %v; want %v with OAuth code %q", err, tc.wantIs, tc.wantCode)
			}
			if l := leaks(err.Error(), bf.wire.secrets()); l != "" {
				t.Errorf("GetToken error contains %s", l)
			}
			// No token was cached. A rejection is remembered for a while
			// (InvalidateToken forgets it): once the gateway behaves, the
			// next call goes upstream and succeeds.
			if errors.Is(err, providers.ErrRejected) {
				if _, err := bf.b.Invalidate(context.Background(), connName, "", nil, ""); err != nil {
					t.Fatal(err)
				}
			}
			bf.emu.SetFailure(wxemu.None)
			bf.emu.SetExpiryOffsets(0, 0)
			bf.get(t)
			bf.wantCounts(t, "after recovery", counts{Password: 2})
		})
	}
}

func TestBrokerListsAddress(t *testing.T) {
	bf := newBrokered(t, wxemu.Options{}, nil)
	bf.get(t)
	infos := bf.b.Connections(context.Background())
	if len(infos) != 1 {
		t.Fatalf("Connections() = %d connections; want 1", len(infos))
	}
	want := map[string]string{
		"address":  wavescrypto.NewAddress(bf.sk.Public(), 'W').String(),
		"chain_id": "W",
	}
	if diff := cmp.Diff(want, infos[0].Details); diff != "" {
		t.Errorf("Connections()[0].Details (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"general"}, infos[0].GrantedScopes); diff != "" {
		t.Errorf("Connections()[0].GrantedScopes (-want +got):\n%s", diff)
	}
	if infos[0].State != broker.StateReady {
		t.Errorf("Connections()[0].State = %v; want ready", infos[0].State)
	}
}

// TestBrokerKeyChange: after the connection's key changes, the broker
// neither serves the old account's cached token nor refreshes its grant; it
// signs a password grant for the new account and keeps that.
func TestBrokerKeyChange(t *testing.T) {
	bf := newBrokered(t, wxemu.Options{}, nil)
	oldAddr := wavescrypto.NewAddress(bf.sk.Public(), 'W').String()
	if got := addressClaim(t, bf.get(t)); got != oldAddr {
		t.Fatalf("first token for %s; want %s", got, oldAddr)
	}
	bf.wantCounts(t, "old key", counts{Password: 1})

	// The same store and upstream, the connection now configured with
	// another seed (as after a rolling update).
	const otherEnv, otherSeed = "WX_OTHER_SEED", "another account's seed, for the key-change test"
	cfg := *bf.cfg
	cfg.Seed = secret.Ref{Env: otherEnv}
	env := bf.env
	env.Secrets.LookupEnv = func(k string) (string, bool) { return otherSeed, k == otherEnv }
	p, err := cfg.Open(env)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	b2, err := broker.New(broker.Options{Cache: bf.cache, Now: bf.clk.Now, AfterFunc: (&timers{}).AfterFunc,
		Connections: []broker.Connection{{Name: connName, Type: "wx", Provider: p, Skew: time.Minute}},
		Upstream:    &upstream.Policy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	newAddr := wavescrypto.NewAddress(wavescrypto.PrivateKeyFromSeed(otherSeed, 0).Public(), 'W').String()
	if infos := b2.Connections(context.Background()); len(infos) != 1 || infos[0].GrantedScopes != nil {
		t.Errorf("Connections() with the new key = %+v; want no granted scopes (the stored grant is the old account's)", infos)
	}
	get := func() *broker.Token {
		t.Helper()
		tok, err := b2.GetToken(context.Background(), broker.Request{Connection: connName})
		if err != nil {
			t.Fatalf("GetToken with the new key: %v", err)
		}
		return tok
	}
	if got := addressClaim(t, get()); got != newAddr {
		t.Errorf("token after the key change for %s; want %s (the old account's %s must not be served)", got, newAddr, oldAddr)
	}
	bf.wantCounts(t, "new key", counts{Password: 2})
	if !bytes.Contains(bf.storedGrant(t), []byte(`"sub":"`+newAddr+`"`)) {
		t.Errorf("stored grant is not marked as the new account's %s", newAddr)
	}

	// Past the token's fresh period the new account's grant is refreshed.
	bf.clk.Advance(time.Hour)
	if got := addressClaim(t, get()); got != newAddr {
		t.Errorf("refreshed token for %s; want %s", got, newAddr)
	}
	bf.wantCounts(t, "refresh with the new key", counts{Password: 2, Refresh: 1, RefreshIssued: 1})
}

// addressClaim is the "address" claim of an emulator-issued access token.
func addressClaim(t *testing.T, tok *broker.Token) string {
	t.Helper()
	parts := strings.Split(tok.AccessToken.Reveal(), ".")
	if len(parts) != 3 {
		t.Fatalf("access token is not a JWT (%d parts)", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	var claims struct{ Address string }
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("JWT claims: %v", err)
	}
	return claims.Address
}

// A request with no scopes and one naming the default ("general") are the
// same request: one token serves both.
func TestBrokerDefaultScopesShareAToken(t *testing.T) {
	bf := newBrokered(t, wxemu.Options{}, nil)
	first, err := bf.b.GetToken(context.Background(), broker.Request{Connection: connName})
	if err != nil {
		t.Fatal(err)
	}
	second, err := bf.b.GetToken(context.Background(), broker.Request{Connection: connName, Scopes: []string{"general"}})
	if err != nil {
		t.Fatal(err)
	}
	if first.AccessToken.Reveal() != second.AccessToken.Reveal() {
		t.Errorf("GetToken(no scopes) and GetToken([general]) got different tokens")
	}
	bf.wantCounts(t, "after both requests", counts{Password: 1})
}
