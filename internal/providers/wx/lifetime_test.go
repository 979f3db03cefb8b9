package wx_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
)

// TestDefaultLifetimeSurvivesClockSkew: with the gateway's clock 5 s behind
// the broker's, the default lifetime (a week less a margin) is accepted,
// while an explicit 168h (still allowed) is refused as the real gateway
// does (issue 15, finding 7).
func TestDefaultLifetimeSurvivesClockSkew(t *testing.T) {
	if want := 7*24*time.Hour - 5*time.Minute; wx.DefaultTokenLifetime != want {
		t.Errorf("DefaultTokenLifetime = %v; want %v", wx.DefaultTokenLifetime, want)
	}
	for _, tc := range []struct {
		name     string
		lifetime time.Duration
		wantErr  error
	}{
		{"default", 0, nil},
		{"explicit 168h", 168 * time.Hour, providers.ErrRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{})
			f.env.Now = func() time.Time { return f.clk.Now().Add(5 * time.Second) } // the broker's clock is ahead
			f.cfg.TokenLifetime = providers.Duration{Duration: tc.lifetime}
			if err := f.cfg.Validate(); err != nil {
				t.Fatalf("Validate() = %v; want %v accepted", err, tc.lifetime)
			}
			tok, err := f.open(t).(providers.Provider).Token(context.Background(), providers.Request{})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Token() error = %v; want %v", err, tc.wantErr)
			}
			if err == nil {
				want := f.env.Now().Add(wx.DefaultTokenLifetime).Truncate(time.Second)
				if d := tok.Expiry.Sub(want); d < -time.Second || d > time.Second {
					t.Errorf("Token().Expiry = %v; want about %v (now + the default lifetime)", tok.Expiry.UTC(), want.UTC())
				}
			}
		})
	}
}
