package config_test

import (
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/providers/builtin"
)

// FuzzParse runs Parse, with every built-in provider type registered, on
// arbitrary bytes. Parse reads no files and dials nothing, so all it may do
// is accept or refuse: it must not panic, must answer quickly (YAML alias
// bombs included), and a configuration it accepts has valid connection
// names and opened provider settings. The seed corpus (testdata/fuzz/FuzzParse)
// holds the README's examples and one file per section.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"connections: [{name: a, type: client_credentials, token_url: 'https://x.example/t', client_id: c, client_secret: {env: S}}]",
		"connections: [{name: w, type: wx, token_url: 'https://x.example/t', client_id: wx.network, seed: {file: /s}}]",
		"connections: [{name: x, type: wax, client_id: c, device_secret: true}]",
		"a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\nconnections: *c",
		"connections: [{name: A B, type: nope}]",
		"cache: {type: redis, redis: {addrs: ['a:1']}}\nencryption: {insecure_plaintext: true}\nconnections: []",
		"{",
	} {
		f.Add([]byte(s))
	}
	reg := builtin.Registry()
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		c, err := config.Parse(data, reg)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Parse() took %v on %d bytes", d, len(data))
		}
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse() = %v, %v; want exactly one of a config and an error", c, err)
		}
		if err != nil {
			return
		}
		if len(c.Connections) == 0 {
			t.Fatal("Parse() accepted a configuration without connections")
		}
		for i, conn := range c.Connections {
			if !config.NamePattern.MatchString(conn.Name) || conn.Provider == nil {
				t.Fatalf("Parse() accepted connections[%d]: name %q, provider %v", i, conn.Name, conn.Provider)
			}
		}
	})
}
