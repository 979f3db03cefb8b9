package redis

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// ClientConfig says how to reach Redis. The deployment kind is explicit:
// MasterName selects Sentinel and Cluster selects Cluster; neither is
// inferred from the number of addresses.
type ClientConfig struct {
	// Addrs are host:port addresses: the one server; or the Sentinels, with
	// MasterName; or seed nodes of the Cluster, with Cluster.
	Addrs []string
	// MasterName is the primary's name known to the Sentinels at Addrs.
	MasterName string
	// Cluster says Addrs are Redis Cluster nodes.
	Cluster bool
	// Username and Password authenticate to Redis (ACL user, or only a
	// password for requirepass). Empty means none.
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the Sentinels,
	// which may differ from the data nodes.
	SentinelUsername, SentinelPassword string
	// DB is the database number. Cluster has only database 0.
	DB int
	// TLS, when set, is used for every connection (nodes and Sentinels).
	TLS *tls.Config
	// Timeouts; zero means go-redis's default (dial 5 s, read and write 3 s).
	DialTimeout, ReadTimeout, WriteTimeout time.Duration
}

// Validate reports every problem with c at once. It contacts nothing.
// NewClient assumes a valid config.
func (c ClientConfig) Validate() error {
	var errs []error
	if len(c.Addrs) == 0 {
		errs = append(errs, errors.New("addrs: at least one address is required"))
	}
	for i, a := range c.Addrs {
		if a == "" {
			errs = append(errs, fmt.Errorf("addrs[%d]: empty address", i))
		}
	}
	switch {
	case c.Cluster && c.MasterName != "":
		errs = append(errs, errors.New("masterName and cluster are exclusive: Sentinel manages a primary, not a Cluster"))
	case c.Cluster && c.DB != 0:
		errs = append(errs, errors.New("db: a Cluster has only database 0"))
	case !c.Cluster && c.MasterName == "" && len(c.Addrs) > 1:
		errs = append(errs, errors.New("addrs: several addresses need masterName (Sentinel) or cluster"))
	}
	if c.MasterName == "" && (c.SentinelUsername != "" || c.SentinelPassword != "") {
		errs = append(errs, errors.New("sentinel credentials are set but masterName is not"))
	}
	if c.DB < 0 {
		errs = append(errs, errors.New("db: must not be negative"))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"dialTimeout", c.DialTimeout}, {"readTimeout", c.ReadTimeout}, {"writeTimeout", c.WriteTimeout}} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative", d.name))
		}
	}
	return errors.Join(errs...)
}

// dialAttempts is how often go-redis dials before giving up on one command
// attempt. Commands are retried already (MaxRetries, 3 by default), each
// retry dialing again; go-redis's default of 5 dials per attempt made every
// call to a stopped server take about 1.7 s instead of about 0.1 s, where the
// broker would rather fall back to its upstream at once.
const dialAttempts = 1

// NewClient returns a client for c: a Cluster client when c.Cluster, a
// Sentinel-backed failover client when c.MasterName is set, and otherwise a
// client of the single server c.Addrs[0]. It does not connect; the first
// command does. Pass it to New, which then owns it.
func NewClient(c ClientConfig) goredis.UniversalClient {
	switch {
	case c.Cluster:
		return goredis.NewClusterClient(&goredis.ClusterOptions{
			DialerRetries: dialAttempts,
			Addrs:         c.Addrs,
			Username:      c.Username,
			Password:      c.Password,
			TLSConfig:     c.TLS,
			DialTimeout:   c.DialTimeout,
			ReadTimeout:   c.ReadTimeout,
			WriteTimeout:  c.WriteTimeout,
		})
	case c.MasterName != "":
		return goredis.NewFailoverClient(&goredis.FailoverOptions{
			DialerRetries:    dialAttempts,
			MasterName:       c.MasterName,
			SentinelAddrs:    c.Addrs,
			SentinelUsername: c.SentinelUsername,
			SentinelPassword: c.SentinelPassword,
			Username:         c.Username,
			Password:         c.Password,
			DB:               c.DB,
			TLSConfig:        c.TLS,
			DialTimeout:      c.DialTimeout,
			ReadTimeout:      c.ReadTimeout,
			WriteTimeout:     c.WriteTimeout,
		})
	default:
		var addr string
		if len(c.Addrs) > 0 {
			addr = c.Addrs[0]
		}
		return goredis.NewClient(&goredis.Options{
			DialerRetries: dialAttempts,
			Addr:          addr,
			Username:      c.Username,
			Password:      c.Password,
			DB:            c.DB,
			TLSConfig:     c.TLS,
			DialTimeout:   c.DialTimeout,
			ReadTimeout:   c.ReadTimeout,
			WriteTimeout:  c.WriteTimeout,
		})
	}
}

// Format prints c with its passwords redacted, whatever the verb, so that a
// config dumped into a log or an error keeps its secrets.
func (c ClientConfig) Format(f fmt.State, _ rune) {
	redact := func(s string) string {
		if s == "" {
			return ""
		}
		return "[REDACTED]"
	}
	fmt.Fprintf(f, "{Addrs:%q MasterName:%q Cluster:%t Username:%q Password:%q SentinelUsername:%q SentinelPassword:%q DB:%d TLS:%t DialTimeout:%v ReadTimeout:%v WriteTimeout:%v}",
		c.Addrs, c.MasterName, c.Cluster, c.Username, redact(c.Password), c.SentinelUsername, redact(c.SentinelPassword),
		c.DB, c.TLS != nil, c.DialTimeout, c.ReadTimeout, c.WriteTimeout)
}
