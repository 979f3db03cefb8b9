package waxemu_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
)

const (
	id     = "client-1"
	secret = "s!ec^ret+1"
)

type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

type env struct {
	emu *waxemu.Server
	url string
	clk *clock
}

func start(t *testing.T, clientSecret string) *env {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	emu := waxemu.New(waxemu.Options{ClientID: id, ClientSecret: clientSecret, RedirectURL: "https://app.example/cb?x=1", Now: clk.Now})
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	return &env{emu: emu, url: srv.URL, clk: clk}
}

// authorize returns the query of the redirect to the app, or fails t with
// the status when there is none.
func (e *env) authorize(t *testing.T, q url.Values) (int, url.Values) {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(e.url + waxemu.AuthorizePath + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(loc.String(), "https://app.example/cb?") {
		t.Fatalf("redirect to %q; want the registered URL", loc)
	}
	return resp.StatusCode, loc.Query()
}

func authQuery(duration string) url.Values {
	q := url.Values{"client_id": {id}, "response_type": {"code"}, "state": {"st"}, "scope": {"identity items"}}
	if duration != "" {
		q.Set("duration", duration)
	}
	return q
}

// post sends a token request with raw Basic credentials and returns the
// status and decoded body.
func (e *env) post(t *testing.T, user, pass string, form url.Values) (int, map[string]any) {
	t.Helper()
	return e.postTo(t, waxemu.TokenPath, user, pass, form)
}

func (e *env) postTo(t *testing.T, path, user, pass string, form url.Values) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func TestAuthorize(t *testing.T) {
	tests := []struct {
		name       string
		q          url.Values
		deny       bool
		wantStatus int
		wantKeys   []string
	}{
		{"approve", authQuery("permanent"), false, http.StatusFound, []string{"code", "state", "x"}},
		{"deny", authQuery("permanent"), true, http.StatusFound, []string{"error", "state", "x"}},
		{"wrong client", func() url.Values { q := authQuery(""); q.Set("client_id", "x"); return q }(), false, http.StatusBadRequest, nil},
		{"no state", func() url.Values { q := authQuery(""); q.Del("state"); return q }(), false, http.StatusBadRequest, nil},
		{"token response type", func() url.Values { q := authQuery(""); q.Set("response_type", "token"); return q }(), false, http.StatusBadRequest, nil},
		{"redirect_uri sent", func() url.Values { q := authQuery(""); q.Set("redirect_uri", "https://evil.example/"); return q }(), false, http.StatusBadRequest, nil},
		{"unknown scope", func() url.Values { q := authQuery(""); q.Set("scope", "identity admin"); return q }(), false, http.StatusBadRequest, nil},
		{"bad duration", authQuery("forever"), false, http.StatusBadRequest, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, secret)
			e.emu.SetApprove(!tt.deny)
			status, back := e.authorize(t, tt.q)
			if status != tt.wantStatus {
				t.Fatalf("authorize status = %d; want %d", status, tt.wantStatus)
			}
			var keys []string
			for k := range back {
				keys = append(keys, k)
			}
			if diff := cmp.Diff(tt.wantKeys, keys, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("redirect parameters mismatch (-want +got):\n%s", diff)
			}
			if tt.deny && back.Get("error") != "access_denied" {
				t.Errorf("error = %q; want access_denied", back.Get("error"))
			}
		})
	}
}

