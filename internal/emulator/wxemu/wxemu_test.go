package wxemu_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mr-tron/base58"

	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

const (
	testSeed = "wxemu test seed phrase, not an account anyone uses"
	clientID = "wx.network"
)

// start is a whole second, so signed expiries and clock readings line up.
var start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	clk *clock
	emu *wxemu.Server
	url string
	sk  wavescrypto.PrivateKey
}

func newFixture(t *testing.T, opts wxemu.Options) *fixture {
	t.Helper()
	clk := &clock{t: start}
	if opts.ClientID == "" {
		opts.ClientID = clientID
	}
	opts.Now = clk.Now
	emu := wxemu.New(opts)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	return &fixture{clk: clk, emu: emu, url: srv.URL + wxemu.TokenPath, sk: wavescrypto.PrivateKeyFromSeed(testSeed, 0)}
}

// passwordForm signs a password grant for expiry on chain.
func (f *fixture) passwordForm(t *testing.T, chain byte, client string, expiry int64) url.Values {
	t.Helper()
	sig, err := wavescrypto.Sign(f.sk, wavescrypto.TokenMessage(chain, client, expiry), bytes.NewReader(make([]byte, 64)))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return url.Values{
		"grant_type": {"password"},
		"scope":      {"general"},
		"username":   {f.sk.Public().String()},
		"password":   {strconv.FormatInt(expiry, 10) + ":" + base58.Encode(sig)},
		"client_id":  {client},
	}
}

type reply struct {
	status int
	body   map[string]any
}

func (r reply) str(k string) string { s, _ := r.body[k].(string); return s }

func post(t *testing.T, target, contentType, body string) reply {
	t.Helper()
	resp, err := http.Post(target, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("HTTP %d: body is not JSON (%d bytes)", resp.StatusCode, len(data))
	}
	return reply{status: resp.StatusCode, body: m}
}

func postForm(t *testing.T, target string, form url.Values) reply {
	t.Helper()
	return post(t, target, "application/x-www-form-urlencoded", form.Encode())
}

// claims decodes a JWT's payload without checking it.
func claims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d dot-separated parts; want 3", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("payload is not base64url: %v", err)
	}
	var c map[string]any
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("payload is not JSON: %v", err)
	}
	return c
}

func claimTime(t *testing.T, tok, name string) time.Time {
	t.Helper()
	v, ok := claims(t, tok)[name].(float64)
	if !ok {
		t.Fatalf("claim %q missing or not a number", name)
	}
	return time.Unix(int64(v), 0)
}

