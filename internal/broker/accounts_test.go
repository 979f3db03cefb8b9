package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

// authorizeAs authorizes account of conn through b as person, the way a
// browser would: the emulator approves as login_hint, the callback finishes.
func authorizeAs(t *testing.T, b *broker.Broker, conn, account, person string) {
	t.Helper()
	authURL, _, _, err := b.StartAuthorization(context.Background(), conn, account)
	if err != nil {
		t.Fatalf("StartAuthorization(%s, %s) = %v", conn, account, err)
	}
	u, _ := url.Parse(authURL)
	q := u.Query()
	q.Set("login_hint", person)
	u.RawQuery = q.Encode()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	back := loc.Query()
	got, err := b.HandleAuthorizationResponse(context.Background(), broker.AuthorizationResponse{State: back.Get("state"), Code: back.Get("code")})
	if err != nil || got != conn {
		t.Fatalf("callback for %s/%s = %q, %v", conn, account, got, err)
	}
}

// replicasOnRedis returns n brokers with h's WAX connections on one
// redis-server, as replicas.
func replicasOnRedis(t *testing.T, h *azHarness, n int) []*broker.Broker {
	t.Helper()
	srv := redistest.Start(t)
	var bs []*broker.Broker
	for range n {
		rc, err := rediscache.New(rediscache.Options{Client: rediscache.NewClient(rediscache.ClientConfig{Addrs: []string{srv.Addr()}}), Prefix: "acct:"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rc.Close() })
		b := h.open(t, rc)
		t.Cleanup(b.Close)
		bs = append(bs, b)
	}
	return bs
}

func tokenFor(t *testing.T, b *broker.Broker, account string) string {
	t.Helper()
	tok, err := b.GetToken(context.Background(), broker.Request{Connection: "wax", Account: account})
	if err != nil {
		t.Fatalf("GetToken(wax, %q) = %v", account, err)
	}
	return tok.AccessToken.Reveal()
}

