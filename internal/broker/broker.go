// Package broker is the token lifecycle: it routes a request for a
// connection's token to that connection's provider, caches the token until
// shortly before it expires, keeps durable grants (refresh tokens) and makes
// concurrent misses share one upstream request.
//
// The files read top-down: get.go is the request path (L1, shared read,
// joining a flight, each caller's own wait and min_ttl); flight.go is the
// shared fetch, on the broker's own budget and under the key's lease;
// grant.go loads, refreshes and stores grants; authorize.go is the
// authorization code grant; l1.go and ahead.go are the in-process copy and
// refresh-ahead.
//
// It speaks neither gRPC nor HTTP; package server maps its errors.
package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// DefaultFetchTimeout bounds one upstream fetch, which is shared by every
// caller waiting for it and so never runs on a caller's deadline.
const DefaultFetchTimeout = 60 * time.Second

// DefaultRejectionTTL is how long a terminal upstream rejection of a
// (connection, scopes) pair is remembered and answered without asking the
// upstream again.
const DefaultRejectionTTL = 30 * time.Second

// Options configure a Broker.
type Options struct {
	Cache       cache.Cache
	Connections []Connection
	// Now is the clock (nil: time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// FetchTimeout bounds one upstream fetch (0: DefaultFetchTimeout).
	FetchTimeout time.Duration
	// L1MaxAge bounds how long an in-process copy is trusted without
	// asking the shared cache (0: DefaultL1MaxAge). When the shared cache
	// cannot be read, a copy is served whatever its age while it is fresh.
	L1MaxAge time.Duration
	// LeaseTTL is the cross-replica lease on a key while one replica
	// fetches it; renewed while the fetch runs (0: DefaultLeaseTTL).
	LeaseTTL time.Duration
	// RejectionTTL is how long a terminal upstream rejection is remembered
	// per (connection, scopes) (0: DefaultRejectionTTL; negative: never).
	RejectionTTL time.Duration
	// DisableRefreshAhead turns off background refresh of used tokens.
	DisableRefreshAhead bool
	// DisableKeepAlive turns off background refresh of idle grants.
	DisableKeepAlive bool
	// KeepAliveEvery is how often each replica looks for grants due for a
	// keep-alive refresh (0: DefaultKeepAliveEvery).
	KeepAliveEvery time.Duration
	// AfterFunc schedules refresh-ahead (nil: time.AfterFunc). Tests
	// inject it to fire timers themselves.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Upstream is the retry policy around provider calls; each connection
	// gets its own breaker from it (nil: the zero Policy's defaults).
	Upstream *upstream.Policy
	// Encode, when set, encodes a token as the transport sends it (the
	// gRPC server's marshaled response). The broker calls it once per token
	// entering the in-process cache, and every hit there carries the result
	// as Token.Encoded. Nil (or an empty result) leaves Encoded empty.
	Encode func(*Token) []byte
	// Metrics receives counters (nil: kept, but not exported).
	Metrics *metrics.Metrics
}

// A Connection is a named, opened provider.
type Connection struct {
	Name string
	// Type is the provider type name, for ListConnections.
	Type     string
	Provider providers.Provider
	// Skew: tokens are not served, and leave the cache, this long before
	// they expire; capped at half of each token's lifetime.
	Skew time.Duration
	// GrantIdleLifetime, when set, is how long the upstream keeps an
	// unused refresh token; grants are refreshed in the background before
	// that (as when it reports refresh_token_expires_in).
	GrantIdleLifetime time.Duration
}

// A Request asks for a token.
type Request struct {
	Connection string
	// Account is the end user the token acts for ("": the connection's
	// default account). Only connections that keep grants have accounts.
	Account string
	Scopes  []string
	// MinTTL: the token must stay valid at least this long.
	MinTTL time.Duration
	// ForceRefresh ignores the cached token.
	ForceRefresh bool
}