func TestPasswordGrantChecks(t *testing.T) {
	expiry := start.Add(time.Hour).Unix()
	week := start.Add(7 * 24 * time.Hour).Unix()
	tests := []struct {
		name        string
		edit        func(t *testing.T, f *fixture) url.Values
		contentType string
		wantStatus  int
		wantError   string
	}{
		{name: "valid", wantStatus: 200},
		{name: "expiry exactly a week ahead", wantStatus: 200,
			edit: func(t *testing.T, f *fixture) url.Values { return f.passwordForm(t, 'W', clientID, week) }},
		{name: "expiry more than a week ahead", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values { return f.passwordForm(t, 'W', clientID, week+1) }},
		{name: "expiry now", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values { return f.passwordForm(t, 'W', clientID, start.Unix()) }},
		{name: "expiry in the past", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values { return f.passwordForm(t, 'W', clientID, start.Unix()-60) }},
		{name: "signed for the testnet", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values { return f.passwordForm(t, 'T', clientID, expiry) }},
		{name: "signed for another client id", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', "waves.exchange", expiry)
				form.Set("client_id", clientID)
				return form
			}},
		{name: "password expiry differs from the signed one", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				_, sig, _ := strings.Cut(form.Get("password"), ":")
				form.Set("password", strconv.FormatInt(expiry+1, 10)+":"+sig)
				return form
			}},
		{name: "another account's public key", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Set("username", wavescrypto.PrivateKeyFromSeed(testSeed, 1).Public().String())
				return form
			}},
		{name: "username not base58", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Set("username", "0OIl")
				return form
			}},
		{name: "password without signature", wantStatus: 400, wantError: "invalid_grant",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Set("password", strconv.FormatInt(expiry, 10))
				return form
			}},
		{name: "unknown client id", wantStatus: 401, wantError: "invalid_client",
			edit: func(t *testing.T, f *fixture) url.Values { return f.passwordForm(t, 'W', "someone.else", expiry) }},
		{name: "wrong scope", wantStatus: 400, wantError: "invalid_scope",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Set("scope", "general read")
				return form
			}},
		{name: "missing username", wantStatus: 400, wantError: "invalid_request",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Del("username")
				return form
			}},
		{name: "unknown parameter", wantStatus: 400, wantError: "invalid_request",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Set("client_secret", "x")
				return form
			}},
		{name: "repeated parameter", wantStatus: 400, wantError: "invalid_request",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Add("scope", "general")
				return form
			}},
		{name: "unsupported grant type", wantStatus: 400, wantError: "unsupported_grant_type",
			edit: func(t *testing.T, f *fixture) url.Values {
				form := f.passwordForm(t, 'W', clientID, expiry)
				form.Set("grant_type", "client_credentials")
				return form
			}},
		{name: "JSON body", contentType: "application/json", wantStatus: 400, wantError: "invalid_request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{})
			form := f.passwordForm(t, 'W', clientID, expiry)
			if tc.edit != nil {
				form = tc.edit(t, f)
			}
			ct := tc.contentType
			if ct == "" {
				ct = "application/x-www-form-urlencoded"
			}
			r := post(t, f.url, ct, form.Encode())
			if r.status != tc.wantStatus || r.str("error") != tc.wantError {
				t.Fatalf("status, error = %d, %q (%s); want %d, %q",
					r.status, r.str("error"), r.str("error_description"), tc.wantStatus, tc.wantError)
			}
			wantIssued := 0
			if tc.wantStatus == 200 {
				wantIssued = 1
			}
			if got := f.emu.Issued(wxemu.GrantPassword); got != wantIssued {
				t.Errorf("Issued(password) = %d; want %d", got, wantIssued)
			}
		})
	}
}

func TestNotPostOrWrongPath(t *testing.T) {
	f := newFixture(t, wxemu.Options{})
	resp, err := http.Get(f.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET status = %d; want 405", resp.StatusCode)
	}
	r := post(t, f.url+"?grant_type=password", "application/x-www-form-urlencoded", "")
	if r.status != 400 || r.str("error") != "invalid_request" {
		t.Errorf("query parameters: status, error = %d, %q; want 400, invalid_request", r.status, r.str("error"))
	}
	resp, err = http.Post(strings.TrimSuffix(f.url, wxemu.TokenPath)+"/other", "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("other path status = %d; want 404", resp.StatusCode)
	}
}

