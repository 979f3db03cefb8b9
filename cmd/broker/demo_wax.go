package main

import (
	"context"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// startDemoWAX adds connection demo-wax: a WAX All Access emulator that
// approves every authorization at once and redirects to the broker's own
// callback, so that `curl -L` on the URL from StartAuthorization completes
// the flow. The client secret has the '!' and '^' real WAX secrets have, so
// the demo exercises raw HTTP Basic.
func startDemoWAX(_ context.Context, d *demo) error {
	const clientID = "demo-wax-client"
	sec := "demo!" + randomSecret(18) + "^wax"
	emu := waxemu.New(waxemu.Options{ClientID: clientID, ClientSecret: sec})
	base, err := d.serve(emu)
	if err != nil {
		return err
	}
	// The callback's address is known only once the broker listens.
	d.onCallback(func(baseURL string) { emu.SetRedirectURL(baseURL + server.CallbackPath) })
	d.add(config.Connection{Name: "demo-wax", Type: "wax", Provider: &authcode.WAXConfig{Config: authcode.Config{
		AuthorizeURL:  base + waxemu.AuthorizePath,
		TokenURL:      base + waxemu.TokenPath,
		RevocationURL: base + waxemu.RevokePath,
		ClientID:      clientID,
		ClientSecret:  d.setSecret("TOKENBROKER_DEMO_WAX_SECRET", sec),
		Timeout:       providers.Duration{Duration: 5 * time.Second},
	}}})
	d.log.Info("demo-wax needs authorization: call StartAuthorization for it and open the URL (curl -L works)")
	return nil
}
