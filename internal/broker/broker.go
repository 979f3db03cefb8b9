// Package broker is the token lifecycle: it routes a request for a
// connection's token to that connection's provider, caches the token until
// shortly before it expires, keeps durable grants (refresh tokens) and makes
// concurrent misses share one upstream request.
//
// It speaks neither gRPC nor HTTP; package server maps its errors.
package broker

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// DefaultFetchTimeout bounds one upstream fetch, which is shared by every
// caller waiting for it and so does not stop when the first caller gives up.
const DefaultFetchTimeout = 60 * time.Second

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
	// asking the shared cache (0: DefaultL1MaxAge).
	L1MaxAge time.Duration
	// LeaseTTL is the cross-replica lease on a key while one replica
	// fetches it; renewed while the fetch runs (0: DefaultLeaseTTL).
	LeaseTTL time.Duration
	// DisableRefreshAhead turns off background refresh of used tokens.
	DisableRefreshAhead bool
	// AfterFunc schedules refresh-ahead (nil: time.AfterFunc). Tests
	// inject it to fire timers themselves.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Upstream is the retry policy around provider calls; each connection
	// gets its own breaker from it (nil: the zero Policy's defaults).
	Upstream *upstream.Policy
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
}

// A Request asks for a token.
type Request struct {
	Connection string
	Scopes     []string
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
}

// A Broker serves tokens. Its methods are safe for concurrent use.
type Broker struct {
	cache        cache.Cache
	conns        map[string]*conn
	names        []string
	now          func() time.Time
	log          *slog.Logger
	fetchTimeout time.Duration
	flights      singleflight.Group

	l1            l1
	l1MaxAge      time.Duration
	leaseTTL      time.Duration
	refreshAhead  bool
	afterFunc     func(time.Duration, func()) func() bool
	pub           cache.Publisher
	unsubscribe   func()
	closed        atomic.Bool
	stopSweep     chan struct{}
	lastCacheWarn atomic.Int64
	refreshes     atomic.Int64
	policy        *upstream.Policy
	metrics       *metrics.Metrics
	// oncePolicy never retries: for calls that spend something single-use
	// (a rotating refresh token), where a retry after a lost answer would
	// present a token the upstream already replaced.
	oncePolicy *upstream.Policy
}

type conn struct {
	Connection
	// keepsGrant: the provider keeps durable grant state (refresh tokens).
	keepsGrant bool
	// subject: the upstream account (providers.AccountBound), or "".
	subject string
	breaker *upstream.Breaker
	m       *metrics.Conn
	// lastLifetime is a time.Duration.
	lastLifetime atomic.Int64
	// grantMu serialises grant read-modify-write within this process, so
	// token keys of one connection never redeem one refresh token twice.
	grantMu sync.Mutex

	mu         sync.Mutex
	lastExpiry time.Time
	lastErr    string
}