func TestToken(t *testing.T) {
	e := start(t, secret)
	_, back := e.authorize(t, authQuery("permanent"))
	code := back.Get("code")
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}}

	// Form-encoded credentials are not decoded: they fail.
	if st, body := e.post(t, id, url.QueryEscape(secret), form); st != http.StatusUnauthorized || body["error"] != "invalid_client" {
		t.Fatalf("form-encoded Basic: %d %v; want 401 invalid_client", st, body["error"])
	}
	st, body := e.post(t, id, secret, form)
	if st != http.StatusOK {
		t.Fatalf("exchange: %d %v; want 200", st, body["error"])
	}
	if body["expires_in"] != float64(1800) || body["token_type"] != "bearer" || body["scope"] != "identity items" || body["refresh_token"] == nil {
		t.Errorf("exchange response fields wrong: expires_in %v, token_type %v, scope %v, has refresh_token %v",
			body["expires_in"], body["token_type"], body["scope"], body["refresh_token"] != nil)
	}
	if st, body := e.post(t, id, secret, form); st != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Errorf("reused code: %d %v; want 400 invalid_grant", st, body["error"])
	}
	rt := body["refresh_token"].(string)
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	if st, body := e.post(t, id, secret, refresh); st != http.StatusOK || body["refresh_token"] != nil {
		t.Errorf("refresh without rotation: %d, new refresh token %v; want 200 and none", st, body["refresh_token"] != nil)
	}
	e.emu.SetRotate(true)
	st, body = e.post(t, id, secret, refresh)
	if st != http.StatusOK || body["refresh_token"] == nil || body["refresh_token"] == rt {
		t.Fatalf("refresh with rotation: %d; want 200 and a new refresh token", st)
	}
	if st, body := e.post(t, id, secret, refresh); st != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Errorf("rotated-out refresh token: %d %v; want 400 invalid_grant", st, body["error"])
	}
	e.emu.RevokeAll()
	refresh.Set("refresh_token", body["refresh_token"].(string))
	if st, body := e.post(t, id, secret, refresh); st != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Errorf("after RevokeAll: %d %v; want 400 invalid_grant", st, body["error"])
	}
	want := waxemu.Counts{Authorize: 1, Approved: 1, TokenRequests: 7, CodeExchanges: 3, Refreshes: 4, Issued: 3,
		ReusedCodes: 1, InvalidClient: 1, InvalidGrant: 3}
	if diff := cmp.Diff(want, e.emu.Counts()); diff != "" {
		t.Errorf("Counts() mismatch (-want +got):\n%s", diff)
	}
}

func TestTemporaryAndExpiredCodes(t *testing.T) {
	e := start(t, secret)
	_, back := e.authorize(t, authQuery(""))
	st, body := e.post(t, id, secret, url.Values{"grant_type": {"authorization_code"}, "code": {back.Get("code")}})
	if st != http.StatusOK || body["refresh_token"] != nil {
		t.Errorf("exchange without duration=permanent: %d, refresh token %v; want 200 and none", st, body["refresh_token"] != nil)
	}
	_, back = e.authorize(t, authQuery("permanent"))
	e.clk.t = e.clk.t.Add(waxemu.CodeLifetime)
	if st, body := e.post(t, id, secret, url.Values{"grant_type": {"authorization_code"}, "code": {back.Get("code")}}); st != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Errorf("expired code: %d %v; want 400 invalid_grant", st, body["error"])
	}
}

func TestDeviceSecrets(t *testing.T) {
	e := start(t, "") // public client
	_, back := e.authorize(t, authQuery("permanent"))
	st, body := e.post(t, id, "device-secret-A", url.Values{"grant_type": {"authorization_code"}, "code": {back.Get("code")}})
	if st != http.StatusOK {
		t.Fatalf("exchange with a device secret: %d %v", st, body["error"])
	}
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {body["refresh_token"].(string)}}
	if st, body := e.post(t, id, "device-secret-B", refresh); st != http.StatusUnauthorized || body["error"] != "invalid_client" {
		t.Errorf("refresh with another device secret: %d %v; want 401 invalid_client", st, body["error"])
	}
	if st, _ := e.post(t, id, "device-secret-A", refresh); st != http.StatusOK {
		t.Errorf("refresh with the grant's device secret: %d; want 200", st)
	}
	if got := e.emu.Counts().DeviceSecretMismatches; got != 1 {
		t.Errorf("DeviceSecretMismatches = %d; want 1", got)
	}
	if st, _ := e.post(t, "", "", refresh); st != http.StatusUnauthorized {
		t.Errorf("refresh without Basic: %d; want 401", st)
	}
}