// A Token is what callers get.
type Token struct {
	AccessToken secret.Value
	TokenType   string
	Expiry      time.Time
	Scopes      []string
	// Encoded is the token as Options.Encode encodes it for the wire, on a
	// token served from the in-process cache: encoded once, when the token
	// entered it, not once per call. Empty without Encode, and on a token
	// just fetched or read from the shared cache. It contains the access
	// token, which shares its bytes.
	Encoded secret.Value
}

// A Broker serves tokens. Its methods are safe for concurrent use.
type Broker struct {
	store        cache.Cache
	pub          cache.Publisher // nil: no other replica to tell
	conns        map[string]*conn
	names        []string
	now          func() time.Time
	log          *slog.Logger
	fetchTimeout time.Duration
	l1MaxAge     time.Duration
	leaseTTL     time.Duration
	rejectionTTL time.Duration
	refreshAhead bool
	afterFunc    func(time.Duration, func()) func() bool
	encode       func(*Token) []byte
	policy       *upstream.Policy
	// oncePolicy never retries: for calls that spend something single-use
	// (a rotating refresh token), where a retry after a lost answer would
	// present a token the upstream already replaced.
	oncePolicy *upstream.Policy
	metrics    *metrics.Metrics

	l1      l1
	flights flights

	unsubscribe   func()
	closed        atomic.Bool
	stopSweep     chan struct{}
	lastCacheWarn atomic.Int64
	refreshes     atomic.Int64
}

// conn is a connection with its capabilities resolved once.
type conn struct {
	Connection
	refresher  providers.Refresher  // nil: no refresh tokens
	authorizer providers.Authorizer // nil: no authorization code grant
	// keepsGrant: the provider keeps durable grant state (refresh tokens).
	keepsGrant bool
	// canRunFullGrant: Provider.Token gets a token without a person or
	// an imported grant (client credentials, WX signing with its key).
	canRunFullGrant bool
	// subject: the upstream account (providers.AccountBound), or "".
	subject string
	// defaultScopes stand for a request's empty scopes
	// (providers.DefaultScoper), so equal requests share one key.
	defaultScopes []string
	breaker       *upstream.Breaker
	m             *metrics.Conn
	// lastLifetime is a time.Duration: how long the last token lived.
	lastLifetime atomic.Int64
	// grantMu serialises grant work within this process when the shared
	// store cannot give a lease, so token keys of one connection never
	// redeem one refresh token twice.
	grantMu sync.Mutex

	// pending is a grant obtained (a refresh token spent) whose write the
	// store refused; it replaces the stored grant it was made from at the
	// next fetch under the lease. Guarded by mu.
	pending map[string]*pendingGrant // by account

	mu         sync.Mutex
	lastExpiry time.Time
	// fault is the connection's own last failure (credentials rejected,
	// upstream unreachable or answering nonsense), "" once a fetch works.
	// A request's own rejection never lands here.
	fault string
}

