package auth_test

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/internal/auth"
)

func keyHash(key string) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:])
}

const exampleYAML = `
allow_anonymous:
  enabled: true
  loopback_only: true
  policy:
    connections: ["demo-*"]
    rpcs: [operator]
callers:
  - name: payments
    uri_sans: ["spiffe://example.org/ns/pay/sa/api"]
    policy:
      connections: ["pay-*"]
      scopes: ["payments:read", "payments:write"]
      rpcs: [service, InvalidateToken]
  - name: ops
    api_key_sha256:
      - 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      - 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
    dns_sans: [ops.internal.example.org]
    policy:
      connections: ["*"]
      rpcs: [operator]
`

func TestConfigYAML(t *testing.T) {
	dec := yaml.NewDecoder(strings.NewReader(exampleYAML))
	dec.KnownFields(true)
	var cfg auth.Config
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("decode: %v", err)
	}
	want := auth.Config{
		AllowAnonymous: auth.AnonymousConfig{Enabled: true, LoopbackOnly: true,
			Policy: auth.Policy{Connections: []string{"demo-*"}, RPCs: []string{"operator"}}},
		Callers: []auth.CallerConfig{
			{Name: "payments", URISANs: []string{"spiffe://example.org/ns/pay/sa/api"}, Policy: auth.Policy{
				Connections: []string{"pay-*"}, Scopes: []string{"payments:read", "payments:write"}, RPCs: []string{"service", "InvalidateToken"}}},
			{Name: "ops", APIKeySHA256: []string{keyHash("test"), keyHash("test2")}, DNSSANs: []string{"ops.internal.example.org"},
				Policy: auth.Policy{Connections: []string{"*"}, RPCs: []string{"operator"}}},
		},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("decoded config (-want +got):\n%s", diff)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v; want nil", err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := keyHash("k1")
	tests := []struct {
		name string
		cfg  auth.Config
		want []string // every one must appear; none means valid
	}{
		{name: "empty refuses everyone", cfg: auth.Config{}},
		{name: "anonymous", cfg: auth.Config{AllowAnonymous: auth.AnonymousConfig{Enabled: true, Policy: auth.Policy{Connections: []string{"*"}}}}},
		{
			name: "every problem at once",
			cfg: auth.Config{
				AllowAnonymous: auth.AnonymousConfig{Enabled: true, Policy: auth.Policy{RPCs: []string{"Everything"}}},
				Callers: []auth.CallerConfig{
					{Name: "a", APIKeySHA256: []string{good, "abc"}, Policy: auth.Policy{Connections: []string{"pay-["}}},
					{Name: "b", APIKeySHA256: []string{strings.ToUpper(good)}, URISANs: []string{"not a uri"}, DNSSANs: []string{"x y"}},
					{Name: "a", URISANs: []string{"spiffe://example.org/svc/a"}, Policy: auth.Policy{Scopes: []string{""}, RPCs: []string{"getToken"}}},
					{Name: "anonymous"},
					{URISANs: []string{"spiffe://example.org/svc/a"}, DNSSANs: []string{"svc.example.org", "SVC.example.org"}},
					{Name: "bad name!", DNSSANs: []string{"c.example.org"}},
				},
			},
			want: []string{
				`allow_anonymous.policy.rpcs[0]: unknown RPC "Everything" (known: service, operator, GetToken,`,
				`allow_anonymous.policy.connections: required when enabled`,
				`callers[0].api_key_sha256[1]: must be 64 hex characters`,
				`callers[0].policy.connections[0]: "pay-[" is not a valid glob`,
				`callers[1].api_key_sha256[0]: same key as callers[0].api_key_sha256[0]`,
				`callers[1].uri_sans[0]: "not a uri" must be an absolute URI`,
				`callers[1].dns_sans[0]: "x y" must be a DNS name`,
				`callers[2].name: "a" is also the name of callers[0]`,
				`callers[2].policy.scopes[0]: must not be empty`,
				`callers[2].policy.rpcs[0]: unknown RPC "getToken"`,
				`callers[3].name: "anonymous" is reserved`,
				`callers[3]: no credential: set api_key_sha256, uri_sans or dns_sans`,
				`callers[4].name: required`,
				`callers[4].uri_sans[0]: "spiffe://example.org/svc/a" is also callers[2].uri_sans[0]`,
				`callers[4].dns_sans[1]: "SVC.example.org" is also callers[4].dns_sans[0]`,
				`callers[5].name: "bad name!" must be`,
			},
		},
		{
			name: "disabled anonymous policy is not checked",
			cfg:  auth.Config{AllowAnonymous: auth.AnonymousConfig{Policy: auth.Policy{RPCs: []string{"nope"}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v; want nil", err)
				}
				if _, err := auth.New(tt.cfg); err != nil {
					t.Errorf("New() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want %d problems", len(tt.want))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() does not report %q; got:\n%v", w, err)
				}
			}
			if got := strings.Count(err.Error(), "\n") + 1; got != len(tt.want) {
				t.Errorf("Validate() reported %d problems; want %d:\n%v", got, len(tt.want), err)
			}
			if _, err := auth.New(tt.cfg); err == nil {
				t.Errorf("New() = nil error; want the validation errors")
			}
		})
	}
}
