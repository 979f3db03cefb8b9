package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// fakeConfig is a provider config with the usual kinds of settings.
type fakeConfig struct {
	TokenURL string             `yaml:"token_url"`
	Secret   secret.Ref         `yaml:"client_secret"`
	Timeout  providers.Duration `yaml:"timeout"`
	Scopes   []string           `yaml:"scopes"`
	Params   map[string]string  `yaml:"endpoint_params"`
}

func (c *fakeConfig) Validate() error {
	if c.TokenURL == "" {
		return errors.Join(errors.New("token_url: required"))
	}
	return nil
}

func (c *fakeConfig) Open(providers.Env) (providers.Provider, error) { return nil, nil }

func registry() *providers.Registry {
	r := providers.NewRegistry()
	r.MustRegister("fake", func() providers.Config { return new(fakeConfig) })
	return r
}

func TestParseValid(t *testing.T) {
	cfg, err := Parse([]byte(`
listen:
  grpc: 127.0.0.1:7000
tls:
  cert_file: /etc/tb/tls.crt
  key_file: /etc/tb/tls.key
  client_ca_file: /etc/tb/ca.crt
auth:
  callers:
    - name: pay-svc
      uri_sans: ["spiffe://example.org/ns/pay/sa/api"]
      policy: {connections: ["pay*"], rpcs: [service]}
encryption:
  keys:
    - {id: k1, secret: {file: /etc/tb/keys/k1}}
    - {id: k2, secret: {env: TB_KEY_2}}
  primary: k2
cache:
  type: redis
  redis:
    addrs: [127.0.0.1:6379]
    password: {env: REDIS_PASSWORD}
connections:
  - name: payments
    type: fake
    skew: 30s
    token_url: https://pay.example/o/token/
    client_secret: {file: /run/secrets/pay}
    timeout: 5s
    scopes: [read, write]
    endpoint_params: {audience: api}
`), registry())
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	if got, want := cfg.Listen.GRPC, "127.0.0.1:7000"; got != want {
		t.Errorf("Listen.GRPC = %q; want %q", got, want)
	}
	if got, want := cfg.Listen.Admin, DefaultAdminAddr; got != want {
		t.Errorf("Listen.Admin = %q; want default %q", got, want)
	}
	if got := cfg.Listen.GRPCStreamWorkers; got == nil || *got != DefaultGRPCStreamWorkers {
		t.Errorf("Listen.GRPCStreamWorkers = %v; want default %d", got, DefaultGRPCStreamWorkers)
	}
	if got, want := cfg.Cache.Redis.KeyPrefix, DefaultKeyPrefix; got != want {
		t.Errorf("KeyPrefix = %q; want %q", got, want)
	}
	if len(cfg.Encryption.Keys) != 2 || cfg.Encryption.Primary != "k2" || cfg.TLS.ClientCAFile != "/etc/tb/ca.crt" || len(cfg.Auth.Callers) != 1 {
		t.Errorf("security settings decoded wrongly: %d keys, primary %q, client CA %q, %d callers",
			len(cfg.Encryption.Keys), cfg.Encryption.Primary, cfg.TLS.ClientCAFile, len(cfg.Auth.Callers))
	}
	c := cfg.Connections[0]
	fc := c.Provider.(*fakeConfig)
	if c.Skew.Seconds() != 30 || fc.Timeout.Seconds() != 5 || fc.Secret.File != "/run/secrets/pay" ||
		len(fc.Scopes) != 2 || fc.Params["audience"] != "api" {
		t.Errorf("connection decoded wrongly: skew %v timeout %v scopes %v params %v", c.Skew, fc.Timeout, fc.Scopes, fc.Params)
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Parse([]byte(`
listen:
  grpc: nonsense
  colour: blue
cache:
  type: redis
connections:
  - name: a
    type: fake
    token_url: https://x/
    timeout: 5 seconds
  - name: a
    type: fake
    client_secret: {file: x, env: Y}
    tokne_url: typo
  - name: Bad Name
    type: nope
  - type: fake
    token_url: https://x/
    skew: -1s
`), registry())
	if err == nil {
		t.Fatal("Parse() error = nil; want problems")
	}
	msg := err.Error()
	for _, want := range []string{
		`listen.colour: unknown setting`,
		`listen.grpc: invalid address "nonsense"`,
		`cache.redis.addrs: required`,
		`encryption.keys: required with cache.type redis`,
		`connections[0].timeout: line 11: invalid duration "5 seconds"`,
		`connections[1].tokne_url: unknown setting`,
		`connections[1].name: "a" is already used by connections[0]`,
		`connections[1].token_url: required`,
		`connections[2].name: "Bad Name" must be`,
		`connections[2].type: unknown provider type "nope"`,
		`connections[3].name: required`,
		`connections[3].skew: must not be negative`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("Parse() error lacks %q; got:\n%s", want, msg)
		}
	}
}

