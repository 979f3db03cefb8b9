package wx_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// TestImported: a connection without a key refreshes a pair the WX Network
// app issued, with rotation, until the gateway refuses the refresh token;
// it cannot get a first token and binds no account.
func TestImported(t *testing.T) {
	clk := newClock(start)
	emu := wxemu.New(wxemu.Options{ClientID: clientID, Rotation: true, ExpiresIn: wxemu.Relative, Now: clk.Now})
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	cfg := &wx.Config{TokenURL: srv.URL + wxemu.TokenPath, ClientID: clientID, Credentials: wx.CredentialsImported}
	p, err := cfg.Open(providers.Env{Name: "wx-app", Now: clk.Now})
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	if _, ok := p.(providers.AccountBound); ok {
		t.Error("an imported connection is AccountBound; it has no key to name a subject")
	}
	if got := p.(providers.Describer).Describe(); got["credentials"] != wx.CredentialsImported || got["address"] != "" {
		t.Errorf("Describe() = %v; want credentials imported and no address", got)
	}
	_, err = p.Token(context.Background(), providers.Request{})
	if !errors.Is(err, providers.ErrNeedsAuthorization) || !strings.Contains(err.Error(), "import a grant") {
		t.Errorf("Token() = %v; want ErrNeedsAuthorization saying to import a grant", err)
	}

	const addr = "3PImportedAccountAddress"
	app := emu.IssueAppTokens(addr, time.Hour)
	g := &providers.Grant{State: providers.GrantReady, RefreshToken: secret.New(app.RefreshToken)}
	ref := p.(providers.Refresher)
	for i := range 3 {
		clk.Advance(50 * time.Minute)
		tok, err := ref.Refresh(context.Background(), providers.Request{}, g)
		if err != nil {
			t.Fatalf("Refresh() #%d = %v", i+1, err)
		}
		if at := tok.AccessToken.Reveal(); !emu.Valid(at) || emu.AddressOf(at) != addr {
			t.Errorf("Refresh() #%d: the token is not a valid one for the imported address", i+1)
		}
		if want := clk.Now().Add(time.Hour); !tok.Expiry.Equal(want.Truncate(time.Second)) && !tok.Expiry.Equal(want) {
			t.Errorf("Refresh() #%d Expiry = %v; want about %v", i+1, tok.Expiry, want)
		}
		if tok.Grant == nil || tok.Grant.RefreshToken.IsZero() || tok.Grant.RefreshToken.Reveal() == g.RefreshToken.Reveal() {
			t.Fatalf("Refresh() #%d did not return the rotated refresh token", i+1)
		}
		if tok.Grant.RefreshExpiry.IsZero() {
			t.Errorf("Refresh() #%d Grant.RefreshExpiry is zero; want the refresh token's exp", i+1)
		}
		if tok.Grant.Subject != "" {
			t.Errorf("Refresh() #%d Grant.Subject = %q; want empty", i+1, tok.Grant.Subject)
		}
		old := g.RefreshToken
		g = tok.Grant
		if i == 0 {
			// The replaced refresh token is refused.
			_, err := ref.Refresh(context.Background(), providers.Request{}, &providers.Grant{RefreshToken: old})
			if providers.OAuthCode(err) != providers.CodeInvalidGrant {
				t.Errorf("Refresh() with the rotated-away token = %v; want invalid_grant", err)
			}
		}
	}
	emu.RevokeRefreshTokens()
	_, err = ref.Refresh(context.Background(), providers.Request{}, g)
	if providers.OAuthCode(err) != providers.CodeInvalidGrant {
		t.Fatalf("Refresh() after the gateway revoked the token = %v; want invalid_grant", err)
	}
	if strings.Contains(err.Error(), g.RefreshToken.Reveal()) {
		t.Error("the error quotes the refresh token")
	}
	if got := emu.Issued(wxemu.GrantPassword); got != 0 {
		t.Errorf("password grants issued = %d; want 0 (the connection has no key)", got)
	}
}