func TestIssuedTokens(t *testing.T) {
	const lifetime = 90 * time.Minute
	for _, mode := range []wxemu.ExpiresIn{wxemu.Absolute, wxemu.Relative, wxemu.Omitted} {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFixture(t, wxemu.Options{ExpiresIn: mode})
			f.clk.Advance(250 * time.Millisecond) // expires_in counts whole seconds left
			expiry := start.Add(lifetime).Unix()
			r := postForm(t, f.url, f.passwordForm(t, 'W', clientID, expiry))
			if r.status != 200 {
				t.Fatalf("status = %d (%s %s); want 200", r.status, r.str("error"), r.str("error_description"))
			}
			var want any
			switch mode {
			case wxemu.Absolute:
				want = float64(expiry)
			case wxemu.Relative:
				want = float64(lifetime/time.Second - 1)
			}
			if got := r.body["expires_in"]; got != want {
				t.Errorf("expires_in = %v; want %v", got, want)
			}
			if got := r.str("token_type"); got != "bearer" {
				t.Errorf("token_type = %q; want bearer", got)
			}
			at, rt := r.str("access_token"), r.str("refresh_token")
			c := claims(t, at)
			pk := f.sk.Public()
			wantClaims := map[string]any{
				"sub":     pk.String(),
				"address": wavescrypto.NewAddress(pk, 'W').String(),
				"exp":     float64(expiry),
			}
			for k, v := range wantClaims {
				if c[k] != v {
					t.Errorf("access token claim %s = %v; want %v", k, c[k], v)
				}
			}
			if got, want := claimTime(t, rt, "exp"), f.clk.Now().Add(wxemu.DefaultRefreshLifetime).Truncate(time.Second); !got.Equal(want) {
				t.Errorf("refresh token exp = %v; want %v", got, want)
			}
			if !f.emu.Valid(at) {
				t.Error("Valid(access token) = false; want true")
			}
			f.clk.Advance(lifetime)
			if f.emu.Valid(at) {
				t.Error("Valid(access token) after its expiry = true; want false")
			}
		})
	}
}

func TestExpiryOffsetsAndOpaqueTokens(t *testing.T) {
	f := newFixture(t, wxemu.Options{})
	expiry := start.Add(time.Hour).Unix()
	f.emu.SetExpiryOffsets(-10*time.Minute, 5*time.Minute)
	r := postForm(t, f.url, f.passwordForm(t, 'W', clientID, expiry))
	if got, want := claimTime(t, r.str("access_token"), "exp").Unix(), expiry-600; got != want {
		t.Errorf("exp claim = %d; want %d", got, want)
	}
	if got, want := r.body["expires_in"], float64(expiry+300); got != want {
		t.Errorf("expires_in = %v; want %v", got, want)
	}

	f.emu.SetExpiryOffsets(0, 0)
	f.emu.SetOpaqueAccessTokens(true)
	r = postForm(t, f.url, f.passwordForm(t, 'W', clientID, expiry))
	if strings.Count(r.str("access_token"), ".") != 0 {
		t.Error("opaque access token contains dots; want no JWT")
	}
	if got, want := r.body["expires_in"], float64(expiry); got != want {
		t.Errorf("expires_in = %v; want %v", got, want)
	}
}

func refreshForm(rt string) url.Values {
	return url.Values{
		"grant_type":    {"refresh_token"},
		"scope":         {"general"},
		"client_id":     {clientID},
		"refresh_token": {rt},
	}
}

