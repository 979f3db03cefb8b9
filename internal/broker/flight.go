package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// A flight is one fetch of a key shared by every caller that asks for the
// key while it runs. It runs on the broker's budget (FetchTimeout), in a
// goroutine of its own: callers wait for done with their own deadlines and
// leave without touching it, so something single-use that it spends (a
// rotating refresh token) is always spent to the end and its result stored.
type flight struct {
	done chan struct{}
	// Set before done is closed.
	tok *Token
	// fetched: tok came from the upstream, not from the shared cache.
	fetched bool
	err     error
	// waiters counts the callers that waited for it (tests).
	waiters atomic.Int32
}

// flights are the flights running in this process, by key.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

// fetchOptions say which cached token a flight may settle for.
type fetchOptions struct {
	// replaceBefore: only a token expiring after this is new enough (a
	// caller whose min_ttl the cached one misses; refresh-ahead).
	replaceBefore time.Time
	// force: replace whatever is cached (force_refresh).
	force bool
	// ahead: a background refresh, not a caller's miss.
	ahead bool
}

func (o fetchOptions) flightKey(key string) string {
	switch {
	case o.force:
		return key + "\x00force"
	case !o.replaceBefore.IsZero():
		return key + "\x00after" + o.replaceBefore.Format(time.RFC3339Nano)
	}
	return key
}

func (o fetchOptions) accepts(ct *cachedToken, now time.Time) bool {
	return ct.usable(now, 0) && ct.Expiry.After(o.replaceBefore)
}

// join returns the running flight for key with options o, starting one if
// there is none. ctx lends the flight its values (logging, tracing), never
// its deadline or cancellation.
func (b *Broker) join(ctx context.Context, c *conn, account, key string, scopes []string, o fetchOptions) *flight {
	fk := o.flightKey(key)
	b.flights.mu.Lock()
	defer b.flights.mu.Unlock()
	if f, ok := b.flights.m[fk]; ok {
		return f
	}
	if b.flights.m == nil {
		b.flights.m = map[string]*flight{}
	}
	f := &flight{done: make(chan struct{})}
	b.flights.m[fk] = f
	go func() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
		defer cancel()
		f.tok, f.fetched, f.err = b.fetch(fctx, c, account, key, scopes, o)
		if o.force && f.fetched {
			b.announce(fctx, key)
		}
		b.flights.mu.Lock()
		delete(b.flights.m, fk)
		b.flights.mu.Unlock()
		close(f.done)
	}()
	return f
}

// Polling for another replica's fetch.
const (
	leasePollInitial = 5 * time.Millisecond
	leasePollMax     = 200 * time.Millisecond
)

// fetch obtains a token for key from the upstream under the key's lease,
// or takes the result of the replica that holds the lease. Taking the lease
// reads the key (and the account's grant) in the same round trip; the
// token and the grant are written, fenced, with the lease's release.
func (b *Broker) fetch(ctx context.Context, c *conn, account, key string, scopes []string, o fetchOptions) (*Token, bool, error) {
	keys := []string{key}
	if c.keepsGrant {
		keys = append(keys, grantKey(c.Name, account))
	}
	var lease cache.Lease
	var values [][]byte
	err := b.waitForLease(ctx, c, lockName(c, account, key), keys, func(vals [][]byte) bool {
		ct, rej := b.decodeShared(ctx, c, account, key, vals[0])
		if o.force && o.replaceBefore.IsZero() {
			// The token to replace is the one cached when the flight began.
			o.replaceBefore = b.currentExpiry(key, ct)
		}
		// A remembered rejection is answered even to force_refresh, so a
		// looping caller cannot hammer the upstream.
		return rej != nil || o.accepts(ct, b.now())
	}, &lease, &values)
	switch {
	case err == nil && lease == nil:
		// Found what another flight stored.
		ct, rej := b.decodeShared(ctx, c, account, key, values[0])
		if rej != nil {
			return nil, false, rej
		}
		b.remember(c, account, key, scopes, ct)
		return &ct.Token, false, nil
	case err == nil:
		h := held{c: c, account: account, key: key, scopes: scopes, o: o, lease: lease}
		if c.keepsGrant && values[1] != nil {
			if h.g, h.meta, err = b.decodeGrant(c, values[1]); err != nil {
				_ = lease.Release(ctx)
				return nil, false, err
			}
			h.stored = true
		}
		if c.keepsGrant {
			h.g, h.dirty = c.takePending(account, h.g)
		}
		return b.fetchHeld(ctx, h)
	case errors.Is(err, errWaitedTooLong), ctx.Err() != nil:
		return nil, false, err
	default:
		// The shared cache is down: fetch without the cross-replica lease;
		// this process's single flight still holds.
		b.cacheTrouble(ctx, "lock", "lease unavailable; fetching without it", err)
		if c.authorizer != nil || account != "" {
			return nil, false, fmt.Errorf("%w: read grant: %w", ErrStore, err)
		}
		return b.fetchHeld(ctx, held{c: c, account: account, key: key, scopes: scopes, o: o})
	}
}