// revoke posts to the revocation endpoint as post does to the token endpoint.
func (e *env) revoke(t *testing.T, user, pass string, form url.Values) (int, map[string]any) {
	t.Helper()
	return e.postTo(t, waxemu.RevokePath, user, pass, form)
}

// TestRevoke: WAX's form and RFC 7009's both revoke a refresh token, which
// ends the grant and its access tokens; bad requests are refused; unknown
// tokens are answered 200 and not counted as revocations.
func TestRevoke(t *testing.T) {
	e := start(t, secret)
	grant := func() (at, rt string) {
		_, back := e.authorize(t, authQuery("permanent"))
		_, body := e.post(t, id, secret, url.Values{"grant_type": {"authorization_code"}, "code": {back.Get("code")}})
		return body["access_token"].(string), body["refresh_token"].(string)
	}
	at1, rt1 := grant()
	at2, rt2 := grant()
	for _, tt := range []struct {
		name   string
		form   url.Values
		status int
		code   string
	}{
		{"no token", url.Values{"token_type": {"refresh"}}, 400, "invalid_request"},
		{"WAX access type", url.Values{"token_type": {"access"}, "token": {rt1}}, 400, "unsupported_token_type"},
		{"both forms", url.Values{"token_type": {"refresh"}, "token_type_hint": {"refresh_token"}, "token": {rt1}}, 400, "invalid_request"},
		{"unknown field", url.Values{"token": {rt1}, "client_secret": {"x"}}, 400, "invalid_request"},
		{"unknown token", url.Values{"token": {"nope"}}, 200, ""},
	} {
		if st, body := e.revoke(t, id, secret, tt.form); st != tt.status || (tt.code != "" && body["error"] != tt.code) {
			t.Errorf("%s: revoke = %d %v; want %d %s", tt.name, st, body["error"], tt.status, tt.code)
		}
	}
	if st, _ := e.revoke(t, id, "wrong", url.Values{"token_type": {"refresh"}, "token": {rt1}}); st != http.StatusUnauthorized {
		t.Errorf("revoke with a wrong secret = %d; want 401", st)
	}
	if e.emu.Revoked(rt1) || !e.emu.Valid(at1) {
		t.Fatal("a refused revocation revoked the grant")
	}
	if st, _ := e.revoke(t, id, secret, url.Values{"token_type": {"refresh"}, "token": {rt1}}); st != http.StatusOK {
		t.Errorf("WAX revoke = %d; want 200", st)
	}
	if st, _ := e.revoke(t, id, secret, url.Values{"token": {rt2}, "token_type_hint": {"refresh_token"}}); st != http.StatusOK {
		t.Errorf("RFC 7009 revoke = %d; want 200", st)
	}
	for i, tok := range []struct{ at, rt string }{{at1, rt1}, {at2, rt2}} {
		if !e.emu.Revoked(tok.rt) || e.emu.Valid(tok.at) {
			t.Errorf("grant %d: Revoked = %v, access token Valid = %v; want true, false", i+1, e.emu.Revoked(tok.rt), e.emu.Valid(tok.at))
		}
		if st, body := e.post(t, id, secret, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.rt}}); st != 400 || body["error"] != "invalid_grant" {
			t.Errorf("grant %d: refresh after revocation = %d %v; want 400 invalid_grant", i+1, st, body["error"])
		}
	}
	if c := e.emu.Counts(); c.Revocations != 2 || c.RevokeRequests != 8 {
		t.Errorf("Revocations, RevokeRequests = %d, %d; want 2, 8", c.Revocations, c.RevokeRequests)
	}
}

// exchange redeems the code of an approved authorization with q and returns
// the token response.
func (e *env) exchange(t *testing.T, q url.Values) map[string]any {
	t.Helper()
	_, back := e.authorize(t, q)
	st, body := e.post(t, id, secret, url.Values{"grant_type": {"authorization_code"}, "code": {back.Get("code")}})
	if st != http.StatusOK {
		t.Fatalf("exchange: %d %v", st, body["error"])
	}
	return body
}