// New returns a Broker. Connection names must be unique.
func New(o Options) (*Broker, error) {
	b := &Broker{
		cache:        o.Cache,
		conns:        make(map[string]*conn, len(o.Connections)),
		now:          o.Now,
		log:          o.Logger,
		fetchTimeout: o.FetchTimeout,
		l1MaxAge:     o.L1MaxAge,
		leaseTTL:     o.LeaseTTL,
		refreshAhead: !o.DisableRefreshAhead,
		afterFunc:    o.AfterFunc,
	}
	if b.l1MaxAge <= 0 {
		b.l1MaxAge = DefaultL1MaxAge
	}
	if b.leaseTTL <= 0 {
		b.leaseTTL = DefaultLeaseTTL
	}
	b.metrics = o.Metrics
	if b.metrics == nil {
		b.metrics = metrics.New()
	}
	b.policy = o.Upstream
	if b.policy == nil {
		b.policy = &upstream.Policy{}
	}
	once := *b.policy
	once.MaxAttempts = 1
	b.oncePolicy = &once
	if b.afterFunc == nil {
		b.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if b.cache == nil {
		return nil, errors.New("broker: no cache")
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
	for _, c := range o.Connections {
		if _, dup := b.conns[c.Name]; dup {
			return nil, fmt.Errorf("broker: duplicate connection %q", c.Name)
		}
		if c.Provider == nil {
			return nil, fmt.Errorf("broker: connection %q has no provider", c.Name)
		}
		_, isRef := c.Provider.(providers.Refresher)
		_, isAuth := c.Provider.(providers.Authorizer)
		cn := &conn{Connection: c, keepsGrant: isRef || isAuth, m: b.metrics.Connection(c.Name)}
		if ab, ok := c.Provider.(providers.AccountBound); ok {
			cn.subject = ab.Subject()
		}
		name := c.Name
		bc := b.policy.Breaker
		bc.OnStateChange = func(from, to string) {
			b.log.Warn("upstream circuit breaker", "connection", name, "from", from, "to", to)
			cn.m.BreakerChanged(to)
			if f := b.policy.Breaker.OnStateChange; f != nil {
				f(from, to)
			}
		}
		cn.breaker = upstream.NewBreaker(bc)
		b.conns[c.Name] = cn
		b.names = append(b.names, c.Name)
	}
	sort.Strings(b.names)
	if p, ok := b.cache.(cache.Publisher); ok {
		stop, err := p.Subscribe(context.Background(), invalidateChannel, b.onInvalidate)
		if err != nil {
			return nil, fmt.Errorf("broker: subscribe to invalidations: %w", err)
		}
		b.pub, b.unsubscribe = p, stop
	}
	b.stopSweep = make(chan struct{})
	go b.sweepEvery(b.l1MaxAge)
	return b, nil
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

// GetToken returns a token for the request's connection and scopes: the
// cached one while it is fresh, otherwise one from the upstream. Concurrent
// misses on one key share a single upstream request in this process, and
// replicas sharing a cache take a lease on the key so only one of them asks.
func (b *Broker) GetToken(ctx context.Context, req Request) (*Token, error) {
	c, err := b.connection(req.Connection)
	if err != nil {
		return nil, err
	}
	if req.MinTTL < 0 {
		return nil, fmt.Errorf("%w: min_ttl must not be negative", ErrInvalidArgument)
	}
	scopes, err := normalizeScopes(req.Scopes)
	if err != nil {
		return nil, err
	}
	key := tokenKey(c.Name, scopes)
	if !req.ForceRefresh {
		if t, ok := b.l1.get(key, b.now(), req.MinTTL, b.l1MaxAge); ok {
			c.m.Served(metrics.OutcomeL1Hit)
			return t, nil
		}
		if ct := b.readShared(ctx, c, key); ct != nil && ct.usable(b.now(), req.MinTTL) {
			b.remember(c, key, scopes, ct)
			c.m.Served(metrics.OutcomeSharedHit)
			return &ct.Token, nil
		}
	}
	if life := c.lifetime(); life > 0 && req.MinTTL >= life {
		return nil, fmt.Errorf("%w: min_ttl %v is longer than the tokens %q grants (%v)", ErrInvalidArgument, req.MinTTL, c.Name, life)
	}
	flight := key
	if req.ForceRefresh {
		flight += "\x00force"
	}
	ch := b.flights.DoChan(flight, func() (any, error) {
		// The fetch is shared, so it must not die with the first caller;
		// it does keep the first caller's deadline.
		fctx, cancel := b.fetchContext(ctx)
		defer cancel()
		o := fetchOptions{minTTL: req.MinTTL}
		if req.ForceRefresh {
			o.replaceBefore = b.currentExpiry(fctx, c, key)
		}
		t, err := b.fetch(fctx, c, key, scopes, o)
		if err == nil && req.ForceRefresh {
			b.announce(fctx, key)
		}
		return t, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		c.m.Served(metrics.OutcomeFetched)
		return r.Val.(*Token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *Broker) fetchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(b.fetchTimeout) // a real deadline, not the injected clock
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return context.WithDeadline(context.WithoutCancel(ctx), deadline)
}

// readShared returns the token in the shared cache, or nil. A token issued
// for another subject than c's (its key changed) counts as none.
func (b *Broker) readShared(ctx context.Context, c *conn, key string) *cachedToken {
	raw, err := b.cache.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) {
			b.cacheTrouble(ctx, "get", "cache read failed", err)
		}
		return nil
	}
	ct, err := decodeToken(raw)
	if err != nil {
		b.log.WarnContext(ctx, "cached token unreadable; fetching from upstream", "key", key, "err", err)
		return nil
	}
	if ct.subject != c.subject {
		b.log.InfoContext(ctx, "cached token was issued for another account (the connection's key changed); fetching a new one",
			"connection", c.Name, "cached_for", ct.subject, "configured", c.subject)
		return nil
	}
	return ct
}

// currentExpiry is the expiry of the token now cached for key (L1 or
// shared), or the zero time.
func (b *Broker) currentExpiry(ctx context.Context, c *conn, key string) time.Time {
	var t time.Time
	if e := b.l1.load(key); e != nil {
		t = e.tok.Expiry
	}
	if ct := b.readShared(ctx, c, key); ct != nil && ct.Expiry.After(t) {
		t = ct.Expiry
	}
	return t
}

// fetchOptions say which cached token a fetch may settle for.
type fetchOptions struct {
	minTTL time.Duration
	// replaceBefore: only a token expiring after this is new enough
	// (force_refresh and refresh-ahead replace the token they saw).
	replaceBefore time.Time
	// ahead: a background refresh, not a caller's miss.
	ahead bool
}

func (o fetchOptions) accepts(ct *cachedToken, now time.Time) bool {
	return ct != nil && ct.usable(now, o.minTTL) && ct.Expiry.After(o.replaceBefore)
}

// fetch obtains a token from the upstream under the key's lease, or waits
// for the replica that holds the lease and takes its result.
func (b *Broker) fetch(ctx context.Context, c *conn, key string, scopes []string, o fetchOptions) (*Token, error) {
	// A flight that finished just before this one started may have filled
	// the cache.
	if ct := b.readShared(ctx, c, key); o.accepts(ct, b.now()) {
		b.remember(c, key, scopes, ct)
		return &ct.Token, nil
	}
	locker, ok := b.cache.(cache.Locker)
	if !ok {
		return b.fetchHeld(ctx, c, key, scopes, o, nil)
	}
	name := lockName(c, key)
	wait := 5 * time.Millisecond
	waited := false
	for {
		lease, err := locker.TryLock(ctx, name, b.leaseTTL)
		switch {
		case err == nil:
			if waited {
				c.m.LockTakenOver()
				b.log.InfoContext(ctx, "lease taken over after waiting for another replica", "connection", c.Name)
			}
			return b.fetchHeld(ctx, c, key, scopes, o, lease)
		case errors.Is(err, cache.ErrLocked):
			// Another replica is fetching: wait for its result. If it
			// dies, its lease lapses and TryLock takes over.
			if !waited {
				c.m.LockWaited()
			}
			waited = true
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: waiting for another replica's fetch: %w", providers.ErrUnavailable, ctx.Err())
			case <-time.After(wait):
			}
			wait = min(wait*2, 200*time.Millisecond)
			if ct := b.readShared(ctx, c, key); o.accepts(ct, b.now()) {
				b.remember(c, key, scopes, ct)
				return &ct.Token, nil
			}
		default:
			// The shared cache is down: fetch without the cross-replica
			// lease; this process's single flight still holds.
			b.cacheTrouble(ctx, "lock", "lease unavailable; fetching without it", err)
			return b.fetchHeld(ctx, c, key, scopes, o, nil)
		}
	}
}

// lockName is the lease that guards key: the whole connection for providers
// that keep a grant (one refresh token, one holder), else the token key.
// The braces are the Redis Cluster hash tag shared with the keys written.
func lockName(c *conn, key string) string {
	if c.keepsGrant {
		return "{" + c.Name + "}"
	}
	return key
}

// fetchHeld runs the upstream request, holding lease when not nil.
func (b *Broker) fetchHeld(ctx context.Context, c *conn, key string, scopes []string, o fetchOptions, lease cache.Lease) (*Token, error) {
	set := b.cache.Set
	if lease != nil {
		set = lease.SetIfHeld
		stop := b.keepRenewed(ctx, c, lease)
		defer stop()
		// Another replica may have finished between our read and our lease.
		if ct := b.readShared(ctx, c, key); o.accepts(ct, b.now()) {
			b.remember(c, key, scopes, ct)
			return &ct.Token, nil
		}
	}
	start := b.now()
	c.m.Refreshed(o.ahead)
	pt, err := b.obtain(ctx, c, scopes, set)
	if err != nil {
		c.setError(err)
		b.log.WarnContext(ctx, "token fetch failed", "connection", c.Name, "scopes", scopes, "err", err)
		return nil, err
	}
	now := b.now()
	if !pt.Expiry.After(now) {
		err := fmt.Errorf("%w: token expired on arrival (expiry %s)", providers.ErrInvalidResponse, pt.Expiry.UTC().Format(time.RFC3339))
		c.setError(err)
		return nil, err
	}
	t := &Token{AccessToken: pt.AccessToken, TokenType: pt.TokenType, Expiry: pt.Expiry, Scopes: pt.Scopes}
	if t.Scopes == nil {
		t.Scopes = scopes
	}
	skew := min(c.Skew, pt.Expiry.Sub(start)/2)
	ct := &cachedToken{Token: *t, freshUntil: pt.Expiry.Add(-skew), subject: c.subject}
	if ttl := ct.freshUntil.Sub(now); ttl > 0 {
		if err := set(ctx, key, encodeToken(t, ct.freshUntil, c.subject), ttl); err != nil {
			// The token is good; other replicas will fetch their own.
			b.cacheTrouble(ctx, "set", "cache write failed", err)
		}
	}
	b.remember(c, key, scopes, ct)
	c.setExpiry(t.Expiry)
	c.setLifetime(pt.Expiry.Sub(start))
	if o.minTTL > 0 && t.Expiry.Sub(now) <= o.minTTL {
		return nil, fmt.Errorf("%w: min_ttl %v is longer than the tokens %q grants (%v)", ErrInvalidArgument, o.minTTL, c.Name, pt.Expiry.Sub(start))
	}
	b.log.InfoContext(ctx, "token fetched", "connection", c.Name, "scopes", scopes,
		"expires_at", t.Expiry.UTC(), "took", now.Sub(start))
	return t, nil
}

// keepRenewed renews lease every third of its TTL until stop is called.
func (b *Broker) keepRenewed(ctx context.Context, c *conn, lease cache.Lease) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(b.leaseTTL / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if err := lease.Renew(ctx, b.leaseTTL); err != nil {
					b.log.WarnContext(ctx, "lease renewal failed; writes will be refused if another replica took over",
						"connection", c.Name, "err", err)
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := lease.Release(rctx); err != nil {
			b.log.DebugContext(ctx, "lease release failed; it will lapse", "connection", c.Name, "err", err)
		}
	}
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

// obtain asks the provider for a token, refreshing a stored grant when the
// provider keeps one, and stores new grant state (through set) before
// returning.
func (b *Broker) obtain(ctx context.Context, c *conn, scopes []string, set setter) (*providers.Token, error) {
	preq := providers.Request{Scopes: scopes}
	ref, isRef := c.Provider.(providers.Refresher)
	_, isAuth := c.Provider.(providers.Authorizer)
	if !isRef && !isAuth {
		return b.callToken(ctx, c, preq)
	}
	c.grantMu.Lock()
	defer c.grantMu.Unlock()
	g, err := b.loadGrant(ctx, c.Name)
	if err != nil {
		if isAuth {
			return nil, err
		}
		// Without the store, a provider that needs no person can still
		// run its full grant.
		b.cacheTrouble(ctx, "get_grant", "grant unreadable; running the full grant", err)
		g = nil
	}
	if g != nil && g.Subject != c.subject {
		// Refreshing it would keep acting as the old account.
		b.log.InfoContext(ctx, "stored grant was made for another account (the connection's key changed); running the full grant",
			"connection", c.Name, "grant_for", g.Subject, "configured", c.subject)
		g = nil
	}
	if isRef && g.Usable(b.now()) {
		var t *providers.Token
		err := b.oncePolicy.DoWithBreaker(ctx, c.breaker, func(ctx context.Context) (err error) {
			t, err = ref.Refresh(ctx, preq, g)
			return err
		})
		if err == nil {
			return t, b.saveGrantWith(ctx, set, c, g, t)
		}
		if providers.OAuthCode(err) != providers.CodeInvalidGrant {
			return nil, err
		}
		if isAuth {
			revoked := *g
			revoked.State = providers.GrantRevoked
			revoked.UpdatedAt = b.now()
			if serr := b.storeGrantWith(ctx, set, c.Name, &revoked); serr != nil {
				return nil, serr
			}
			b.log.WarnContext(ctx, "grant revoked by upstream; a person must authorize again", "connection", c.Name)
			return nil, fmt.Errorf("%w: %w", providers.ErrRevoked, err)
		}
		b.log.InfoContext(ctx, "refresh token rejected; running the full grant", "connection", c.Name)
		g = nil
	}
	if isAuth {
		switch {
		case g == nil || g.State == providers.GrantNeedsAuthorization:
			return nil, providers.ErrNeedsAuthorization
		case g.State == providers.GrantRevoked:
			return nil, providers.ErrRevoked
		default:
			return nil, fmt.Errorf("%w: the grant has no usable refresh token", providers.ErrNeedsAuthorization)
		}
	}
	t, err := b.callToken(ctx, c, preq)
	if err != nil {
		return nil, err
	}
	return t, b.saveGrantWith(ctx, set, c, g, t)
}

// callToken runs the provider's full grant under the retry policy and the
// connection's breaker. Full grants are safe to repeat.
func (b *Broker) callToken(ctx context.Context, c *conn, req providers.Request) (*providers.Token, error) {
	var t *providers.Token
	err := b.policy.DoWithBreaker(ctx, c.breaker, func(ctx context.Context) (err error) {
		t, err = c.Provider.Token(ctx, req)
		return err
	})
	return t, err
}

// setter writes to the shared cache: Cache.Set, or Lease.SetIfHeld under a lease.
type setter func(ctx context.Context, key string, value []byte, ttl time.Duration) error

// saveGrantWith stores t.Grant through set. A provider that can run its full
// grant without a person (WX) loses nothing but a refresh token when the
// store fails, so its token is still handed out; an Authorizer's is not.
func (b *Broker) saveGrantWith(ctx context.Context, set setter, c *conn, old *providers.Grant, t *providers.Token) error {
	if t.Grant != nil {
		t.Grant.Subject = c.subject
	}
	err := b.mergeAndStoreGrant(ctx, set, c.Name, old, t)
	if err == nil {
		return nil
	}
	if _, isAuth := c.Provider.(providers.Authorizer); isAuth {
		return err
	}
	b.log.WarnContext(ctx, "new grant not stored; the next token will run the full grant", "connection", c.Name, "err", err)
	return nil
}

// saveGrant stores t.Grant, if any, merged over old: a refresh response
// without a refresh token keeps the old one, and a device secret stays with
// its grant.
func (b *Broker) saveGrant(ctx context.Context, conn string, old *providers.Grant, t *providers.Token) error {
	return b.mergeAndStoreGrant(ctx, b.cache.Set, conn, old, t)
}

func (b *Broker) mergeAndStoreGrant(ctx context.Context, set setter, conn string, old *providers.Grant, t *providers.Token) error {
	if t.Grant == nil {
		return nil
	}
	g := *t.Grant
	if old != nil {
		if g.RefreshToken.IsZero() {
			g.RefreshToken, g.RefreshExpiry = old.RefreshToken, old.RefreshExpiry
		}
		if g.DeviceSecret.IsZero() {
			g.DeviceSecret = old.DeviceSecret
		}
		if g.Scopes == nil {
			g.Scopes = old.Scopes
		}
	}
	g.State = providers.GrantReady
	g.UpdatedAt = b.now()
	return b.storeGrantWith(ctx, set, conn, &g)
}

func (b *Broker) storeGrant(ctx context.Context, conn string, g *providers.Grant) error {
	return b.storeGrantWith(ctx, b.cache.Set, conn, g)
}

func (b *Broker) storeGrantWith(ctx context.Context, set setter, conn string, g *providers.Grant) error {
	raw, err := encodeGrant(g)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	if err := set(ctx, grantKey(conn), raw, 0); err != nil {
		return fmt.Errorf("%w: write grant: %w", ErrStore, err)
	}
	return nil
}

// loadGrant returns the stored grant, or nil when there is none.
func (b *Broker) loadGrant(ctx context.Context, conn string) (*providers.Grant, error) {
	raw, err := b.cache.Get(ctx, grantKey(conn))
	if errors.Is(err, cache.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read grant: %w", ErrStore, err)
	}
	g, err := decodeGrant(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: grant of %q unreadable: %w", ErrStore, conn, err)
	}
	return g, nil
}

// Invalidate drops the cached token for (connection, scopes), here and, by
// announcement, in every replica's L1. With a non-empty accessToken it
// drops it only if it is still that token, so N callers reporting one dead
// token cause one refresh. It reports whether a token was dropped.
func (b *Broker) Invalidate(ctx context.Context, connection string, scopes []string, accessToken string) (bool, error) {
	c, err := b.connection(connection)
	if err != nil {
		return false, err
	}
	scopes, err = normalizeScopes(scopes)
	if err != nil {
		return false, err
	}
	key := tokenKey(c.Name, scopes)
	matches := func(t *Token) bool {
		return accessToken == "" || subtle.ConstantTimeCompare([]byte(t.AccessToken.Reveal()), []byte(accessToken)) == 1
	}
	dropped := false
	if e := b.l1.load(key); e != nil && matches(&e.tok) {
		b.l1.drop(key, e)
		dropped = true
	}
	raw, err := b.cache.Get(ctx, key)
	switch {
	case errors.Is(err, cache.ErrNotFound):
	case err != nil:
		return dropped, fmt.Errorf("%w: %w", ErrStore, err)
	default:
		ct, derr := decodeToken(raw)
		if derr != nil || matches(&ct.Token) {
			done, err := b.deleteIfUnchanged(ctx, key, raw)
			if err != nil {
				return dropped, err
			}
			dropped = dropped || done
		}
	}
	if dropped {
		b.announce(ctx, key)
	}
	return dropped, nil
}

func (b *Broker) deleteIfUnchanged(ctx context.Context, key string, raw []byte) (bool, error) {
	cad, ok := b.cache.(cache.CompareAndDeleter)
	if !ok {
		if err := b.cache.Delete(ctx, key); err != nil {
			return false, fmt.Errorf("%w: %w", ErrStore, err)
		}
		return true, nil
	}
	done, err := cad.CompareAndDelete(ctx, key, raw)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrStore, err)
	}
	return done, nil
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
}

// Connections describes every connection, sorted by name.
func (b *Broker) Connections(ctx context.Context) []ConnectionInfo {
	out := make([]ConnectionInfo, 0, len(b.names))
	for _, name := range b.names {
		c := b.conns[name]
		info := ConnectionInfo{Name: name, Type: c.Type, State: StateReady}
		c.mu.Lock()
		info.TokenExpiry, info.LastError = c.lastExpiry, c.lastErr
		c.mu.Unlock()
		if info.LastError != "" {
			info.State = StateFailing
		}
		if d, ok := c.Provider.(providers.Describer); ok {
			info.Details = d.Describe()
		}
		_, isRef := c.Provider.(providers.Refresher)
		_, isAuth := c.Provider.(providers.Authorizer)
		if isRef || isAuth {
			g, err := b.loadGrant(ctx, name)
			if g != nil && g.Subject != c.subject {
				g = nil // another account's: the next fetch replaces it
			}
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
			case isAuth:
				info.State = StateNeedsAuthorization
			}
		}
		out = append(out, info)
	}
	return out
}

func (c *conn) setError(err error) {
	c.mu.Lock()
	c.lastErr = err.Error()
	c.mu.Unlock()
}

// lifetime is how long the last token fetched for c lived when new: a
// min_ttl at least that long can never be met.
func (c *conn) lifetime() time.Duration { return time.Duration(c.lastLifetime.Load()) }

func (c *conn) setLifetime(d time.Duration) { c.lastLifetime.Store(int64(d)) }

func (c *conn) setExpiry(t time.Time) {
	c.mu.Lock()
	c.lastExpiry, c.lastErr = t, ""
	c.mu.Unlock()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
