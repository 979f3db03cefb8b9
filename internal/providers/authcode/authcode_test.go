package authcode_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

const clientID = "app-1234"

// trickySecret has the characters that raw and form Basic encodings treat
// differently.
const trickySecret = "s3cr!t^with+plus%and space"

func env(now func() time.Time) providers.Env {
	return providers.Env{
		Name: "test",
		Now:  now,
		Secrets: secret.Loader{LookupEnv: func(k string) (string, bool) {
			if k == "WAX_SECRET" {
				return trickySecret, true
			}
			return "", false
		}},
	}
}

func TestValidate(t *testing.T) {
	ref := secret.Ref{Env: "WAX_SECRET"}
	generic := func(mod func(c *authcode.Config)) providers.Config {
		c := &authcode.Config{AuthorizeURL: "https://as.example/authorize", TokenURL: "https://as.example/token",
			ClientID: clientID, ClientSecret: ref}
		mod(c)
		return c
	}
	wax := func(mod func(c *authcode.WAXConfig)) providers.Config {
		c := &authcode.WAXConfig{Config: authcode.Config{ClientID: clientID, ClientSecret: ref}}
		mod(c)
		return c
	}
	tests := []struct {
		name string
		cfg  providers.Config
		want []string // substrings, one per expected problem; nil means valid
	}{
		{"generic ok", generic(func(*authcode.Config) {}), nil},
		{"generic device secret ok", generic(func(c *authcode.Config) { c.ClientSecret = secret.Ref{}; c.DeviceSecret = true }), nil},
		{"generic empty", &authcode.Config{}, []string{"authorize_url: required", "token_url: required", "client_id: required", "client_secret: required"}},
		{"secret and device secret", generic(func(c *authcode.Config) { c.DeviceSecret = true }), []string{"client_secret: must not be set with device_secret"}},
		{"bad urls", generic(func(c *authcode.Config) {
			c.AuthorizeURL, c.TokenURL, c.RedirectURL = "ftp://x/", "https://u:p@x/", "/relative"
		}), []string{"authorize_url: must be an absolute http", "token_url: must not contain credentials", "redirect_url: must be an absolute http"}},
		{"public client ok", generic(func(c *authcode.Config) {
			c.ClientSecret, c.ClientAuthentication, c.PKCE = secret.Ref{}, authcode.ClientAuthNone, true
		}), nil},
		{"device_secret spelled as client_authentication ok", generic(func(c *authcode.Config) {
			c.ClientSecret, c.ClientAuthentication = secret.Ref{}, authcode.ClientAuthDevice
		}), nil},
		{"public client without pkce, with a secret and basic_encoding", generic(func(c *authcode.Config) {
			c.ClientAuthentication, c.BasicEncoding = authcode.ClientAuthNone, authcode.BasicForm
		}), []string{"client_secret: must not be set with client_authentication: none", "pkce: must be true with client_authentication: none",
			"basic_encoding: has no effect with client_authentication: none"}},
		{"public client with device_secret", generic(func(c *authcode.Config) {
			c.ClientSecret, c.ClientAuthentication, c.PKCE, c.DeviceSecret = secret.Ref{}, authcode.ClientAuthNone, true, true
		}), []string{"device_secret: must not be true with client_authentication: none"}},
		{"unknown client_authentication", generic(func(c *authcode.Config) { c.ClientAuthentication = "private_key_jwt" }),
			[]string{`client_authentication: must be "client_secret", "device_secret" or "none", got "private_key_jwt"`}},
		{"wax public client", wax(func(c *authcode.WAXConfig) {
			c.ClientSecret, c.ClientAuthentication = secret.Ref{}, authcode.ClientAuthNone
		}),
			[]string{"client_authentication: wax documents no client without a secret: use device_secret: true"}},
		{"bad revocation url", generic(func(c *authcode.Config) { c.RevocationURL = "http://as.example/revoke" }),
			[]string{"revocation_url: must be https"}},
		{"bad encoding", generic(func(c *authcode.Config) { c.BasicEncoding = "base64" }), []string{`basic_encoding: must be "raw" or "form"`}},
		{"colon in raw client id", generic(func(c *authcode.Config) { c.BasicEncoding = "raw"; c.ClientID = "a:b" }), []string{"client_id: must not contain ':'"}},
		{"reserved params", generic(func(c *authcode.Config) {
			c.ExtraAuthorizeParams = map[string]string{"state": "x", "prompt": "consent", "": "y"}
		}), []string{`extra_authorize_params: empty parameter name`, `extra_authorize_params: "state" is set by the provider`}},
		{"bad scope and negatives", generic(func(c *authcode.Config) {
			c.Scopes = []string{"ok", "not ok"}
			c.Timeout.Duration, c.DefaultLifetime.Duration, c.MaxResponseBytes = -1, -1, -1
		}), []string{"scopes[1]:", "timeout: must not be negative", "default_lifetime: must not be negative", "max_response_bytes: must not be negative"}},
		{"default token type ok", generic(func(c *authcode.Config) { c.DefaultTokenType = "Bearer" }), nil},
		{"bad default token type", generic(func(c *authcode.Config) { c.DefaultTokenType = "Bearer x" }),
			[]string{"default_token_type: token type has a character RFC 6749 §11.1 does not allow"}},
		{"wax bad default token type", wax(func(c *authcode.WAXConfig) { c.DefaultTokenType = "Bearer\n" }),
			[]string{"default_token_type: token type has a character"}},
		{"wax ok", wax(func(*authcode.WAXConfig) {}), nil},
		{"wax sandbox device secret ok", wax(func(c *authcode.WAXConfig) {
			c.Environment, c.ClientSecret, c.DeviceSecret = "sandbox", secret.Ref{}, true
		}), nil},
		{"wax bad environment and duration", wax(func(c *authcode.WAXConfig) { c.Environment, c.Duration = "staging", "forever" }),
			[]string{`environment: must be "production" or "sandbox"`, `duration: must be "permanent" or "temporary"`}},
		{"wax reserved duration", wax(func(c *authcode.WAXConfig) { c.ExtraAuthorizeParams = map[string]string{"duration": "permanent"} }),
			[]string{`extra_authorize_params: "duration" is set by the provider`}},
		{"wax no client", wax(func(c *authcode.WAXConfig) { c.ClientID, c.ClientSecret = "", secret.Ref{} }),
			[]string{"client_id: required", "client_secret: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want errors containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v; want it to contain %q", err, w)
				}
			}
			if got := len(strings.Split(err.Error(), "\n")); got != len(tt.want) {
				t.Errorf("Validate() reported %d problems; want %d:\n%v", got, len(tt.want), err)
			}
		})
	}
}