// Two people authorize two accounts of one connection: each account gets
// its own person's tokens, on every replica. Re-authorizing an account as
// another person retires the first person's token everywhere; deleting an
// account revokes it upstream and leaves the other working.
func TestAccountsAreThePeopleWhoAuthorized(t *testing.T) {
	h := newAZHarness(t, false)
	bs := replicasOnRedis(t, h, 2)
	authorizeAs(t, bs[0], "wax", "alice", "alice")
	authorizeAs(t, bs[1], "wax", "bob", "bob")
	for i, b := range bs {
		a, bo := tokenFor(t, b, "alice"), tokenFor(t, b, "bob")
		if got := h.emu.UserOf(a); got != "alice" {
			t.Errorf("replica %d: account alice's token is %s's", i, got)
		}
		if got := h.emu.UserOf(bo); got != "bob" {
			t.Errorf("replica %d: account bob's token is %s's", i, got)
		}
	}
	if _, err := bs[0].GetToken(context.Background(), broker.Request{Connection: "wax", Account: "carol"}); !errors.Is(err, providers.ErrNeedsAuthorization) {
		t.Errorf("GetToken(carol, never authorized) = %v; want ErrNeedsAuthorization", err)
	}

	// alice's account re-authorized by bob: nobody may act as alice with
	// the old grant's token any more, on either replica.
	authorizeAs(t, bs[1], "wax", "alice", "bob")
	for i, b := range bs {
		// The other replica hears of it over pub/sub, within moments.
		var got string
		for range 200 {
			if got = h.emu.UserOf(tokenFor(t, b, "alice")); got == "bob" {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if got != "bob" {
			t.Errorf("replica %d: after re-authorizing account alice as bob, its token is %s's", i, got)
		}
	}

	infos, next, err := bs[0].ListAccounts(context.Background(), "wax", 1, "", 0)
	if err != nil || len(infos) != 1 || infos[0].Account != "alice" || next == "" {
		t.Fatalf("ListAccounts(page 1) = %+v, %q, %v; want alice and a next page", infos, next, err)
	}
	infos, next, err = bs[0].ListAccounts(context.Background(), "wax", 1, next, 0)
	if err != nil || len(infos) != 1 || infos[0].Account != "bob" || infos[0].State != broker.StateReady || next != "" {
		t.Fatalf("ListAccounts(page 2) = %+v, %q, %v; want bob, ready, last page", infos, next, err)
	}

	deleted, err := bs[0].DeleteAccount(context.Background(), "wax", "alice", true)
	if err != nil || !deleted {
		t.Fatalf("DeleteAccount(alice) = %v, %v", deleted, err)
	}
	if n := h.emu.Counts().Revocations; n != 1 {
		t.Errorf("upstream revocations = %d; want 1", n)
	}
	for i, b := range bs {
		if _, err := b.GetToken(context.Background(), broker.Request{Connection: "wax", Account: "alice"}); !errors.Is(err, providers.ErrNeedsAuthorization) {
			t.Errorf("replica %d: GetToken(alice) after DeleteAccount = %v; want ErrNeedsAuthorization", i, err)
		}
		if got := h.emu.UserOf(tokenFor(t, b, "bob")); got != "bob" {
			t.Errorf("replica %d: bob's account after deleting alice's: token is %s's", i, got)
		}
	}
	if infos, _, _ := bs[1].ListAccounts(context.Background(), "wax", 10, "", 0); len(infos) != 1 || infos[0].Account != "bob" {
		t.Errorf("ListAccounts after the delete = %+v; want only bob", infos)
	}
	h.checkLogs(t)
}

// Accounts are refused where they make no sense, and checked.
func TestAccountArguments(t *testing.T) {
	h := newAZHarness(t, false)
	b := h.open(t, h.memCache(t, ""))
	defer b.Close()
	for _, tc := range []struct {
		conn, account string
	}{
		{"wax", "has space"},
		{"wax", "slash/not-allowed"},
		{"wax", string(make([]byte, 129))},
		{"plain", "alice"},
	} {
		if _, err := b.GetToken(context.Background(), broker.Request{Connection: tc.conn, Account: tc.account}); !errors.Is(err, broker.ErrInvalidArgument) {
			t.Errorf("GetToken(%s, %q) = %v; want ErrInvalidArgument", tc.conn, tc.account, err)
		}
	}
}

// A grant stored before accounts existed is the default account's, read
// where it always was.
func TestDefaultAccountReadsTheGrantOfBefore(t *testing.T) {
	h := newAZHarness(t, false)
	c := h.memCache(t, "")
	b := h.open(t, c)
	defer b.Close()
	authorizeAs(t, b, "wax", "", "olga")
	raw, err := c.Get(context.Background(), "grant:{wax}")
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite it as the previous release wrote it: no token keys, no
	// token expiry, no error; and no index entry.
	var rec map[string]any
	mustJSON(t, raw, &rec)
	for _, k := range []string{"k", "te", "err"} {
		delete(rec, k)
	}
	if err := c.Set(context.Background(), "grant:{wax}", toJSON(t, rec), 0); err != nil {
		t.Fatal(err)
	}
	_ = c.IndexRemove(context.Background(), "accounts:{wax}", "")
	b2 := h.open(t, c)
	defer b2.Close()
	h.clk.Advance(time.Hour) // the token is stale: the old grant must refresh
	tok, err := b2.GetToken(context.Background(), broker.Request{Connection: "wax"})
	if err != nil || h.emu.UserOf(tok.AccessToken.Reveal()) != "olga" {
		t.Fatalf("GetToken(default account) from an old grant = %v; want olga's token", err)
	}
	if infos, _, _ := b2.ListAccounts(context.Background(), "wax", 10, "", 0); len(infos) != 1 || infos[0].Account != "" {
		t.Errorf("ListAccounts = %+v; want the default account", infos)
	}
}

// An idle grant whose refresh token dies after 60 s unused is kept alive
// by the broker's background refreshes: three minutes without a call, and
// it still works.
func TestKeepAliveRefreshesIdleGrants(t *testing.T) {
	h := newAZHarness(t, false)
	h.emu.SetRefreshTokenLifetime(time.Minute)
	h.idle = time.Minute
	b := h.open(t, h.memCache(t, ""))
	defer b.Close()
	authorizeAs(t, b, "wax", "idle", "ivan")
	before := h.emu.Counts().Refreshes
	for range 18 { // 3 minutes of fake time, 10 s at a time
		h.clk.Advance(10 * time.Second)
		time.Sleep(100 * time.Millisecond) // pacing: the keep-alive looks every 10 ms
	}
	if n := h.emu.Counts().Refreshes - before; n < 3 {
		t.Errorf("%d keep-alive refreshes in 3 idle minutes; want at least 3", n)
	}
	if _, err := b.GetToken(context.Background(), broker.Request{Connection: "wax", Account: "idle", ForceRefresh: true}); err != nil {
		t.Fatalf("GetToken after 3 idle minutes = %v; want the grant alive", err)
	}
	if n := h.emu.Counts().InvalidGrant; n != 0 {
		t.Errorf("upstream refused %d refresh tokens; want 0", n)
	}
}

// A keyless WX connection serves an account from a grant imported from the
// WX Network app, refreshes it with rotation, and says the account needs
// a new import once the gateway refuses its refresh token.
func TestImportedWXAccount(t *testing.T) {
	clk := cachetest.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	emu := wxemu.New(wxemu.Options{ClientID: "wx-client", Rotation: true, ExpiresIn: wxemu.Relative, Now: clk.Now})
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	cfg := &wx.Config{TokenURL: srv.URL + wxemu.TokenPath, ClientID: "wx-client", Credentials: wx.CredentialsImported}
	p, err := cfg.Open(providers.Env{Name: "wx-app", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := newMem(t, clk)
	b, err := broker.New(broker.Options{Cache: c, Now: clk.Now, DisableRefreshAhead: true, DisableKeepAlive: true,
		Connections: []broker.Connection{{Name: "wx-app", Type: "wx", Provider: p, Skew: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.GetToken(context.Background(), broker.Request{Connection: "wx-app", Account: "u1"}); !errors.Is(err, providers.ErrNeedsAuthorization) {
		t.Fatalf("GetToken before any import = %v; want ErrNeedsAuthorization", err)
	}
	const addr = "3PUserOneAddress"
	app := emu.IssueAppTokens(addr, time.Hour)
	if err := b.ImportGrant(context.Background(), broker.Import{Connection: "wx-app", Account: "u1",
		RefreshToken: secret.New(app.RefreshToken), AccessToken: secret.New(app.AccessToken), ExpiresAt: app.Expiry}); err != nil {
		t.Fatalf("ImportGrant = %v", err)
	}
	if got := tokenOf(t, b, "wx-app", "u1"); got != app.AccessToken {
		t.Errorf("GetToken right after the import did not serve the imported access token")
	}
	for i := range 2 {
		clk.Advance(time.Hour)
		at := tokenOf(t, b, "wx-app", "u1")
		if !emu.Valid(at) || emu.AddressOf(at) != addr {
			t.Fatalf("refresh #%d: the token is not the imported account's", i+1)
		}
	}
	// An import without an access token serves nothing until the first
	// GetToken refreshes, and says nothing about how long tokens live.
	fresh := emu.IssueAppTokens(addr, time.Hour)
	if err := b.ImportGrant(context.Background(), broker.Import{Connection: "wx-app", Account: "u2", RefreshToken: secret.New(fresh.RefreshToken)}); err != nil {
		t.Fatal(err)
	}
	tok, err := b.GetToken(context.Background(), broker.Request{Connection: "wx-app", Account: "u2", MinTTL: 30 * time.Minute})
	if err != nil || tok.AccessToken.Reveal() == fresh.AccessToken || emu.AddressOf(tok.AccessToken.Reveal()) != addr {
		t.Fatalf("GetToken(u2, min_ttl 30m) after an import without a token = %v; want a refreshed token", err)
	}
	// The app's first refresh token was rotated away: importing it again
	// gives a grant the gateway refuses.
	if err := b.ImportGrant(context.Background(), broker.Import{Connection: "wx-app", Account: "u1", RefreshToken: secret.New(app.RefreshToken)}); err != nil {
		t.Fatal(err)
	}
	_, err = b.GetToken(context.Background(), broker.Request{Connection: "wx-app", Account: "u1"})
	if !errors.Is(err, providers.ErrNeedsAuthorization) {
		t.Fatalf("GetToken with a refused imported grant = %v; want ErrNeedsAuthorization", err)
	}
	infos, _, _ := b.ListAccounts(context.Background(), "wx-app", 10, "", 0)
	if len(infos) != 2 || infos[0].Account != "u1" || infos[0].State != broker.StateNeedsAuthorization || infos[1].State != broker.StateReady {
		t.Errorf("ListAccounts = %+v; want u1 needing a new import and u2 ready", infos)
	}
}

func tokenOf(t *testing.T, b *broker.Broker, conn, account string) string {
	t.Helper()
	tok, err := b.GetToken(context.Background(), broker.Request{Connection: conn, Account: account})
	if err != nil {
		t.Fatalf("GetToken(%s, %s) = %v", conn, account, err)
	}
	return tok.AccessToken.Reveal()
}

func newMem(t *testing.T, clk *cachetest.Clock) cache.Cache {
	t.Helper()
	c, err := memory.New(memory.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func mustJSON(t *testing.T, raw []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
}

func toJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A public client (no secret, client_authentication: none) completes an
// authorization with PKCE through the broker and refreshes its grant.
func TestPublicClientAuthorizesAndRefreshes(t *testing.T) {
	clk := cachetest.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	emu := waxemu.New(waxemu.Options{ClientID: "public-app", Now: clk.Now, RedirectURL: "https://broker.example/oauth2/callback", PublicClient: true})
	emu.SetRotate(true)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	cfg := &authcode.Config{AuthorizeURL: srv.URL + waxemu.AuthorizePath, TokenURL: srv.URL + waxemu.TokenPath,
		ClientID: "public-app", ClientAuthentication: authcode.ClientAuthNone, PKCE: true,
		ExtraAuthorizeParams: map[string]string{"duration": "permanent"}}
	p, err := cfg.Open(providers.Env{Name: "public", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Cache: newMem(t, clk), Now: clk.Now, DisableRefreshAhead: true, DisableKeepAlive: true,
		Connections: []broker.Connection{{Name: "public", Type: "authorization_code", Provider: p, Skew: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	authorizeAs(t, b, "public", "pat", "pat")
	first := tokenOf(t, b, "public", "pat")
	clk.Advance(waxemu.TokenLifetime)
	second := tokenOf(t, b, "public", "pat")
	if first == second || !emu.Valid(second) || emu.UserOf(second) != "pat" {
		t.Errorf("after the token expired, GetToken did not refresh pat's grant")
	}
	if c := emu.Counts(); c.PKCEFailures != 0 || c.Refreshes != 1 {
		t.Errorf("emulator counts = %+v; want 1 refresh and no PKCE failure", c)
	}
}
