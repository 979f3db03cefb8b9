package cluster

import (
	"fmt"
	"maps"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// A Connection is one entry of the brokers' connections list.
type Connection struct {
	// Name and Type are the connection's name and provider type.
	Name, Type string
	// Skew is the connection's skew (0: the broker's default).
	Skew time.Duration
	// Settings are the provider's own keys (token_url, client_id, …),
	// written as they are. Secrets go in as {env: NAME} references to
	// Secrets.
	Settings map[string]any
	// Secrets are environment variables (name → value) every broker
	// process gets, for the {env: NAME} references in Settings.
	Secrets map[string]string
}

// ClientCredentials is a client_credentials connection to the token
// endpoint tokenURL (for ccemu: server URL + ccemu.TokenPath), with the
// secret handed to the brokers through the environment.
func ClientCredentials(name, tokenURL, clientID, clientSecret string) Connection {
	env := secretEnv(name, "CLIENT_SECRET")
	return Connection{
		Name: name, Type: "client_credentials",
		Settings: map[string]any{
			"token_url":     tokenURL,
			"client_id":     clientID,
			"client_secret": map[string]string{"env": env},
			"timeout":       "10s",
		},
		Secrets: map[string]string{env: clientSecret},
	}
}

// WX is a wx connection to the token endpoint tokenURL (for wxemu: server
// URL + wxemu.TokenPath) for the account of seed.
func WX(name, tokenURL, clientID, seed string) Connection {
	env := secretEnv(name, "SEED")
	return Connection{
		Name: name, Type: "wx",
		Settings: map[string]any{
			"token_url": tokenURL,
			"client_id": clientID,
			"seed":      map[string]string{"env": env},
			"timeout":   "10s",
		},
		Secrets: map[string]string{env: seed},
	}
}

// secretEnv is the environment variable carrying a connection's secret.
func secretEnv(conn, what string) string {
	var b strings.Builder
	b.WriteString("TOKENBROKER_TEST_")
	for _, r := range strings.ToUpper(conn) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteString("_" + what)
	return b.String()
}

// Set returns a copy of c with the provider setting key set to v.
func (c Connection) Set(key string, v any) Connection {
	c.Settings = maps.Clone(c.Settings)
	c.Settings[key] = v
	return c
}

// redisConfig is where the brokers find Redis.
type redisConfig struct {
	Addrs       []string `yaml:"addrs"`
	MasterName  string   `yaml:"master_name,omitempty"`
	Cluster     bool     `yaml:"cluster,omitempty"`
	KeyPrefix   string   `yaml:"key_prefix"`
	DialTimeout string   `yaml:"dial_timeout,omitempty"`
	OpTimeout   string   `yaml:"op_timeout,omitempty"`
}

// configYAML renders the brokers' configuration file. keyEnv, when not
// empty, names the environment variable holding the encryption key.
func configYAML(o *Options, redis redisConfig, keyEnv string) ([]byte, error) {
	brokerCfg := map[string]any{}
	for k, d := range map[string]time.Duration{
		"lease_ttl": o.LeaseTTL, "l1_max_age": o.L1MaxAge, "fetch_timeout": o.FetchTimeout,
	} {
		if d != 0 {
			brokerCfg[k] = d.String()
		}
	}
	if o.DisableRefreshAhead {
		brokerCfg["refresh_ahead"] = false
	}
	var conns []any
	for _, c := range o.Connections {
		m := map[string]any{"name": c.Name, "type": c.Type}
		if c.Skew != 0 {
			m["skew"] = c.Skew.String()
		}
		for k, v := range c.Settings {
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("connection %s: setting %q clashes with a common key", c.Name, k)
			}
			m[k] = v
		}
		conns = append(conns, m)
	}
	if o.ConnectionsYAML != "" {
		var extra []any
		if err := yaml.Unmarshal([]byte(o.ConnectionsYAML), &extra); err != nil {
			return nil, fmt.Errorf("ConnectionsYAML: want a YAML list of connections: %w", err)
		}
		conns = append(conns, extra...)
	}
	level := o.LogLevel
	if level == "" {
		level = "info"
	}
	doc := map[string]any{
		"listen":      map[string]string{"grpc": "127.0.0.1:0", "admin": "127.0.0.1:0", "callback": "127.0.0.1:0"},
		"log":         map[string]string{"level": level},
		"cache":       map[string]any{"type": "redis", "redis": redis},
		"connections": conns,
	}
	if len(brokerCfg) > 0 {
		doc["broker"] = brokerCfg
	}
	if keyEnv != "" {
		doc["encryption"] = map[string]any{
			"keys": []any{map[string]any{"id": EncryptionKeyID, "secret": map[string]string{"env": keyEnv}}},
		}
	} else {
		doc["encryption"] = map[string]any{"insecure_plaintext": true}
	}
	// The test is the only caller, over loopback.
	doc["auth"] = map[string]any{"allow_anonymous": map[string]any{
		"enabled": true, "loopback_only": true, "policy": map[string]any{"connections": []string{"*"}},
	}}
	return yaml.Marshal(doc)
}