func TestParseStreamWorkersOff(t *testing.T) {
	cfg, err := Parse([]byte("listen: {grpc_stream_workers: 0}\nconnections: [{name: a, type: fake, token_url: x}]"), registry())
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	if got := cfg.Listen.GRPCStreamWorkers; got == nil || *got != 0 {
		t.Errorf("Listen.GRPCStreamWorkers = %v; want 0 (explicitly off, not the default)", got)
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"not yaml", "a: [", "not valid YAML"},
		{"empty", "", "connections: at least one connection is required"},
		{"not a mapping", "connections: 3", "connections: must be a list"},
		{"bad cache type", "cache: {type: etcd}\nconnections: [{name: a, type: fake, token_url: x}]", `cache.type: must be memory or redis, got "etcd"`},
		{"plaintext redis", "cache: {type: redis, redis: {addrs: [a:1]}}\nconnections: [{name: a, type: fake, token_url: x}]", "encryption.keys: required"},
		{"bad auth", "auth: {callers: [{name: x, api_key_sha256: [nothex]}]}\nconnections: [{name: a, type: fake, token_url: x}]", "auth.callers[0].api_key_sha256[0]"},
		{"bad encryption key id", "encryption: {keys: [{id: 'a b', secret: {env: X}}]}\nconnections: [{name: a, type: fake, token_url: x}]", "encryption.keys[0].id"},
		{"sentinel and cluster", "cache: {type: redis, redis: {addrs: [a:1], master_name: m, cluster: true}}\nconnections: [{name: a, type: fake, token_url: x}]", "mutually exclusive"},
		{"negative stream workers", "listen: {grpc_stream_workers: -1}\nconnections: [{name: a, type: fake, token_url: x}]", "listen.grpc_stream_workers: must be between 0 and 4096, got -1"},
		{"too many stream workers", "listen: {grpc_stream_workers: 100000}\nconnections: [{name: a, type: fake, token_url: x}]", "listen.grpc_stream_workers: must be between 0 and 4096"},
		{"redis op timeout too short", "cache: {type: redis, redis: {addrs: [a:1], op_timeout: 1ms}}\nencryption: {insecure_plaintext: true}\nconnections: [{name: a, type: fake, token_url: x}]", "cache.redis.op_timeout: must be between 10ms and 10s, got 1ms"},
		{"redis op timeout too long", "cache: {type: redis, redis: {addrs: [a:1], op_timeout: 1m}}\nencryption: {insecure_plaintext: true}\nconnections: [{name: a, type: fake, token_url: x}]", "cache.redis.op_timeout: must be between 10ms and 10s, got 1m0s"},
		{"bad log level", "log: {level: loud}\nconnections: [{name: a, type: fake, token_url: x}]", "log.level"},
		{"set twice", "connections: [{name: a, name: b, type: fake, token_url: x}]", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), registry())
			if err == nil {
				t.Fatalf("Parse() error = nil; want one containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse() error = %q; want it to contain %q", err, tt.want)
			}
		})
	}
}
