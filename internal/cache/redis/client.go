package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
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
	// OpTimeout bounds every operation, retries and redirects included: it
	// runs under the earlier of the caller's deadline and now+OpTimeout.
	// Zero means DefaultOpTimeout.
	OpTimeout time.Duration
	// Socket timeouts. Zero means go-redis's default dial timeout (5 s) and
	// read and write timeouts of SocketTimeout, or OpTimeout if longer. The
	// socket timeouts matter only where no operation context reaches: the
	// Cluster's slot map reloads, the Sentinel queries.
	DialTimeout, ReadTimeout, WriteTimeout time.Duration
}

// DefaultOpTimeout is the budget of one Redis operation when
// ClientConfig.OpTimeout is zero: far above a healthy round trip (well under
// a millisecond on a LAN), and short enough that a hung node costs a caller
// little before the broker falls back to its in-process copy or the upstream.
const DefaultOpTimeout = 300 * time.Millisecond

// SocketTimeout is the default read and write timeout: a node that does not
// answer within it is given up on, even by work that has no deadline.
const SocketTimeout = time.Second

// poolTimeout bounds the wait for a pooled connection when every one is
// busy (go-redis's default is the read timeout plus a second). Operations
// wait at most their budget anyway.
const poolTimeout = time.Second

// clusterReloadInterval is how old the Cluster's slot map may get before
// the next command reloads it in the background (go-redis's default is 60 s,
// which kept brokers dialing a dead master for most of a minute). Failed
// commands reload it at once (see budgetHook).
const clusterReloadInterval = 2 * time.Second

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
	}{{"opTimeout", c.OpTimeout}, {"dialTimeout", c.DialTimeout}, {"readTimeout", c.ReadTimeout}, {"writeTimeout", c.WriteTimeout}} {
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
//
// Every command and pipeline runs under the earlier of its caller's deadline
// and c.OpTimeout, retries included, and go-redis sets its socket deadlines
// from that context, so a hung or black-holed node costs a caller at most
// the budget. A Cluster client also reloads its slot map in the background
// after a command fails to reach a node, and every clusterReloadInterval,
// and answers a bare PING only when every master does.
func NewClient(c ClientConfig) goredis.UniversalClient {
	c = c.withDefaults()
	// One set of options, converted for the deployment kind, so the three
	// kinds cannot drift apart.
	o := &goredis.UniversalOptions{
		DialerRetries:         dialAttempts,
		Addrs:                 c.Addrs,
		MasterName:            c.MasterName,
		Username:              c.Username,
		Password:              c.Password,
		SentinelUsername:      c.SentinelUsername,
		SentinelPassword:      c.SentinelPassword,
		DB:                    c.DB,
		TLSConfig:             c.TLS,
		DialTimeout:           c.DialTimeout,
		ReadTimeout:           c.ReadTimeout,
		WriteTimeout:          c.WriteTimeout,
		ContextTimeoutEnabled: true,
		PoolTimeout:           poolTimeout,
	}
	var client goredis.UniversalClient
	switch {
	case c.Cluster:
		co := o.Cluster()
		co.ClusterStateReloadInterval = clusterReloadInterval
		cc := goredis.NewClusterClient(co)
		cc.AddHook(budgetHook{budget: c.OpTimeout, cluster: cc})
		return cc
	case c.MasterName != "":
		client = goredis.NewFailoverClient(o.Failover())
	default:
		client = goredis.NewClient(o.Simple())
	}
	client.AddHook(budgetHook{budget: c.OpTimeout})
	return client
}

// withDefaults fills in the zero timeouts.
func (c ClientConfig) withDefaults() ClientConfig {
	if c.OpTimeout == 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	sock := max(SocketTimeout, c.OpTimeout)
	if c.ReadTimeout == 0 {
		c.ReadTimeout = sock
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = sock
	}
	return c
}

// budgetHook runs every command and pipeline under its budget. Installed on
// the top-level client, it wraps go-redis's retries, redirects and
// reconnections, so none of them multiplies the budget: a retry after the
// deadline fails at once. With cluster set, it also reloads the slot map when
// a command could not reach its node, and turns a bare PING into a PING of
// every master.
type budgetHook struct {
	budget  time.Duration
	cluster *goredis.ClusterClient
}

var _ goredis.Hook = budgetHook{}

func (h budgetHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (h budgetHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		ctx, cancel := context.WithTimeout(ctx, h.budget)
		defer cancel()
		if h.cluster != nil && isBarePing(cmd) {
			err := h.cluster.ForEachMaster(ctx, func(ctx context.Context, node *goredis.Client) error {
				return node.Ping(ctx).Err()
			})
			if err != nil {
				h.cluster.ReloadState(ctx)
			} else if c, ok := cmd.(*goredis.StatusCmd); ok {
				c.SetVal("PONG")
			}
			return err
		}
		err := next(ctx, cmd)
		if h.cluster != nil && nodeTrouble(err) {
			h.cluster.ReloadState(ctx)
		}
		return err
	}
}

func (h budgetHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		ctx, cancel := context.WithTimeout(ctx, h.budget)
		defer cancel()
		err := next(ctx, cmds)
		if h.cluster != nil && nodeTrouble(err) {
			h.cluster.ReloadState(ctx)
		}
		return err
	}
}

func isBarePing(cmd goredis.Cmder) bool {
	return cmd.Name() == "ping" && len(cmd.Args()) == 1
}

// nodeTrouble reports whether err says a node could not be reached, did not
// answer in time, or answered that the Cluster's layout is changing: the
// cases in which a fresh slot map may send the command elsewhere.
func nodeTrouble(err error) bool {
	if err == nil || errors.Is(err, goredis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, p := range []string{"CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY", "LOADING"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		var nerr net.Error
		return errors.As(err, &nerr) // some go-redis errors are both
	}
	return true // dial, I/O, timeout, closed connection
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
	fmt.Fprintf(f, "{Addrs:%q MasterName:%q Cluster:%t Username:%q Password:%q SentinelUsername:%q SentinelPassword:%q DB:%d TLS:%t OpTimeout:%v DialTimeout:%v ReadTimeout:%v WriteTimeout:%v}",
		c.Addrs, c.MasterName, c.Cluster, c.Username, redact(c.Password), c.SentinelUsername, redact(c.SentinelPassword),
		c.DB, c.TLS != nil, c.OpTimeout, c.DialTimeout, c.ReadTimeout, c.WriteTimeout)
}
