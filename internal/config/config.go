// Package config loads the broker's YAML configuration.
//
// Decoding is strict: an unknown key is an error, and every problem in the
// file is reported at once, each prefixed with its path, such as
// `connections[2].token_url: required`. Secrets are never written in the
// file: settings such as client_secret name a file or an environment
// variable (secret.Ref) and are read when a provider is opened.
package config

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/cache/sealed"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/tlsutil"
	"github.com/tokenbroker/tokenbroker/internal/tracing"
)

// Defaults.
const (
	DefaultGRPCAddr  = ":9090"
	DefaultAdminAddr = ":9091"
	// DefaultCallbackAddr is where the OAuth callback listens when
	// listen.callback is unset and an authorization-code connection exists.
	DefaultCallbackAddr = ":8081"
	// CallbackOff, as listen.callback, turns the callback listener off.
	CallbackOff      = "off"
	DefaultSkew      = 60 * time.Second
	DefaultKeyPrefix = "tokenbroker:v1:"

	DefaultGRPCStreamWorkers = 64
	MaxGRPCStreamWorkers     = 4096

	// DefaultGCPercent is the broker's GOGC unless the environment sets
	// one: the live heap is a few MB, so 100 would collect very often.
	DefaultGCPercent = 400
)

// Config is the whole configuration file.
type Config struct {
	Listen Listen `yaml:"listen"`
	Log    Log    `yaml:"log"`
	// TLS serves the gRPC API over TLS (mTLS with client_ca_file), and the
	// admin port over TLS with the same certificate but no client
	// certificates (so probes work). Off when empty.
	TLS tlsutil.ServerConfig `yaml:"tls"`
	// Auth says who may call which RPC for which connection.
	Auth auth.Config `yaml:"auth"`
	// Encryption encrypts every stored token, grant and authorization
	// state (AES-256-GCM).
	Encryption Encryption `yaml:"encryption"`
	Cache      Cache      `yaml:"cache"`
	Broker     Broker     `yaml:"broker"`
	// Tracing exports OpenTelemetry spans over OTLP (off by default).
	Tracing tracing.Config `yaml:"tracing"`
	// Secrets sets how secret files are checked.
	Secrets     Secrets      `yaml:"secrets"`
	Connections []Connection `yaml:"connections"`
}

// Secrets sets how secret files are checked.
type Secrets struct {
	// StrictPermissions makes a secret file readable by others (or by a
	// group the broker does not need) an error at start and in
	// -check-config instead of a warning (CheckSecretPermissions).
	StrictPermissions bool `yaml:"strict_permissions"`
}

// Encryption configures encryption at rest.
type Encryption struct {
	sealed.Config `yaml:",inline"`
	// InsecurePlaintext allows the Redis mode without an encryption key.
	// The broker logs a warning at start.
	InsecurePlaintext bool `yaml:"insecure_plaintext"`
}

// Enabled reports whether keys are configured.
func (e Encryption) Enabled() bool { return len(e.Keys) > 0 }

// Broker tunes the token lifecycle shared by all connections.
type Broker struct {
	// FetchTimeout bounds one upstream fetch, retries included (default 60s).
	FetchTimeout providers.Duration `yaml:"fetch_timeout"`
	// LeaseTTL is the cross-replica lease a replica holds while it fetches
	// a token; renewed while the fetch runs (default 10s). A replica that
	// dies holding it delays others by at most this long.
	LeaseTTL providers.Duration `yaml:"lease_ttl"`
	// L1MaxAge bounds how long a replica serves its in-process copy without
	// asking the shared cache: the staleness after a lost invalidation
	// message (default 30s).
	L1MaxAge providers.Duration `yaml:"l1_max_age"`
	// RememberRejections is how long a terminal upstream rejection of a
	// (connection, scopes) pair is answered without asking the upstream
	// again (default 30s), so a looping caller cannot hammer it.
	RememberRejections providers.Duration `yaml:"remember_rejections"`
	// RefreshAhead refreshes used tokens in the background before they
	// reach their skew point (default true).
	RefreshAhead *bool `yaml:"refresh_ahead"`
}

