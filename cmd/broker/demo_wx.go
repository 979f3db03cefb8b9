package main

import (
	"context"
	"crypto/rand"
	"time"

	"github.com/mr-tron/base58"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

// startDemoWX adds connection demo-wx: a WX gateway emulator with a
// throwaway account whose key exists only in this process. Only the
// account's address is logged.
func startDemoWX(_ context.Context, d *demo) error {
	const clientID = "wx.network"
	var sk wavescrypto.PrivateKey
	if _, err := rand.Read(sk[:]); err != nil {
		return err
	}
	address := wavescrypto.NewAddress(sk.Public(), wxemu.DefaultChain)
	encoded := base58.Encode(sk[:])
	clear(sk[:])

	base, err := d.serve(wxemu.New(wxemu.Options{ClientID: clientID, Rotation: true}))
	if err != nil {
		return err
	}
	d.add(config.Connection{Name: "demo-wx", Type: "wx", Provider: &wx.Config{
		TokenURL:   base + wxemu.TokenPath,
		ClientID:   clientID,
		ChainID:    string(rune(wxemu.DefaultChain)),
		PrivateKey: d.setSecret("TOKENBROKER_DEMO_WX_PRIVATE_KEY", encoded),
		Timeout:    providers.Duration{Duration: 5 * time.Second},
	}})
	d.log.Info("demo-wx account", "address", address.String())
	return nil
}