// errWaitedTooLong: the flight's budget ran out waiting for another
// replica's lease.
var errWaitedTooLong = errors.New("waiting for another replica's fetch")

// waitForLease takes the lease on name, reading keys. While another holder
// has it, it polls, and returns without a lease (nil error, *lease nil) as
// soon as done accepts the values read. The values of the last read are
// left in *values. Any other failure to reach the store is returned.
func (b *Broker) waitForLease(ctx context.Context, c *conn, name string, keys []string, done func([][]byte) bool,
	lease *cache.Lease, values *[][]byte) error {
	wait := leasePollInitial
	waited := false
	for {
		l, vals, err := b.store.TryLock(ctx, name, b.leaseTTL, keys...)
		*values = vals
		if vals != nil && done != nil && done(vals) {
			if l != nil {
				if rerr := l.Release(ctx); rerr != nil {
					b.log.DebugContext(ctx, "lease release failed; it will lapse", "connection", c.Name, "err", rerr)
				}
			}
			return nil
		}
		switch {
		case err == nil:
			if waited {
				c.m.LockTakenOver()
				b.log.InfoContext(ctx, "lease taken after waiting for another replica", "connection", c.Name)
			}
			*lease = l
			return nil
		case !errors.Is(err, cache.ErrLocked):
			return err
		}
		// Another replica is fetching: wait for its result. If it dies,
		// its lease lapses and TryLock takes over.
		if !waited {
			c.m.LockWaited()
			waited = true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %w: %w", providers.ErrUnavailable, errWaitedTooLong, ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, leasePollMax)
	}
}

// currentExpiry is the expiry of the token cached for key, here or in ct
// (the shared cache's), or the zero time.
func (b *Broker) currentExpiry(key string, ct *cachedToken) time.Time {
	var t time.Time
	if e := b.l1.load(key); e != nil {
		t = e.tok.Expiry
	}
	if ct != nil && ct.Expiry.After(t) {
		t = ct.Expiry
	}
	return t
}

// lockName is the lease that guards key: the whole account for providers
// that keep a grant (one refresh token, one holder), else the token key.
// The braces are the Redis Cluster hash tag shared with the keys written.
func lockName(c *conn, account, key string) string {
	if c.keepsGrant {
		return "{" + tag(c.Name, account) + "}"
	}
	return key
}

// held is a fetch under way: what it is for and what the lease read.
type held struct {
	c       *conn
	account string
	key     string
	scopes  []string
	o       fetchOptions
	lease   cache.Lease // nil: the store is down
	g       *providers.Grant
	meta    grantMeta
	// stored: g was read from the store; dirty: g is a grant the store
	// has not got yet (see conn.keepPending), written in any case.
	stored, dirty bool
}

// fetchHeld runs the upstream request holding h.lease, starting from
// grant h.g, and commits what it obtained: the token and the grant's new
// state, or the rejection to remember.
func (b *Broker) fetchHeld(ctx context.Context, h held) (*Token, bool, error) {
	c := h.c
	if c.keepsGrant && h.lease == nil {
		c.grantMu.Lock()
		defer c.grantMu.Unlock()
	}
	stopRenewing := func() {}
	if h.lease != nil {
		stopRenewing = b.keepRenewed(ctx, c, h.lease)
		defer stopRenewing()
	}
	start := b.now()
	c.m.Refreshed(h.o.ahead)
	pt, ng, err := b.obtain(ctx, c, h.account, h.scopes, h.g)
	stopRenewing()
	if ng == nil && (h.dirty || h.g != nil && c.keepsGrant) {
		ng = h.g // its metadata changes, or the store lacks it
	}
	if err == nil && !pt.Expiry.After(b.now()) {
		err = fmt.Errorf("%w: token expired on arrival (expiry %s)", providers.ErrInvalidResponse, pt.Expiry.UTC().Format(time.RFC3339))
	}
	var writes []cache.Write
	if err != nil {
		if rej := b.rejection(c, err); rej != nil {
			writes = append(writes, cache.Write{Key: h.key, Value: rej, TTL: b.rejectionTTL})
		}
		fault := c.recordFault(err)
		if ng != nil && (fault || h.dirty || ng != h.g) {
			m := h.meta
			if fault {
				m.lastError = err.Error()
			}
			writes = append(writes, b.grantWrite(c, h.account, ng, m)...)
		}
		if werr := b.commit(ctx, c, h.lease, writes); werr != nil && ng != nil && (h.dirty || ng != h.g) {
			c.keepPending(h.account, h.g, ng)
		}
		switch {
		case c.keepsGrant && errors.Is(err, providers.ErrRevoked):
			b.markState(ctx, c, h.account, StateRevoked)
		case c.keepsGrant && h.g != nil && errors.Is(err, providers.ErrNeedsAuthorization):
			b.markState(ctx, c, h.account, StateNeedsAuthorization)
		case c.keepsGrant && h.g != nil && fault && h.meta.lastError == "":
			b.markState(ctx, c, h.account, StateFailing)
		}
		if fault {
			b.log.WarnContext(ctx, "token fetch failed", "connection", c.Name, "account", h.account, "scopes", h.scopes, "err", err)
		} else {
			b.log.InfoContext(ctx, "token request rejected", "connection", c.Name, "account", h.account, "scopes", h.scopes, "err", err)
		}
		return nil, false, err
	}
	now := b.now()
	t := &Token{AccessToken: pt.AccessToken, TokenType: pt.TokenType, Expiry: pt.Expiry, Scopes: pt.Scopes}
	if t.Scopes == nil {
		t.Scopes = h.scopes
	}
	skew := min(c.Skew, pt.Expiry.Sub(start)/2)
	subject := c.subjectOf(h.account)
	ct := &cachedToken{Token: *t, freshUntil: pt.Expiry.Add(-skew), subject: subject}
	if ttl := ct.freshUntil.Sub(now); ttl > 0 {
		writes = append(writes, cache.Write{Key: h.key, Value: encodeToken(t, ct.freshUntil, subject), TTL: ttl})
	}
	if ng != nil {
		m := h.meta
		m.addKey(h.key)
		m.tokenExpiry, m.lastError = t.Expiry, ""
		writes = append(writes, b.grantWrite(c, h.account, ng, m)...)
	}
	if err := b.commit(ctx, c, h.lease, writes); err != nil && ng != nil && (h.dirty || ng != h.g) {
		// The refresh token is spent: the new grant is kept in memory and
		// written under the lease by this replica's next fetch. Should the
		// process end first, the account reports REVOKED at its next
		// refresh and a person authorizes again.
		c.keepPending(h.account, h.g, ng)
		b.log.ErrorContext(ctx, "new grant not stored; kept in memory until the store takes it", "connection", c.Name, "account", h.account, "err", err)
	}
	if ng != nil && !h.stored {
		b.indexAccount(ctx, c, h.account)
	}
	if h.meta.lastError != "" {
		b.markState(ctx, c, h.account, StateReady)
	}
	if ng != nil && ng != h.g && (!c.grantDeath(ng).IsZero() || h.g != nil && !c.grantDeath(h.g).IsZero()) {
		b.schedule(ctx, c, h.account, ng)
	}
	b.remember(c, h.account, h.key, h.scopes, ct)
	c.served(t.Expiry, pt.Expiry.Sub(start))
	b.log.InfoContext(ctx, "token fetched", "connection", c.Name, "account", h.account, "scopes", h.scopes,
		"expires_at", t.Expiry.UTC(), "took", now.Sub(start))
	return t, true, nil
}

// grantWrite is the write that stores g with m for (c, account), or none
// when g cannot be encoded (logged: it never happens with valid grants).
func (b *Broker) grantWrite(c *conn, account string, g *providers.Grant, m grantMeta) []cache.Write {
	raw, err := encodeGrant(g, m)
	if err != nil {
		b.log.Error("grant not encodable", "connection", c.Name, "err", err)
		return nil
	}
	return []cache.Write{{Key: grantKey(c.Name, account), Value: raw}}
}

// commit writes writes: fenced, releasing lease, when there is one; else
// one by one. A failure is logged as cache trouble and returned wrapped in
// ErrStore.
func (b *Broker) commit(ctx context.Context, c *conn, lease cache.Lease, writes []cache.Write) error {
	var err error
	if lease != nil {
		err = lease.Commit(ctx, writes...)
	} else {
		for _, w := range writes {
			err = errors.Join(err, b.store.Set(ctx, w.Key, w.Value, w.TTL))
		}
	}
	if err != nil {
		b.cacheTrouble(ctx, "set", "cache write failed", err)
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	return nil
}

// keepRenewed renews lease every third of its TTL until stop is called
// (stop may be called more than once). It runs on the flight's context: no
// caller's.
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
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-finished
		})
	}
}