func TestRefresh(t *testing.T) {
	const lifetime = time.Hour
	tests := []struct {
		name     string
		rotation bool
	}{
		{name: "rotation", rotation: true},
		{name: "no rotation", rotation: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{Rotation: tc.rotation, ExpiresIn: wxemu.Relative})
			r := postForm(t, f.url, f.passwordForm(t, 'W', clientID, start.Add(lifetime).Unix()))
			rt1 := r.str("refresh_token")

			f.clk.Advance(50 * time.Minute)
			r = postForm(t, f.url, refreshForm(rt1))
			if r.status != 200 {
				t.Fatalf("refresh status = %d (%s %s); want 200", r.status, r.str("error"), r.str("error_description"))
			}
			rt2 := r.str("refresh_token")
			if got, want := claimTime(t, r.str("access_token"), "exp"), f.clk.Now().Add(lifetime); !got.Equal(want) {
				t.Errorf("refreshed access token exp = %v; want %v (now + the grant's lifetime)", got, want)
			}
			if got, want := r.body["expires_in"], float64(lifetime/time.Second); got != want {
				t.Errorf("expires_in = %v; want %v", got, want)
			}
			if rotated := rt2 != rt1; rotated != tc.rotation {
				t.Errorf("refresh token rotated = %v; want %v", rotated, tc.rotation)
			}

			// The first refresh token again: rejected only with rotation.
			r = postForm(t, f.url, refreshForm(rt1))
			wantStatus, wantReused := 200, 0
			if tc.rotation {
				wantStatus, wantReused = 400, 1
			}
			if r.status != wantStatus {
				t.Errorf("second use of the first refresh token: status = %d; want %d", r.status, wantStatus)
			}
			if wantStatus == 400 && r.str("error") != "invalid_grant" {
				t.Errorf("error = %q; want invalid_grant", r.str("error"))
			}
			if got := f.emu.ReusedRefreshTokens(); got != wantReused {
				t.Errorf("ReusedRefreshTokens() = %d; want %d", got, wantReused)
			}
			if r := postForm(t, f.url, refreshForm(rt2)); r.status != 200 {
				t.Errorf("current refresh token: status = %d; want 200", r.status)
			}
			if got, want := f.emu.Count(wxemu.GrantRefreshToken), 3; got != want {
				t.Errorf("Count(refresh_token) = %d; want %d", got, want)
			}
			if got, want := f.emu.Count(wxemu.GrantPassword), 1; got != want {
				t.Errorf("Count(password) = %d; want %d", got, want)
			}
		})
	}
}

func TestRefreshRejected(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, f *fixture, rt string) string
	}{
		{name: "revoked", prepare: func(_ *testing.T, f *fixture, rt string) string { f.emu.RevokeRefreshTokens(); return rt }},
		{name: "expired", prepare: func(_ *testing.T, f *fixture, rt string) string {
			f.clk.Advance(wxemu.DefaultRefreshLifetime)
			return rt
		}},
		{name: "shorter lifetime, expired", prepare: func(t *testing.T, f *fixture, _ string) string {
			f.emu.SetRefreshLifetime(2 * time.Hour)
			r := postForm(t, f.url, f.passwordForm(t, 'W', clientID, start.Add(time.Hour).Unix()))
			f.clk.Advance(2 * time.Hour)
			return r.str("refresh_token")
		}},
		{name: "unknown", prepare: func(*testing.T, *fixture, string) string { return "not-a-token" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{Rotation: true})
			r := postForm(t, f.url, f.passwordForm(t, 'W', clientID, start.Add(time.Hour).Unix()))
			rt := tc.prepare(t, f, r.str("refresh_token"))
			r = postForm(t, f.url, refreshForm(rt))
			if r.status != 400 || r.str("error") != "invalid_grant" {
				t.Errorf("status, error = %d, %q; want 400, invalid_grant", r.status, r.str("error"))
			}
			if got := f.emu.ReusedRefreshTokens(); got != 0 {
				t.Errorf("ReusedRefreshTokens() = %d; want 0", got)
			}
		})
	}
}

func TestFailures(t *testing.T) {
	tests := []struct {
		failure    wxemu.Failure
		wantStatus int
		wantError  string
	}{
		{wxemu.InvalidClient, 401, "invalid_client"},
		{wxemu.ServerError, 500, "server_error"},
		{wxemu.None, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.failure.String(), func(t *testing.T) {
			f := newFixture(t, wxemu.Options{})
			f.emu.SetFailure(tc.failure)
			r := postForm(t, f.url, f.passwordForm(t, 'W', clientID, start.Add(time.Hour).Unix()))
			if r.status != tc.wantStatus || r.str("error") != tc.wantError {
				t.Errorf("status, error = %d, %q; want %d, %q", r.status, r.str("error"), tc.wantStatus, tc.wantError)
			}
			if got := f.emu.Count(wxemu.GrantPassword); got != 1 {
				t.Errorf("Count(password) = %d; want 1 (failed requests count)", got)
			}
		})
	}
}