func TestAuthCodeURL(t *testing.T) {
	tests := []struct {
		name     string
		cfg      providers.Config
		wantBase string
		want     url.Values
	}{
		{
			name:     "wax production defaults",
			cfg:      &authcode.WAXConfig{Config: authcode.Config{ClientID: clientID, ClientSecret: secret.Ref{Env: "WAX_SECRET"}, RedirectURL: "https://broker.example/oauth2/callback"}},
			wantBase: authcode.WAXProductionAuthorizeURL,
			want: url.Values{"client_id": {clientID}, "response_type": {"code"}, "state": {"st"},
				"duration": {"permanent"}, "scope": {"identity_basic"}},
		},
		{
			name: "wax sandbox temporary with scopes and mobile",
			cfg: &authcode.WAXConfig{Environment: "sandbox", Duration: "temporary", Config: authcode.Config{
				ClientID: clientID, DeviceSecret: true, Scopes: []string{"identity", "items"},
				ExtraAuthorizeParams: map[string]string{"mobile": "1"}}},
			wantBase: authcode.WAXSandboxAuthorizeURL,
			want: url.Values{"client_id": {clientID}, "response_type": {"code"}, "state": {"st"},
				"scope": {"identity items"}, "mobile": {"1"}},
		},
		{
			name: "generic sends redirect_uri and keeps the URL's query",
			cfg: &authcode.Config{AuthorizeURL: "https://as.example/auth?tenant=t1", TokenURL: "https://as.example/token",
				ClientID: clientID, ClientSecret: secret.Ref{Env: "WAX_SECRET"}, Scopes: []string{"a", "b"},
				RedirectURL: "https://broker.example/oauth2/callback", ExtraAuthorizeParams: map[string]string{"prompt": "consent"}},
			wantBase: "https://as.example/auth",
			want: url.Values{"client_id": {clientID}, "response_type": {"code"}, "state": {"st"}, "tenant": {"t1"},
				"scope": {"a b"}, "redirect_uri": {"https://broker.example/oauth2/callback"}, "prompt": {"consent"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.cfg.Open(env(time.Now))
			if err != nil {
				t.Fatalf("Open() = %v", err)
			}
			u, err := url.Parse(p.(providers.Authorizer).AuthCodeURL("st", ""))
			if err != nil {
				t.Fatalf("AuthCodeURL() is not a URL: %v", err)
			}
			q := u.Query()
			u.RawQuery = ""
			if u.String() != tt.wantBase {
				t.Errorf("AuthCodeURL() base = %q; want %q", u, tt.wantBase)
			}
			if diff := cmp.Diff(tt.want, q); diff != "" {
				t.Errorf("AuthCodeURL() query mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// clock is a fake clock shared by the emulator and the provider.
type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

type fixture struct {
	emu  *waxemu.Server
	p    providers.Provider
	clk  *clock
	base string
	// verifier is the PKCE code verifier authorize and Exchange use.
	verifier string
}

func newFixture(t *testing.T, emuOpts waxemu.Options, cfg authcode.WAXConfig) *fixture {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	emuOpts.ClientID, emuOpts.Now, emuOpts.RedirectURL = clientID, clk.Now, "https://app.example/cb"
	emu := waxemu.New(emuOpts)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	cfg.ClientID = clientID
	cfg.AuthorizeURL, cfg.TokenURL = srv.URL+waxemu.AuthorizePath, srv.URL+waxemu.TokenPath
	p, err := cfg.Open(env(clk.Now))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	return &fixture{emu: emu, p: p, clk: clk, base: srv.URL}
}

// authorize follows the authorization URL to the emulator and returns the
// query it redirects to the app with.
func (f *fixture) authorize(t *testing.T, state string) url.Values {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(f.p.(providers.Authorizer).AuthCodeURL(state, f.verifier))
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
	if got := loc.Query().Get("state"); got != state {
		t.Fatalf("redirect state = %q; want %q", got, state)
	}
	return loc.Query()
}

func TestExchangeAndRefresh(t *testing.T) {
	tests := []struct {
		name     string
		emu      waxemu.Options
		cfg      authcode.WAXConfig
		rotate   bool
		wantDS   bool
		wantRTOK bool
	}{
		{
			name: "client secret with ! ^ + sent raw",
			emu:  waxemu.Options{ClientSecret: trickySecret},
			cfg:  authcode.WAXConfig{Config: authcode.Config{ClientSecret: secret.Ref{Env: "WAX_SECRET"}}},
		},
		{
			name:   "device secret with rotation",
			emu:    waxemu.Options{},
			cfg:    authcode.WAXConfig{Config: authcode.Config{DeviceSecret: true, Scopes: []string{"identity", "items"}}},
			rotate: true,
			wantDS: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.emu, tt.cfg)
			f.emu.SetRotate(tt.rotate)
			code := f.authorize(t, "state-1").Get("code")
			tok, err := f.p.(providers.Authorizer).Exchange(context.Background(), code, f.verifier)
			if err != nil {
				t.Fatalf("Exchange() = %v", err)
			}
			if !f.emu.Valid(tok.AccessToken.Reveal()) {
				t.Errorf("Exchange() returned a token the emulator did not issue")
			}
			if want := f.clk.Now().Add(waxemu.TokenLifetime); !tok.Expiry.Equal(want) {
				t.Errorf("Exchange().Expiry = %v; want %v", tok.Expiry, want)
			}
			g := tok.Grant
			if g == nil || g.RefreshToken.IsZero() {
				t.Fatalf("Exchange().Grant has no refresh token")
			}
			if g.DeviceSecret.IsZero() != !tt.wantDS {
				t.Errorf("Exchange().Grant has device secret = %v; want %v", !g.DeviceSecret.IsZero(), tt.wantDS)
			}
			wantScopes := tt.cfg.Scopes
			if wantScopes == nil {
				wantScopes = []string{"identity_basic"}
			}
			if diff := cmp.Diff(wantScopes, g.Scopes); diff != "" {
				t.Errorf("Exchange().Grant.Scopes mismatch (-want +got):\n%s", diff)
			}

			for i := range 3 {
				f.clk.t = f.clk.t.Add(waxemu.TokenLifetime)
				rt, err := f.p.(providers.Refresher).Refresh(context.Background(), providers.Request{Scopes: wantScopes[:1]}, g)
				if err != nil {
					t.Fatalf("Refresh() #%d = %v", i+1, err)
				}
				if !f.emu.Valid(rt.AccessToken.Reveal()) {
					t.Errorf("Refresh() #%d returned a token the emulator did not issue", i+1)
				}
				if rotated := !rt.Grant.RefreshToken.IsZero(); rotated != tt.rotate {
					t.Errorf("Refresh() #%d rotated = %v; want %v", i+1, rotated, tt.rotate)
				}
				if rt.Grant.RefreshToken.IsZero() {
					continue
				}
				g.RefreshToken = rt.Grant.RefreshToken
			}
			c := f.emu.Counts()
			if c.DeviceSecretMismatches != 0 || c.InvalidClient != 0 || c.Refreshes != 3 || c.CodeExchanges != 1 {
				t.Errorf("emulator counts = %+v; want 1 exchange, 3 refreshes, no client failures", c)
			}
		})
	}
}

func TestRefreshErrors(t *testing.T) {
	f := newFixture(t, waxemu.Options{}, authcode.WAXConfig{Config: authcode.Config{DeviceSecret: true}})
	tok, err := f.p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	ref := f.p.(providers.Refresher)
	other := *tok.Grant
	other.DeviceSecret = secret.New("a-different-device-secret")

	tests := []struct {
		name       string
		prep       func()
		req        providers.Request
		g          *providers.Grant
		wantIs     error
		wantCode   string
		wantCalled bool
	}{
		{name: "scope not granted", req: providers.Request{Scopes: []string{"items"}}, g: tok.Grant, wantIs: providers.ErrNeedsAuthorization},
		{name: "no refresh token", g: &providers.Grant{State: providers.GrantReady}, wantIs: providers.ErrNeedsAuthorization},
		{name: "no device secret", g: &providers.Grant{State: providers.GrantReady, RefreshToken: tok.Grant.RefreshToken}, wantIs: providers.ErrNeedsAuthorization},
		{name: "other device secret", g: &other, wantIs: providers.ErrRejected, wantCode: providers.CodeInvalidClient, wantCalled: true},
		{name: "revoked", prep: f.emu.RevokeAll, g: tok.Grant, wantIs: providers.ErrRejected, wantCode: providers.CodeInvalidGrant, wantCalled: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prep != nil {
				tt.prep()
			}
			before := f.emu.Counts().TokenRequests
			_, err := ref.Refresh(context.Background(), tt.req, tt.g)
			if !errors.Is(err, tt.wantIs) {
				t.Fatalf("Refresh() = %v; want %v", err, tt.wantIs)
			}
			if got := providers.OAuthCode(err); got != tt.wantCode {
				t.Errorf("Refresh() OAuth code = %q; want %q", got, tt.wantCode)
			}
			if called := f.emu.Counts().TokenRequests > before; called != tt.wantCalled {
				t.Errorf("token endpoint called = %v; want %v", called, tt.wantCalled)
			}
			if msg := err.Error(); strings.Contains(msg, tok.Grant.RefreshToken.Reveal()) || strings.Contains(msg, tok.Grant.DeviceSecret.Reveal()) {
				t.Errorf("Refresh() error contains a secret")
			}
		})
	}
	if got := f.emu.Counts().DeviceSecretMismatches; got != 1 {
		t.Errorf("emulator device secret mismatches = %d; want 1", got)
	}
}

func TestFormEncodingFailsAgainstWAX(t *testing.T) {
	f := newFixture(t, waxemu.Options{ClientSecret: trickySecret},
		authcode.WAXConfig{Config: authcode.Config{ClientSecret: secret.Ref{Env: "WAX_SECRET"}, BasicEncoding: authcode.BasicForm}})
	_, err := f.p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
	if got := providers.OAuthCode(err); got != providers.CodeInvalidClient {
		t.Fatalf("Exchange() with form-encoded Basic = %v; want invalid_client (WAX does not form-decode)", err)
	}
}

func TestTemporaryGrantHasNoRefreshToken(t *testing.T) {
	f := newFixture(t, waxemu.Options{ClientSecret: trickySecret},
		authcode.WAXConfig{Duration: authcode.WAXTemporary, Config: authcode.Config{ClientSecret: secret.Ref{Env: "WAX_SECRET"}}})
	tok, err := f.p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if tok.Grant == nil || !tok.Grant.RefreshToken.IsZero() {
		t.Errorf("Exchange() without duration=permanent: want a grant without refresh token")
	}
}

func TestTokenNeedsAuthorization(t *testing.T) {
	f := newFixture(t, waxemu.Options{ClientSecret: trickySecret}, authcode.WAXConfig{Config: authcode.Config{ClientSecret: secret.Ref{Env: "WAX_SECRET"}}})
	if _, err := f.p.Token(context.Background(), providers.Request{}); !errors.Is(err, providers.ErrNeedsAuthorization) {
		t.Errorf("Token() = %v; want ErrNeedsAuthorization", err)
	}
}

// TestGenericForm checks the generic provider against an upstream that
// asserts RFC 6749 §2.3.1 form-encoded Basic and redirect_uri (§4.1.3).
func TestGenericForm(t *testing.T) {
	const redirect = "https://broker.example/oauth2/callback"
	var gotForm url.Values
	var authOK bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, sec, ok := r.BasicAuth()
		uid, _ := url.QueryUnescape(id)
		usec, _ := url.QueryUnescape(sec)
		authOK = ok && uid == clientID && usec == trickySecret && sec != trickySecret
		_ = r.ParseForm()
		gotForm = r.PostForm
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"at-123456","token_type":"Bearer","expires_in":"600","refresh_token":"rt-123456","scope":"b a"}`))
	}))
	defer srv.Close()
	cfg := &authcode.Config{AuthorizeURL: srv.URL + "/auth", TokenURL: srv.URL + "/token", ClientID: clientID,
		ClientSecret: secret.Ref{Env: "WAX_SECRET"}, RedirectURL: redirect, Scopes: []string{"a", "b"}}
	p, err := cfg.Open(env(time.Now))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	tok, err := p.(providers.Authorizer).Exchange(context.Background(), "the-code", "")
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if !authOK {
		t.Errorf("upstream did not get form-encoded Basic credentials")
	}
	want := url.Values{"grant_type": {"authorization_code"}, "code": {"the-code"}, "redirect_uri": {redirect}}
	if diff := cmp.Diff(want, gotForm); diff != "" {
		t.Errorf("exchange form mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a", "b"}, tok.Grant.Scopes); diff != "" {
		t.Errorf("Grant.Scopes mismatch (-want +got):\n%s", diff)
	}
	if _, err := p.(providers.Refresher).Refresh(context.Background(), providers.Request{}, tok.Grant); err != nil {
		t.Fatalf("Refresh() = %v", err)
	}
	want = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt-123456"}}
	if diff := cmp.Diff(want, gotForm); diff != "" {
		t.Errorf("refresh form mismatch (-want +got):\n%s", diff)
	}
}

func TestDeviceSecretsAreRandomPerGrant(t *testing.T) {
	f := newFixture(t, waxemu.Options{}, authcode.WAXConfig{Config: authcode.Config{DeviceSecret: true}})
	seen := map[string]bool{}
	for i := range 3 {
		tok, err := f.p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
		if err != nil {
			t.Fatalf("Exchange() #%d = %v", i+1, err)
		}
		ds := tok.Grant.DeviceSecret.Reveal()
		if len(ds) < 40 || seen[ds] {
			t.Fatalf("Exchange() #%d: device secret of %d bytes, repeated = %v; want a fresh one of 32 random bytes", i+1, len(ds), seen[ds])
		}
		seen[ds] = true
	}
	// With the randomness injected, the device secret is exactly it.
	cfg := &authcode.WAXConfig{Config: authcode.Config{ClientID: clientID, DeviceSecret: true,
		TokenURL: f.base + waxemu.TokenPath, AuthorizeURL: f.base + waxemu.AuthorizePath}}
	e := env(f.clk.Now)
	e.Rand = bytes.NewReader(bytes.Repeat([]byte{0xAB}, 32))
	p, err := cfg.Open(e)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	f.p = p
	tok, err := p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if got, want := tok.Grant.DeviceSecret.Reveal(), base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xAB}, 32)); got != want {
		t.Errorf("device secret is not the base64url of the injected random bytes (got %d bytes)", len(got))
	}
}

func TestDescribe(t *testing.T) {
	ref := secret.Ref{Env: "WAX_SECRET"}
	tests := []struct {
		name string
		cfg  providers.Config
		want map[string]string
	}{
		{"wax sandbox", &authcode.WAXConfig{Environment: "sandbox", Config: authcode.Config{ClientID: clientID, DeviceSecret: true}},
			map[string]string{"environment": "sandbox", "duration": "permanent", "client_authentication": "device_secret",
				"authorize_url": authcode.WAXSandboxAuthorizeURL, "token_url": authcode.WAXSandboxTokenURL,
				"revocation_url": authcode.WAXSandboxRevocationURL}},
		{"wax at an emulator", &authcode.WAXConfig{Duration: "temporary", Config: authcode.Config{ClientID: clientID, ClientSecret: ref,
			AuthorizeURL: "http://127.0.0.1:1/v1/authorize", TokenURL: "http://127.0.0.1:1/v1/access_token", RedirectURL: "https://b.example/oauth2/callback"}},
			map[string]string{"duration": "temporary", "client_authentication": "client_secret", "redirect_url": "https://b.example/oauth2/callback",
				"authorize_url": "http://127.0.0.1:1/v1/authorize", "token_url": "http://127.0.0.1:1/v1/access_token"}},
		{"generic", &authcode.Config{ClientID: clientID, ClientSecret: ref, AuthorizeURL: "https://as.example/a?x=1", TokenURL: "https://as.example/t"},
			map[string]string{"client_authentication": "client_secret", "authorize_url": "https://as.example/a", "token_url": "https://as.example/t"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.cfg.Open(env(time.Now))
			if err != nil {
				t.Fatalf("Open() = %v", err)
			}
			got := p.(providers.Describer).Describe()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Describe() mismatch (-want +got):\n%s", diff)
			}
			for k, v := range got {
				if strings.Contains(v, trickySecret) {
					t.Errorf("Describe()[%q] contains the client secret", k)
				}
			}
		})
	}
}

// TestPKCE: with pkce on, the authorization URL carries the S256 challenge
// of the verifier it is given and the exchange the verifier itself; the
// emulator, requiring PKCE, refuses any other verifier.
func TestPKCE(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	emu := waxemu.New(waxemu.Options{ClientID: clientID, ClientSecret: trickySecret, Now: clk.Now,
		RedirectURL: "https://app.example/cb", PKCE: true})
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	cfg := authcode.Config{AuthorizeURL: srv.URL + waxemu.AuthorizePath, TokenURL: srv.URL + waxemu.TokenPath,
		ClientID: clientID, ClientSecret: secret.Ref{Env: "WAX_SECRET"}, BasicEncoding: authcode.BasicRaw, PKCE: true}
	p, err := cfg.Open(env(clk.Now))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	f := &fixture{emu: emu, p: p, clk: clk, base: srv.URL, verifier: oauth2.GenerateVerifier()}
	u, err := url.Parse(p.(providers.Authorizer).AuthCodeURL("s", f.verifier))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := u.Query().Get("code_challenge"), oauth2.S256ChallengeFromVerifier(f.verifier); got != want {
		t.Errorf("code_challenge = %q; want %q", got, want)
	}
	if got := u.Query().Get("code_challenge_method"); got != "S256" {
		t.Errorf("code_challenge_method = %q; want S256", got)
	}
	if got := p.(providers.Describer).Describe()["pkce"]; got != "S256" {
		t.Errorf(`Describe()["pkce"] = %q; want S256`, got)
	}

	code := f.authorize(t, "s").Get("code")
	_, err = p.(providers.Authorizer).Exchange(context.Background(), code, oauth2.GenerateVerifier())
	if providers.OAuthCode(err) != providers.CodeInvalidGrant {
		t.Fatalf("Exchange with another verifier = %v; want invalid_grant", err)
	}
	if _, err := p.(providers.Authorizer).Exchange(context.Background(), code, ""); err == nil {
		t.Fatal("Exchange without a verifier succeeded; want an error")
	}
	tok, err := p.(providers.Authorizer).Exchange(context.Background(), code, f.verifier)
	if err != nil {
		t.Fatalf("Exchange with the verifier = %v", err)
	}
	if tok.AccessToken.IsZero() {
		t.Error("Exchange returned no access token")
	}
	if got := emu.Counts().PKCEFailures; got != 1 {
		t.Errorf("emulator PKCE failures = %d; want 1 (the wrong verifier; the empty one never left)", got)
	}
	for _, s := range []string{f.verifier, code} {
		if strings.Contains(fmt.Sprint(err), s) {
			t.Errorf("an error repeats a verifier or code")
		}
	}

	// WAX does not support PKCE: asking for it is a configuration error.
	wax := authcode.WAXConfig{Config: authcode.Config{ClientID: clientID, ClientSecret: secret.Ref{Env: "WAX_SECRET"}, PKCE: true}}
	if err := wax.Validate(); err == nil || !strings.Contains(err.Error(), "pkce: wax does not support PKCE") {
		t.Errorf("WAXConfig{PKCE: true}.Validate() = %v; want a pkce error", err)
	}
}

// TestDefaultTokenType: an answer without token_type is refused unless the
// connection sets default_token_type, which then stands in for it.
func TestDefaultTokenType(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"at-123456","expires_in":600,"refresh_token":"rt-123456"}`))
	}))
	defer srv.Close()
	for _, tc := range []struct{ defaultType, want string }{{"", ""}, {"Bearer", "Bearer"}} {
		t.Run("default "+tc.defaultType, func(t *testing.T) {
			cfg := &authcode.Config{AuthorizeURL: srv.URL + "/auth", TokenURL: srv.URL + "/token", ClientID: clientID,
				ClientSecret: secret.Ref{Env: "WAX_SECRET"}, DefaultTokenType: tc.defaultType}
			p, err := cfg.Open(env(time.Now))
			if err != nil {
				t.Fatalf("Open() = %v", err)
			}
			tok, err := p.(providers.Authorizer).Exchange(context.Background(), "the-code", "")
			if tc.want == "" {
				if !errors.Is(err, providers.ErrInvalidResponse) || !strings.Contains(err.Error(), "no token_type") {
					t.Fatalf("Exchange() error = %v; want ErrInvalidResponse for the missing token_type", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Exchange() = %v", err)
			}
			if tok.TokenType != tc.want {
				t.Errorf("Exchange().TokenType = %q; want %q", tok.TokenType, tc.want)
			}
		})
	}
}