// Listen holds the listen addresses.
type Listen struct {
	// GRPC is the gRPC API address (default ":9090").
	GRPC string `yaml:"grpc"`
	// Admin is the HTTP address for /healthz, /readyz and /metrics
	// (default ":9091"). Keep it inside the cluster.
	Admin string `yaml:"admin"`
	// Callback is the HTTP address serving only GET /oauth2/callback, the
	// redirect URI of authorization-code connections (wax,
	// authorization_code): the one port a browser must reach, published
	// through an Ingress without publishing metrics. Unset: ":8081" when
	// such a connection exists, else off. "off": off (complete
	// authorizations with CompleteAuthorization instead).
	Callback string `yaml:"callback"`
	// GRPCStreamWorkers is how many long-lived goroutines serve gRPC calls
	// (default 64; 0: a new goroutine per call, grpc-go's default). A call
	// that finds every worker busy still gets its own goroutine, so this is
	// not a concurrency limit: it saves growing a fresh goroutine's stack on
	// every call, which is a fifth of the CPU of a cached GetToken.
	GRPCStreamWorkers *int `yaml:"grpc_stream_workers"`
}

// CallbackAddr is the address the callback listener serves, or "" when it
// is off: listen.callback, or DefaultCallbackAddr when that is unset and
// needed (an authorization-code connection exists).
func (l Listen) CallbackAddr(needed bool) string {
	switch {
	case l.Callback == CallbackOff:
		return ""
	case l.Callback != "":
		return l.Callback
	case needed:
		return DefaultCallbackAddr
	}
	return ""
}

// Log configures logging.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
}

// Cache chooses the shared store.
type Cache struct {
	// Type is "memory" (default: embedded, one replica) or "redis".
	Type string `yaml:"type"`
	// StateFile, in memory mode, keeps durable state (grants) across
	// restarts. Empty keeps it in memory only.
	StateFile string `yaml:"state_file"`
	Redis     Redis  `yaml:"redis"`
}

// Redis configures the Redis cache.
type Redis struct {
	// Addrs are host:port pairs: one node, the Sentinels (with
	// master_name), or cluster seed nodes (with cluster: true).
	Addrs      []string `yaml:"addrs"`
	MasterName string   `yaml:"master_name"`
	Cluster    bool     `yaml:"cluster"`
	Username   string   `yaml:"username"`
	// Password is read from a file or environment variable.
	Password secret.Ref `yaml:"password"`
	// TLS to Redis (and the Sentinels).
	TLS              RedisTLS   `yaml:"tls"`
	SentinelUsername string     `yaml:"sentinel_username"`
	SentinelPassword secret.Ref `yaml:"sentinel_password"`
	DB               int        `yaml:"db"`
	// KeyPrefix namespaces every key (default "tokenbroker:v1:").
	KeyPrefix   string             `yaml:"key_prefix"`
	DialTimeout providers.Duration `yaml:"dial_timeout"`
	// OpTimeout bounds every Redis operation, retries included (default
	// 300ms): a hung node costs a caller at most this before the broker
	// serves from memory or the upstream.
	OpTimeout providers.Duration `yaml:"op_timeout"`
}

// Bounds on cache.redis.op_timeout.
const (
	MinRedisOpTimeout = 10 * time.Millisecond
	MaxRedisOpTimeout = 10 * time.Second
)

// RedisTLS configures TLS to Redis.
type RedisTLS struct {
	Enabled              bool `yaml:"enabled"`
	tlsutil.ClientConfig `yaml:",inline"`
}

// Connection is one configured upstream account. The keys besides name,
// type and skew belong to the provider type and are decoded into Provider.
type Connection struct {
	// Name is what callers pass as GetToken's connection.
	Name string `yaml:"name"`
	// Type is the provider type, e.g. client_credentials, wx, wax.
	Type string `yaml:"type"`
	// Skew: a token is not served, and leaves the cache, this long before
	// it expires (default 60s; at most half the token's lifetime).
	Skew providers.Duration `yaml:"skew"`
	// GrantIdleLifetime is how long the upstream keeps a refresh token
	// nobody uses (0: it says, with refresh_token_expires_in, or never).
	// Grants are refreshed in the background before then.
	GrantIdleLifetime providers.Duration `yaml:"grant_idle_lifetime"`

	// Provider is the provider type's own settings.
	Provider providers.Config `yaml:"-"`
}

var connectionKeys = []string{"name", "type", "skew", "grant_idle_lifetime"}

// NamePattern is what a connection name must match.
var NamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