func TestConcurrentRequests(t *testing.T) {
	f := newFixture(t, wxemu.Options{Rotation: true})
	const n = 16
	expiry := start.Add(time.Hour).Unix()
	var wg sync.WaitGroup
	statuses := make([]int, n)
	forms := make([]url.Values, n)
	for i := range forms {
		forms[i] = f.passwordForm(t, 'W', clientID, expiry)
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			form := forms[i]
			resp, err := http.PostForm(f.url, form)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var body map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&body)
			statuses[i] = resp.StatusCode
			if rt, _ := body["refresh_token"].(string); rt != "" {
				resp, err := http.PostForm(f.url, refreshForm(rt))
				if err == nil {
					resp.Body.Close()
				}
			}
			f.emu.SetRotation(i%2 == 0)
			f.emu.SetExpiresIn(wxemu.ExpiresIn(i % 3))
		}()
	}
	wg.Wait()
	want := make([]int, n)
	for i := range want {
		want[i] = 200
	}
	if diff := cmp.Diff(want, statuses); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	got := fmt.Sprint(f.emu.Count(wxemu.GrantPassword), f.emu.Count(wxemu.GrantRefreshToken), f.emu.Issued(wxemu.GrantRefreshToken))
	if want := fmt.Sprint(n, n, n); got != want {
		t.Errorf("Count(password), Count(refresh_token), Issued(refresh_token) = %s; want %s", got, want)
	}
}

// TestAppTokens: a pair issued as the WX Network app does is refreshed at
// the token endpoint like any other, with rotation, and its access tokens
// map back to the address.
func TestAppTokens(t *testing.T) {
	f := newFixture(t, wxemu.Options{Rotation: true})
	const addr = "3PAppUserAddressForTests"
	app := f.emu.IssueAppTokens(addr, time.Hour)
	if !app.Expiry.Equal(start.Add(time.Hour)) {
		t.Errorf("IssueAppTokens().Expiry = %v; want %v", app.Expiry, start.Add(time.Hour))
	}
	if !f.emu.Valid(app.AccessToken) || f.emu.AddressOf(app.AccessToken) != addr {
		t.Errorf("app access token: Valid = %v, AddressOf = %q; want true, %q", f.emu.Valid(app.AccessToken), f.emu.AddressOf(app.AccessToken), addr)
	}
	if got := f.emu.Issued(wxemu.GrantApp); got != 1 {
		t.Errorf("Issued(GrantApp) = %d; want 1", got)
	}
	f.clk.Advance(2 * time.Hour)
	r := postForm(t, f.url, refreshForm(app.RefreshToken))
	if r.status != http.StatusOK {
		t.Fatalf("refresh of the app's refresh token: %d %v", r.status, r.body)
	}
	if rt := r.str("refresh_token"); rt == "" || rt == app.RefreshToken {
		t.Errorf("refresh did not rotate the refresh token")
	}
	if at := r.str("access_token"); !f.emu.Valid(at) || f.emu.AddressOf(at) != addr {
		t.Errorf("refreshed access token: Valid = %v, AddressOf = %q; want true, %q", f.emu.Valid(at), f.emu.AddressOf(at), addr)
	}
	if exp := claimTime(t, r.str("access_token"), "exp"); !exp.Equal(f.clk.Now().Add(time.Hour)) {
		t.Errorf("refreshed access token exp = %v; want the app token's lifetime from now", exp)
	}
	if r := postForm(t, f.url, refreshForm(app.RefreshToken)); r.status != http.StatusBadRequest || r.str("error") != "invalid_grant" {
		t.Errorf("reusing the rotated app refresh token: %d %v; want 400 invalid_grant", r.status, r.str("error"))
	}
	if got := f.emu.IssueAppTokens(addr, 0).Expiry; !got.Equal(f.clk.Now().Add(wxemu.DefaultMaxLifetime)) {
		t.Errorf("IssueAppTokens(lifetime 0).Expiry = %v; want the maximum lifetime from now", got)
	}
}
