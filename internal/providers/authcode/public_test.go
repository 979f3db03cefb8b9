package authcode_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
)

// TestPublicClient: with client_authentication: none the provider sends
// client_id in the body and no Authorization header, with PKCE, for the
// exchange, every refresh and the revocation; an emulator that takes only
// such a client issues, refreshes and revokes its grant.
func TestPublicClient(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	emu := waxemu.New(waxemu.Options{ClientID: clientID, Now: clk.Now, RedirectURL: "https://app.example/cb", PublicClient: true})
	emu.SetRotate(true)
	var sawAuthorization bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			sawAuthorization = true
		}
		emu.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cfg := authcode.Config{AuthorizeURL: srv.URL + waxemu.AuthorizePath, TokenURL: srv.URL + waxemu.TokenPath,
		RevocationURL: srv.URL + waxemu.RevokePath, ClientID: clientID, ClientAuthentication: authcode.ClientAuthNone, PKCE: true,
		ExtraAuthorizeParams: map[string]string{"duration": "permanent"}}
	p, err := cfg.Open(env(clk.Now))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	if got := p.(providers.Describer).Describe()["client_authentication"]; got != "none" {
		t.Errorf(`Describe()["client_authentication"] = %q; want "none"`, got)
	}
	f := &fixture{emu: emu, p: p, clk: clk, base: srv.URL, verifier: oauth2.GenerateVerifier()}
	tok, err := p.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s").Get("code"), f.verifier)
	if err != nil {
		t.Fatalf("Exchange() = %v", err)
	}
	if !tok.Grant.DeviceSecret.IsZero() {
		t.Error("a public client's grant has a device secret")
	}
	g := tok.Grant
	for i := range 2 {
		clk.t = clk.t.Add(waxemu.TokenLifetime)
		rt, err := p.(providers.Refresher).Refresh(context.Background(), providers.Request{}, g)
		if err != nil {
			t.Fatalf("Refresh() #%d = %v", i+1, err)
		}
		if !emu.Valid(rt.AccessToken.Reveal()) {
			t.Errorf("Refresh() #%d returned a token the emulator did not issue", i+1)
		}
		g.RefreshToken = rt.Grant.RefreshToken
	}
	if err := p.(providers.Revoker).Revoke(context.Background(), g); err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	if !emu.Revoked(g.RefreshToken.Reveal()) {
		t.Error("emulator: refresh token not revoked")
	}
	if sawAuthorization {
		t.Error("a public client sent an Authorization header")
	}
	if c := emu.Counts(); c.InvalidClient != 0 || c.PKCEFailures != 0 || c.Refreshes != 2 || c.Revocations != 1 {
		t.Errorf("emulator counts = %+v; want 2 refreshes, 1 revocation, no client or PKCE failures", c)
	}

	// The emulator refuses a confidential client's Basic header in public mode.
	secretCfg := cfg
	secretCfg.ClientAuthentication, secretCfg.DeviceSecret = "", true
	sp, err := secretCfg.Open(env(clk.Now))
	if err != nil {
		t.Fatalf("Open(device secret) = %v", err)
	}
	f.p = sp
	_, err = sp.(providers.Authorizer).Exchange(context.Background(), f.authorize(t, "s2").Get("code"), f.verifier)
	if providers.OAuthCode(err) != providers.CodeInvalidClient {
		t.Errorf("Exchange() with Basic against a public-only server = %v; want invalid_client", err)
	}
	if strings.Contains(err.Error(), f.verifier) {
		t.Error("the error quotes the PKCE verifier")
	}
}