// Parse decodes and validates a configuration file. The error lists every
// problem found.
func Parse(data []byte, reg *providers.Registry) (*Config, error) {
	c, err := parse(data, reg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ParseAndCheckSecrets is Parse that, when the file has problems, also
// reports every referenced secret that cannot be read, so one run lists
// everything wrong. (A valid file's secrets are read when providers open.)
func ParseAndCheckSecrets(data []byte, reg *providers.Registry, loader secret.Loader) (*Config, error) {
	c, err := parse(data, reg)
	if err == nil {
		return c, nil
	}
	if c != nil {
		err = errors.Join(append([]error{err}, CheckSecrets(c, loader)...)...)
	}
	return nil, err
}

// parse returns what could be decoded, with the problems found.
func parse(data []byte, reg *providers.Registry) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	c := &Config{}
	var errs []error
	if root.Kind != 0 {
		errs = decodeStrict(&root, c, "", "connections")
		errs = append(errs, c.decodeConnections(&root, reg)...)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		// The partial configuration lets callers report more (CheckSecrets).
		return c, err
	}
	return c, nil
}

func (c *Config) decodeConnections(root *yaml.Node, reg *providers.Registry) []error {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	var list *yaml.Node
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "connections" {
			list = doc.Content[i+1]
		}
	}
	if list == nil || list.Tag == "!!null" {
		return nil
	}
	if list.Kind != yaml.SequenceNode {
		return []error{errors.New("connections: must be a list")}
	}
	var errs []error
	for i, item := range list.Content {
		path := fmt.Sprintf("connections[%d]", i)
		if item.Kind != yaml.MappingNode {
			errs = append(errs, fmt.Errorf("%s: must be a mapping", path))
			continue
		}
		var conn Connection
		common, rest := split(item, connectionKeys)
		errs = append(errs, decodeStrict(common, &conn, path)...)
		if conn.Type != "" {
			pc, err := reg.NewConfig(conn.Type)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.type: %w", path, err))
			} else {
				errs = append(errs, decodeStrict(rest, pc, path)...)
				conn.Provider = pc
			}
		}
		c.Connections = append(c.Connections, conn)
	}
	return errs
}

// split divides a mapping node into the keys in keys and the rest.
func split(m *yaml.Node, keys []string) (in, out *yaml.Node) {
	in = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	out = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for i := 0; i+1 < len(m.Content); i += 2 {
		dst := out
		for _, k := range keys {
			if m.Content[i].Value == k {
				dst = in
			}
		}
		dst.Content = append(dst.Content, m.Content[i], m.Content[i+1])
	}
	return in, out
}

