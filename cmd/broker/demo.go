package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/clientcredentials"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// demo runs in-process upstream emulators on loopback and the connections
// that use them, so a newcomer gets tokens without any account. Secrets are
// random per start and live only in this process.
type demo struct {
	log     *slog.Logger
	conns   []config.Connection
	secrets map[string]string
	servers []*http.Server
	// callbackHooks learn the callback's base URL once the broker listens.
	callbackHooks []func(baseURL string)
}

// demoStarters add one demo connection each.
var demoStarters = []func(ctx context.Context, d *demo) error{
	startDemoCC,
	startDemoWX,
	startDemoWAX,
}

func startDemo(ctx context.Context, log *slog.Logger) (*demo, error) {
	d := &demo{log: log, secrets: map[string]string{}}
	for _, start := range demoStarters {
		if err := start(ctx, d); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// serve runs h on a fresh 127.0.0.1 port and returns its base URL.
func (d *demo) serve(h http.Handler) (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	d.servers = append(d.servers, s)
	go func() { _ = s.Serve(lis) }()
	return "http://" + lis.Addr().String(), nil
}

// setSecret makes value readable as environment variable name by this
// process's demo connections only.
func (d *demo) setSecret(name, value string) secret.Ref {
	d.secrets[name] = value
	return secret.Ref{Env: name}
}

func (d *demo) add(c config.Connection) { d.conns = append(d.conns, c) }

// onCallback calls f with the callback listener's base URL
// ("http://127.0.0.1:8081") once the broker listens there.
func (d *demo) onCallback(f func(baseURL string)) { d.callbackHooks = append(d.callbackHooks, f) }

// setCallbackAddr tells the demo where the callback listener listens. A
// wildcard address is reached on loopback.
func (d *demo) setCallbackAddr(addr net.Addr) {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	u := "http://" + net.JoinHostPort(host, port)
	for _, f := range d.callbackHooks {
		f(u)
	}
}

// randomSecret returns a fresh random secret of n bytes, base64url.
func randomSecret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// merge adds the demo connections to cfg (nil: a default config), binding
// the listeners to loopback unless the file says otherwise.
func (d *demo) merge(cfg *config.Config) *config.Config {
	if cfg == nil {
		cfg = &config.Config{Listen: config.Listen{GRPC: "127.0.0.1:9090", Admin: "127.0.0.1:9091", Callback: "127.0.0.1:8081"}}
	}
	if cfg.Listen.Callback == "" {
		// demo-wax's redirect: on loopback, as the emulator that sends it.
		cfg.Listen.Callback = "127.0.0.1:8081"
	}
	cfg.Connections = append(cfg.Connections, d.conns...)
	if !cfg.Auth.AllowAnonymous.Enabled && len(cfg.Auth.Callers) == 0 {
		// The demo has no credentials to hand out: it trusts loopback only.
		cfg.Auth.AllowAnonymous = auth.AnonymousConfig{Enabled: true, LoopbackOnly: true,
			Policy: auth.Policy{Connections: []string{"*"}, RPCs: []string{auth.RoleOperator}}}
	}
	cfg.ApplyDefaults()
	return cfg
}

// loader reads the demo's secrets first, then the real environment.
func (d *demo) loader() secret.Loader {
	return secret.Loader{LookupEnv: func(k string) (string, bool) {
		if v, ok := d.secrets[k]; ok {
			return v, true
		}
		return os.LookupEnv(k)
	}}
}

func (d *demo) Close() {
	for _, s := range d.servers {
		_ = s.Close()
	}
}

func startDemoCC(_ context.Context, d *demo) error {
	const id = "demo-client"
	sec := randomSecret(24)
	base, err := d.serve(ccemu.New(ccemu.Options{ClientID: id, ClientSecret: sec}))
	if err != nil {
		return err
	}
	d.add(config.Connection{Name: "demo-cc", Type: "client_credentials", Provider: &clientcredentials.Config{
		TokenURL:     base + "/o/token/",
		ClientID:     id,
		ClientSecret: d.setSecret("TOKENBROKER_DEMO_CC_SECRET", sec),
		Scopes:       []string{"read"},
		Timeout:      providers.Duration{Duration: 5 * time.Second},
	}})
	return nil
}