// TestUsers: login_hint, else SetUser, else DefaultUser approves; every
// token of a grant, refreshed ones included, maps back to its person.
func TestUsers(t *testing.T) {
	e := start(t, secret)
	e.emu.SetRotate(true)
	q := authQuery("permanent")
	anon := e.exchange(t, q)
	e.emu.SetUser("bob")
	bob := e.exchange(t, q)
	q.Set("login_hint", "alice")
	alice := e.exchange(t, q)
	for _, tt := range []struct {
		body map[string]any
		want string
	}{{anon, waxemu.DefaultUser}, {bob, "bob"}, {alice, "alice"}} {
		if got := e.emu.UserOf(tt.body["access_token"].(string)); got != tt.want {
			t.Errorf("UserOf(%s's access token) = %q; want %q", tt.want, got, tt.want)
		}
		st, body := e.post(t, id, secret, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tt.body["refresh_token"].(string)}})
		if st != http.StatusOK {
			t.Fatalf("refresh: %d %v", st, body["error"])
		}
		if got := e.emu.UserOf(body["access_token"].(string)); got != tt.want {
			t.Errorf("UserOf(%s's refreshed access token) = %q; want %q", tt.want, got, tt.want)
		}
	}
	if got := e.emu.UserOf("not-issued"); got != "" {
		t.Errorf("UserOf(unknown) = %q; want empty", got)
	}
	e.emu.SetUser("")
	if got := e.emu.UserOf(e.exchange(t, authQuery("permanent"))["access_token"].(string)); got != waxemu.DefaultUser {
		t.Errorf("after SetUser(\"\"): UserOf = %q; want %q", got, waxemu.DefaultUser)
	}
}

// TestRefreshTokenLifetime: refresh_token_expires_in is sent with a
// permanent grant's tokens, each refresh restarts it, and an idle refresh
// token dies with invalid_grant.
func TestRefreshTokenLifetime(t *testing.T) {
	for _, rotate := range []bool{false, true} {
		t.Run(fmt.Sprintf("rotate=%v", rotate), func(t *testing.T) {
			e := start(t, secret)
			e.emu.SetRotate(rotate)
			e.emu.SetRefreshTokenLifetime(time.Minute)
			body := e.exchange(t, authQuery("permanent"))
			if got := body["refresh_token_expires_in"]; got != float64(60) {
				t.Errorf("exchange refresh_token_expires_in = %v; want 60", got)
			}
			rt := body["refresh_token"].(string)
			refresh := func() (int, map[string]any) {
				return e.post(t, id, secret, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})
			}
			for i := range 3 { // kept alive: 59 s idle each time
				e.clk.t = e.clk.t.Add(59 * time.Second)
				st, body := refresh()
				if st != http.StatusOK {
					t.Fatalf("refresh #%d after 59 s: %d %v", i+1, st, body["error"])
				}
				if got := body["refresh_token_expires_in"]; got != float64(60) {
					t.Errorf("refresh #%d refresh_token_expires_in = %v; want 60", i+1, got)
				}
				if next, ok := body["refresh_token"].(string); ok {
					rt = next
				}
			}
			e.clk.t = e.clk.t.Add(time.Minute)
			if st, body := refresh(); st != http.StatusBadRequest || body["error"] != "invalid_grant" {
				t.Errorf("refresh after 60 s idle: %d %v; want 400 invalid_grant", st, body["error"])
			}
			if got, ok := e.exchange(t, authQuery(""))["refresh_token_expires_in"]; ok {
				t.Errorf("temporary grant refresh_token_expires_in = %v; want none", got)
			}
		})
	}
	e := start(t, secret)
	if _, ok := e.exchange(t, authQuery("permanent"))["refresh_token_expires_in"]; ok {
		t.Error("refresh_token_expires_in sent without a lifetime")
	}
}
