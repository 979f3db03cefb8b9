package wx_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mr-tron/base58"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

// TestLogsHoldNoSecrets runs every flow — password grant, refreshes with
// rotation, invalid_grant and the fallback, an expired refresh token,
// upstream errors and impossible expiries — with the broker and the provider
// logging JSON at debug level, and looks for every seed, key, signature and
// token in the output.
func TestLogsHoldNoSecrets(t *testing.T) {
	log, out := logtest.New()
	bf := newBrokered(t, wxemu.Options{Rotation: true}, log)
	ctx := context.Background()
	get := func() { _, _ = bf.b.GetToken(ctx, broker.Request{Connection: connName}) }

	get()
	for range 3 {
		bf.clk.Advance(time.Hour)
		get()
	}
	bf.emu.RevokeRefreshTokens()
	bf.clk.Advance(time.Hour)
	get()
	bf.emu.SetRefreshLifetime(90 * time.Minute)
	bf.emu.RevokeRefreshTokens()
	bf.clk.Advance(time.Hour)
	get()
	bf.clk.Advance(2 * time.Hour)
	get()
	for _, fail := range []wxemu.Failure{wxemu.InvalidClient, wxemu.ServerError} {
		bf.emu.SetFailure(fail)
		bf.clk.Advance(time.Hour)
		get()
	}
	bf.emu.SetFailure(wxemu.None)
	for _, off := range []time.Duration{time.Hour, -2 * time.Hour} {
		bf.emu.SetExpiryOffsets(off, off)
		bf.clk.Advance(time.Hour)
		get()
	}
	bf.emu.SetExpiryOffsets(0, 0)
	bf.clk.Advance(time.Hour)
	get()
	if _, err := bf.b.Invalidate(ctx, connName, "", nil, ""); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	_ = bf.b.Connections(ctx)

	logs := out.String()
	// The flows ran and were logged.
	for _, want := range []string{"token fetched", "token fetch failed", "refresh token rejected", "wx: signed password grant", "wx: refresh token grant"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q: the flows did not run as intended", want)
		}
	}
	if bf.emu.Count(wxemu.GrantRefreshToken) == 0 || bf.emu.Count(wxemu.GrantPassword) < 3 {
		t.Errorf("the flows did not exercise both grants: counts %+v", bf.counts())
	}

	secrets := bf.wire.secrets()
	if len(secrets) < 20 {
		t.Fatalf("only %d secrets recorded on the wire", len(secrets))
	}
	sk := wavescrypto.PrivateKeyFromSeed(testSeed, 0)
	check := logtest.Secrets{
		"private key (base58)": base58.Encode(sk[:]),
		"private key (hex)":    hex.EncodeToString(sk[:]),
		"seed phrase":          testSeed,
	}
	for i, s := range secrets {
		check[fmt.Sprintf("wire secret #%d (password, signature, token or JWT part)", i)] = s
	}
	logtest.AssertNoSecrets(t, logs, check)
}
