// Package builtin registers the providers that ship with the broker. It is
// the only package that imports them all.
package builtin

import (
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/providers/clientcredentials"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
)

// Registry returns a registry of every built-in provider type.
func Registry() *providers.Registry {
	r := providers.NewRegistry()
	r.MustRegister("authorization_code", func() providers.Config { return new(authcode.Config) })
	r.MustRegister("wax", func() providers.Config { return new(authcode.WAXConfig) })
	r.MustRegister("client_credentials", func() providers.Config { return new(clientcredentials.Config) })
	r.MustRegister("wx", func() providers.Config { return new(wx.Config) })
	return r
}