// New returns a Broker. Connection names must be unique.
func New(o Options) (*Broker, error) {
	if o.Cache == nil {
		return nil, errors.New("broker: no cache")
	}
	b := &Broker{
		store:        o.Cache,
		conns:        make(map[string]*conn, len(o.Connections)),
		now:          o.Now,
		log:          o.Logger,
		fetchTimeout: o.FetchTimeout,
		l1MaxAge:     o.L1MaxAge,
		leaseTTL:     o.LeaseTTL,
		rejectionTTL: o.RejectionTTL,
		refreshAhead: !o.DisableRefreshAhead,
		afterFunc:    o.AfterFunc,
		encode:       o.Encode,
		policy:       o.Upstream,
		metrics:      o.Metrics,
		stopSweep:    make(chan struct{}),
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.fetchTimeout <= 0 {
		b.fetchTimeout = DefaultFetchTimeout
	}
	if b.l1MaxAge <= 0 {
		b.l1MaxAge = DefaultL1MaxAge
	}
	if b.leaseTTL <= 0 {
		b.leaseTTL = DefaultLeaseTTL
	}
	if b.rejectionTTL == 0 {
		b.rejectionTTL = DefaultRejectionTTL
	}
	if b.afterFunc == nil {
		b.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if b.policy == nil {
		b.policy = &upstream.Policy{}
	}
	once := *b.policy
	once.MaxAttempts = 1
	b.oncePolicy = &once
	if b.metrics == nil {
		b.metrics = metrics.New()
	}
	for _, c := range o.Connections {
		if _, dup := b.conns[c.Name]; dup {
			return nil, fmt.Errorf("broker: duplicate connection %q", c.Name)
		}
		if c.Provider == nil {
			return nil, fmt.Errorf("broker: connection %q has no provider", c.Name)
		}
		b.conns[c.Name] = b.newConn(c)
		b.names = append(b.names, c.Name)
	}
	sort.Strings(b.names)
	if p, ok := b.store.(cache.Publisher); ok {
		stop, err := p.Subscribe(context.Background(), invalidateChannel, b.onInvalidate)
		if err != nil {
			return nil, fmt.Errorf("broker: subscribe to invalidations: %w", err)
		}
		b.pub, b.unsubscribe = p, stop
	}
	go b.sweepEvery(b.l1MaxAge)
	if !o.DisableKeepAlive {
		go b.keepAlive(cmp.Or(o.KeepAliveEvery, DefaultKeepAliveEvery))
	}
	return b, nil
}

func (b *Broker) newConn(c Connection) *conn {
	cn := &conn{Connection: c, m: b.metrics.Connection(c.Name)}
	cn.refresher, _ = c.Provider.(providers.Refresher)
	cn.authorizer, _ = c.Provider.(providers.Authorizer)
	cn.keepsGrant = cn.refresher != nil || cn.authorizer != nil
	cn.canRunFullGrant = cn.authorizer == nil
	if nf, ok := c.Provider.(providers.GrantImporter); ok && nf.ImportsGrants() {
		cn.canRunFullGrant = false
	}
	if ab, ok := c.Provider.(providers.AccountBound); ok {
		cn.subject = ab.Subject()
	}
	if ds, ok := c.Provider.(providers.DefaultScoper); ok {
		cn.defaultScopes, _ = normalizeScopes(ds.DefaultScopes())
	}
	cn.breaker = b.policy.NewBreakerNotify(func(from, to string) {
		b.log.Warn("upstream circuit breaker", "connection", c.Name, "from", from, "to", to)
		cn.m.BreakerChanged(to)
	})
	return cn
}

// checkAccount checks that account can be asked of c.
func (c *conn) checkAccount(account string) error {
	if err := checkAccount(account); err != nil {
		return err
	}
	if account != "" && !c.keepsGrant {
		return fmt.Errorf("%w: connection %q (type %s) has no accounts: it keeps no per-user grant", ErrInvalidArgument, c.Name, c.Type)
	}
	return nil
}

// subjectOf is the upstream subject account's tokens and grants must be
// for: the configured key's (providers.AccountBound) for the default
// account; none for others, whose grants are authorized or imported.
func (c *conn) subjectOf(account string) string {
	if account == "" {
		return c.subject
	}
	return ""
}

// scopes normalizes a request's scopes for c: sorted, unique, and c's
// defaults when there are none.
func (c *conn) scopes(scopes []string) ([]string, error) {
	s, err := normalizeScopes(scopes)
	if err == nil && len(s) == 0 {
		s = c.defaultScopes
	}
	return s, err
}

func (b *Broker) connection(name string) (*conn, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: connection is required", ErrInvalidArgument)
	}
	c, ok := b.conns[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownConnection, truncate(name, 64))
	}
	return c, nil
}

// ConnectionState is a connection's state for ListConnections.
type ConnectionState int