// ApplyDefaults fills unset settings with their defaults. Parse calls it;
// call it on a Config built in code before Validate.
func (c *Config) ApplyDefaults() {
	if c.Listen.GRPC == "" {
		c.Listen.GRPC = DefaultGRPCAddr
	}
	if c.Listen.Admin == "" {
		c.Listen.Admin = DefaultAdminAddr
	}
	if c.Listen.GRPCStreamWorkers == nil {
		n := DefaultGRPCStreamWorkers
		c.Listen.GRPCStreamWorkers = &n
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Cache.Type == "" {
		c.Cache.Type = "memory"
	}
	if c.Broker.FetchTimeout.Duration == 0 {
		c.Broker.FetchTimeout.Duration = 60 * time.Second
	}
	if c.Broker.LeaseTTL.Duration == 0 {
		c.Broker.LeaseTTL.Duration = 10 * time.Second
	}
	if c.Broker.L1MaxAge.Duration == 0 {
		c.Broker.L1MaxAge.Duration = 30 * time.Second
	}
	if c.Broker.RememberRejections.Duration == 0 {
		c.Broker.RememberRejections.Duration = 30 * time.Second
	}
	if c.Broker.RefreshAhead == nil {
		on := true
		c.Broker.RefreshAhead = &on
	}
	if c.Cache.Redis.KeyPrefix == "" {
		c.Cache.Redis.KeyPrefix = DefaultKeyPrefix
	}
	for i := range c.Connections {
		if c.Connections[i].Skew.Duration == 0 {
			c.Connections[i].Skew.Duration = DefaultSkew
		}
	}
}

// Validate reports every problem at once. It reads no files and dials nothing.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	addrs := []struct{ key, addr string }{{"listen.grpc", c.Listen.GRPC}, {"listen.admin", c.Listen.Admin}}
	if cb := c.Listen.Callback; cb != "" && cb != CallbackOff {
		addrs = append(addrs, struct{ key, addr string }{"listen.callback", cb})
	}
	for _, l := range addrs {
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			add("%s: invalid address %q: want host:port or :port", l.key, l.addr)
		}
	}
	if n := c.Listen.GRPCStreamWorkers; n != nil && (*n < 0 || *n > MaxGRPCStreamWorkers) {
		add("listen.grpc_stream_workers: must be between 0 and %d, got %d", MaxGRPCStreamWorkers, *n)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level: must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Cache.Type {
	case "memory":
	case "redis":
		r := c.Cache.Redis
		if len(r.Addrs) == 0 {
			add("cache.redis.addrs: required when cache.type is redis")
		}
		if r.MasterName != "" && r.Cluster {
			add("cache.redis: master_name (Sentinel) and cluster are mutually exclusive")
		}
		if r.Cluster && r.DB != 0 {
			add("cache.redis.db: must be 0 in cluster mode")
		}
		if !r.Password.IsZero() {
			if err := r.Password.Validate(); err != nil {
				add("cache.redis.password: %v", err)
			}
		}
		if !r.SentinelPassword.IsZero() {
			if err := r.SentinelPassword.Validate(); err != nil {
				add("cache.redis.sentinel_password: %v", err)
			}
		}
		if d := r.OpTimeout.Duration; d != 0 && (d < MinRedisOpTimeout || d > MaxRedisOpTimeout) {
			add("cache.redis.op_timeout: must be between %v and %v, got %v", MinRedisOpTimeout, MaxRedisOpTimeout, d)
		}
	default:
		add("cache.type: must be memory or redis, got %q", c.Cache.Type)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"broker.fetch_timeout", c.Broker.FetchTimeout.Duration}, {"broker.lease_ttl", c.Broker.LeaseTTL.Duration}, {"broker.l1_max_age", c.Broker.L1MaxAge.Duration},
		{"broker.remember_rejections", c.Broker.RememberRejections.Duration}} {
		if d.v < 0 {
			add("%s: must not be negative", d.key)
		}
	}
	if c.Broker.LeaseTTL.Duration > 0 && c.Broker.LeaseTTL.Duration < 300*time.Millisecond {
		add("broker.lease_ttl: at least 300ms (it is renewed every third)")
	}
	errs = append(errs, prefix("tls.", c.TLS.Validate())...)
	errs = append(errs, prefix("tracing.", c.Tracing.Validate())...)
	errs = append(errs, prefix("auth.", c.Auth.Validate())...)
	if c.Encryption.Enabled() {
		errs = append(errs, prefix("encryption.", c.Encryption.Validate())...)
	} else if c.Encryption.Primary != "" {
		add("encryption.primary: set but no keys are configured")
	}
	if c.Cache.Type == "redis" && !c.Encryption.Enabled() && !c.Encryption.InsecurePlaintext {
		add("encryption.keys: required with cache.type redis (or set encryption.insecure_plaintext: true to store tokens and grants in plaintext)")
	}
	if c.Cache.Redis.TLS.Enabled {
		errs = append(errs, prefix("cache.redis.tls.", c.Cache.Redis.TLS.Validate())...)
	}
	if len(c.Connections) == 0 {
		add("connections: at least one connection is required")
	}
	seen := map[string]int{}
	for i, conn := range c.Connections {
		path := fmt.Sprintf("connections[%d]", i)
		switch {
		case conn.Name == "":
			add("%s.name: required", path)
		case !NamePattern.MatchString(conn.Name):
			add("%s.name: %q must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting and ending with a letter or digit", path, conn.Name)
		default:
			if j, dup := seen[conn.Name]; dup {
				add("%s.name: %q is already used by connections[%d]", path, conn.Name, j)
			}
			seen[conn.Name] = i
		}
		if conn.Type == "" {
			add("%s.type: required", path)
		}
		if conn.Skew.Duration < 0 {
			add("%s.skew: must not be negative", path)
		}
		if d := conn.GrantIdleLifetime.Duration; d != 0 && d < 10*time.Second {
			add("%s.grant_idle_lifetime: at least 10s, or unset", path)
		}
		if conn.Provider != nil {
			errs = append(errs, prefix(path+".", conn.Provider.Validate())...)
		}
	}
	return errors.Join(errs...)
}

// prefix returns err's parts (for an errors.Join) each prefixed with p.
func prefix(p string, err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, prefix(p, e)...)
		}
		return out
	}
	return []error{fmt.Errorf("%s%w", p, err)}
}

// OpenError collects a connection's failure to open.
func OpenError(i int, name string, err error) error {
	parts := prefix(fmt.Sprintf("connections[%d] (%s): ", i, name), err)
	return errors.Join(parts...)
}
