package authcode_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// TestRevoke: Revoke sends the refresh token to the revocation endpoint,
// authenticated as the token endpoint is (client secret or the grant's
// device secret), in WAX's form for wax and RFC 7009's for the generic
// provider; the emulator records it, and the grant and its access token
// stop working.
func TestRevoke(t *testing.T) {
	tests := []struct {
		name string
		emu  waxemu.Options
		cfg  authcode.WAXConfig
		// generic opens cfg.Config as a generic authorization_code
		// connection (RFC 7009 form, PKCE) rather than as wax.
		generic bool
	}{
		{name: "wax client secret", emu: waxemu.Options{ClientSecret: trickySecret},
			cfg: authcode.WAXConfig{Config: authcode.Config{ClientSecret: secret.Ref{Env: "WAX_SECRET"}}}},
		{name: "wax device secret", emu: waxemu.Options{},
			cfg: authcode.WAXConfig{Config: authcode.Config{DeviceSecret: true}}},
		{name: "generic RFC 7009", emu: waxemu.Options{ClientSecret: trickySecret, PKCE: true}, generic: true,
			cfg: authcode.WAXConfig{Config: authcode.Config{ClientSecret: secret.Ref{Env: "WAX_SECRET"}, BasicEncoding: authcode.BasicRaw, PKCE: true,
				ExtraAuthorizeParams: map[string]string{"duration": "permanent"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRevokeFixture(t, tt.emu, tt.cfg, tt.generic)
			tok, err := f.p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
			if err != nil {
				t.Fatalf("Exchange() = %v", err)
			}
			rt := tok.Grant.RefreshToken.Reveal()
			if err := f.p.(providers.Revoker).Revoke(context.Background(), tok.Grant); err != nil {
				t.Fatalf("Revoke() = %v", err)
			}
			if !f.emu.Revoked(rt) {
				t.Errorf("emulator: refresh token not revoked")
			}
			if f.emu.Valid(tok.AccessToken.Reveal()) {
				t.Errorf("emulator: the grant's access token is still valid after revocation")
			}
			if c := f.emu.Counts(); c.Revocations != 1 || c.RevokeRequests != 1 || c.InvalidClient != 0 {
				t.Errorf("emulator counts = %+v; want 1 revocation from 1 request, no client failures", c)
			}
			_, err = f.p.(providers.Refresher).Refresh(context.Background(), providers.Request{}, tok.Grant)
			if providers.OAuthCode(err) != providers.CodeInvalidGrant {
				t.Errorf("Refresh() after Revoke() = %v; want invalid_grant", err)
			}
			// A second revocation of a dead token is no error (RFC 7009 §2.2).
			if err := f.p.(providers.Revoker).Revoke(context.Background(), tok.Grant); err != nil {
				t.Errorf("second Revoke() = %v; want nil", err)
			}
			// Nothing to revoke without a refresh token: nothing is sent.
			if err := f.p.(providers.Revoker).Revoke(context.Background(), &providers.Grant{}); err != nil {
				t.Errorf("Revoke(no refresh token) = %v; want nil", err)
			}
			if got := f.emu.Counts().RevokeRequests; got != 2 {
				t.Errorf("emulator revoke requests = %d; want 2", got)
			}
		})
	}
}

func newRevokeFixture(t *testing.T, emuOpts waxemu.Options, cfg authcode.WAXConfig, generic bool) *fixture {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	emuOpts.ClientID, emuOpts.Now, emuOpts.RedirectURL = clientID, clk.Now, "https://app.example/cb"
	emu := waxemu.New(emuOpts)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	cfg.ClientID = clientID
	cfg.AuthorizeURL, cfg.TokenURL, cfg.RevocationURL = srv.URL+waxemu.AuthorizePath, srv.URL+waxemu.TokenPath, srv.URL+waxemu.RevokePath
	var c providers.Config = &cfg
	if generic {
		c = &cfg.Config
	}
	p, err := c.Open(env(clk.Now))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	f := &fixture{emu: emu, p: p, clk: clk, base: srv.URL}
	if cfg.PKCE {
		f.verifier = oauth2.GenerateVerifier()
	}
	return f
}

// TestRevokeEndpoints: without a revocation_url Revoke is not supported; wax
// defaults it to the environment's endpoint only while token_url is its
// default too, so grants from an emulator or proxy never go to the real WAX.
func TestRevokeEndpoints(t *testing.T) {
	ref := secret.Ref{Env: "WAX_SECRET"}
	generic := &authcode.Config{AuthorizeURL: "https://as.example/a", TokenURL: "https://as.example/t", ClientID: clientID, ClientSecret: ref}
	p, err := generic.Open(env(time.Now))
	if err != nil {
		t.Fatal(err)
	}
	err = p.(providers.Revoker).Revoke(context.Background(), &providers.Grant{RefreshToken: secret.New("rt")})
	if !errors.Is(err, providers.ErrNotSupported) || !strings.Contains(err.Error(), "revocation_url") {
		t.Errorf("Revoke() without revocation_url = %v; want ErrNotSupported naming revocation_url", err)
	}
	tests := []struct {
		name string
		cfg  authcode.WAXConfig
		want string
	}{
		{"production", authcode.WAXConfig{}, authcode.WAXProductionRevocationURL},
		{"sandbox", authcode.WAXConfig{Environment: authcode.WAXSandbox}, authcode.WAXSandboxRevocationURL},
		{"token_url elsewhere", authcode.WAXConfig{Config: authcode.Config{TokenURL: "http://127.0.0.1:9/v1/access_token"}}, ""},
		{"set", authcode.WAXConfig{Config: authcode.Config{TokenURL: "http://127.0.0.1:9/t", RevocationURL: "http://127.0.0.1:9/r"}}, "http://127.0.0.1:9/r"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.ClientID, tt.cfg.ClientSecret = clientID, ref
			p, err := tt.cfg.Open(env(time.Now))
			if err != nil {
				t.Fatal(err)
			}
			if got := p.(providers.Describer).Describe()["revocation_url"]; got != tt.want {
				t.Errorf(`Describe()["revocation_url"] = %q; want %q`, got, tt.want)
			}
		})
	}
}

// TestRefreshExpiry: refresh_token_expires_in becomes Grant.RefreshExpiry,
// at the exchange and again on each refresh that restarts it (with no new
// refresh token: the stored one's new expiry).
func TestRefreshExpiry(t *testing.T) {
	f := newFixture(t, waxemu.Options{ClientSecret: trickySecret, RefreshTokenLifetime: time.Minute},
		authcode.WAXConfig{Config: authcode.Config{ClientSecret: secret.Ref{Env: "WAX_SECRET"}}})
	tok, err := f.p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if want := f.clk.Now().Add(time.Minute); !tok.Grant.RefreshExpiry.Equal(want) {
		t.Errorf("Exchange().Grant.RefreshExpiry = %v; want %v", tok.Grant.RefreshExpiry, want)
	}
	f.clk.t = f.clk.t.Add(50 * time.Second)
	rt, err := f.p.(providers.Refresher).Refresh(context.Background(), providers.Request{}, tok.Grant)
	if err != nil {
		t.Fatalf("Refresh() = %v", err)
	}
	if !rt.Grant.RefreshToken.IsZero() {
		t.Errorf("Refresh() rotated without rotation")
	}
	if want := f.clk.Now().Add(time.Minute); !rt.Grant.RefreshExpiry.Equal(want) {
		t.Errorf("Refresh().Grant.RefreshExpiry = %v; want %v", rt.Grant.RefreshExpiry, want)
	}
	f.clk.t = f.clk.t.Add(time.Minute)
	_, err = f.p.(providers.Refresher).Refresh(context.Background(), providers.Request{}, tok.Grant)
	if providers.OAuthCode(err) != providers.CodeInvalidGrant {
		t.Errorf("Refresh() after the refresh token's lifetime = %v; want invalid_grant", err)
	}
	f.emu.SetRefreshTokenLifetime(0)
	tok, err = f.p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s2").Get("code"), f.verifier)
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if !tok.Grant.RefreshExpiry.IsZero() {
		t.Errorf("Exchange().Grant.RefreshExpiry = %v without refresh_token_expires_in; want zero", tok.Grant.RefreshExpiry)
	}
}