const (
	StateReady ConnectionState = iota + 1
	StateNeedsAuthorization
	StateRevoked
	StateFailing
)

// ConnectionInfo describes a connection without secrets.
type ConnectionInfo struct {
	Name, Type    string
	State         ConnectionState
	TokenExpiry   time.Time
	GrantedScopes []string
	Details       map[string]string
	LastError     string
	// Accounts counts the accounts by state, for connections that keep
	// grants (nil otherwise, or when the store could not be read).
	Accounts map[ConnectionState]int64
}

// Connections describes every connection, sorted by name. State is the
// connection's own: a request the upstream refused for its scopes leaves
// it ready.
func (b *Broker) Connections(ctx context.Context) []ConnectionInfo {
	out := make([]ConnectionInfo, 0, len(b.names))
	for _, name := range b.names {
		c := b.conns[name]
		info := ConnectionInfo{Name: name, Type: c.Type, State: StateReady}
		c.mu.Lock()
		info.TokenExpiry, info.LastError = c.lastExpiry, c.fault
		c.mu.Unlock()
		if info.LastError != "" {
			info.State = StateFailing
		}
		if d, ok := c.Provider.(providers.Describer); ok {
			info.Details = d.Describe()
		}
		if c.keepsGrant {
			if n, err := b.countAccounts(ctx, c); err == nil {
				info.Accounts = n
			}
			g, _, err := b.loadGrant(ctx, c, "")
			switch {
			case err != nil:
				info.State, info.LastError = StateFailing, err.Error()
			case g != nil:
				info.GrantedScopes = g.Scopes
				switch g.State {
				case providers.GrantRevoked:
					info.State = StateRevoked
				case providers.GrantNeedsAuthorization:
					info.State = StateNeedsAuthorization
				}
			case c.authorizer != nil:
				info.State = StateNeedsAuthorization
			}
		}
		out = append(out, info)
	}
	return out
}

// recordFault records err as the connection's own failure when it is one (see
// requestLevel), and reports whether it was.
func (c *conn) recordFault(err error) bool {
	if requestLevel(err) || errors.Is(err, ErrStore) ||
		errors.Is(err, providers.ErrNeedsAuthorization) || errors.Is(err, providers.ErrRevoked) {
		// The grant's state says these, per account.
		return false
	}
	c.mu.Lock()
	c.fault = err.Error()
	c.mu.Unlock()
	return true
}

// lifetime is how long the last token fetched for c lived when new: a
// min_ttl at least that long can never be met.
func (c *conn) lifetime() time.Duration { return time.Duration(c.lastLifetime.Load()) }

// served records a token obtained from the upstream: the connection works.
func (c *conn) served(expiry time.Time, lifetime time.Duration) {
	c.lastLifetime.Store(int64(lifetime))
	c.mu.Lock()
	c.lastExpiry, c.fault = expiry, ""
	c.mu.Unlock()
}

// cacheTrouble logs a shared-cache failure: at warn level once in a while,
// at debug level otherwise, so an outage does not flood the log.
func (b *Broker) cacheTrouble(ctx context.Context, op, msg string, err error) {
	b.metrics.CacheError(op)
	now := b.now().UnixNano()
	last := b.lastCacheWarn.Load()
	if now-last > int64(10*time.Second) && b.lastCacheWarn.CompareAndSwap(last, now) {
		b.log.WarnContext(ctx, msg, "err", err)
		return
	}
	b.log.DebugContext(ctx, msg, "err", err)
}

// Close stops background work: refresh-ahead timers and the invalidation
// subscription. Flights already running finish on their own budget. It
// does not close the cache.
func (b *Broker) Close() {
	if !b.closed.CompareAndSwap(false, true) {
		return
	}
	if b.unsubscribe != nil {
		b.unsubscribe()
	}
	close(b.stopSweep)
	b.l1.m.Range(func(_, v any) bool {
		v.(*l1Entry).cancel()
		return true
	})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
