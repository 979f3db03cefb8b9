package broker

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the in-process cache and the cross-replica lease.
const (
	DefaultL1MaxAge = 30 * time.Second
	DefaultLeaseTTL = 10 * time.Second
	// invalidateChannel carries token keys whose L1 copies must go.
	invalidateChannel = "invalidate"
)

// l1 is the in-process cache in front of the shared one: a hit costs no
// round trip. An entry is trusted for at most maxAge after it was read from
// or written to the shared cache, which bounds how stale a replica can be
// when an invalidation message is lost.
type l1 struct {
	m sync.Map // token key → *l1Entry
}

type l1Entry struct {
	tok        Token
	freshUntil time.Time
	checked    time.Time
	c          *conn
	scopes     []string
	// lastUsed is the Unix nanosecond time of the last hit, for refresh-ahead.
	lastUsed atomic.Int64
	stop     func() bool // cancels the refresh-ahead timer
}

func (l *l1) load(key string) *l1Entry {
	v, ok := l.m.Load(key)
	if !ok {
		return nil
	}
	return v.(*l1Entry)
}

func (l *l1) get(key string, now time.Time, minTTL, maxAge time.Duration) (*Token, bool) {
	e := l.load(key)
	if e == nil || !now.Before(e.freshUntil) || e.tok.Expiry.Sub(now) <= minTTL || now.Sub(e.checked) >= maxAge {
		return nil, false
	}
	e.lastUsed.Store(now.UnixNano())
	return &e.tok, true
}

// drop removes key's entry if it is e (or any entry when e is nil).
func (l *l1) drop(key string, e *l1Entry) {
	if e == nil {
		v, ok := l.m.LoadAndDelete(key)
		if ok {
			v.(*l1Entry).cancel()
		}
		return
	}
	if l.m.CompareAndDelete(key, e) {
		e.cancel()
	}
}

// sweep drops the entries no caller can be served from any more: past their
// fresh period, or neither used nor re-checked for maxAge (an entry older
// than maxAge is only served after a shared-cache read, which replaces it).
// Without it, every key ever asked for would stay in memory until restart.
// It returns how many entries it dropped.
func (l *l1) sweep(now time.Time, maxAge time.Duration) int {
	n := 0
	l.m.Range(func(k, v any) bool {
		e := v.(*l1Entry)
		idle := now.Sub(e.checked) >= maxAge && now.Sub(time.Unix(0, e.lastUsed.Load())) >= maxAge
		if !now.Before(e.freshUntil) || idle {
			if l.m.CompareAndDelete(k, e) {
				e.cancel()
				n++
			}
		}
		return true
	})
	return n
}

// sweepEvery sweeps L1 every interval until Close.
func (b *Broker) sweepEvery(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.l1.sweep(b.now(), b.l1MaxAge)
		case <-b.stopSweep:
			return
		}
	}
}

func (e *l1Entry) cancel() {
	if e.stop != nil {
		e.stop()
	}
}

func (ct *cachedToken) usable(now time.Time, minTTL time.Duration) bool {
	return now.Before(ct.freshUntil) && ct.Expiry.Sub(now) > minTTL
}

// remember puts a token read from or written to the shared cache into L1
// and schedules its refresh-ahead.
func (b *Broker) remember(c *conn, key string, scopes []string, ct *cachedToken) {
	now := b.now()
	e := &l1Entry{tok: ct.Token, freshUntil: ct.freshUntil, checked: now, c: c, scopes: scopes}
	// Every path here is a use: a caller's hit on the shared cache, or a
	// fetch some caller (or refresh-ahead) asked for.
	e.lastUsed.Store(now.UnixNano())
	if b.refreshAhead {
		b.scheduleRefresh(key, e, now)
	}
	if prev, loaded := b.l1.m.Swap(key, e); loaded {
		prev.(*l1Entry).cancel()
	}
}

// scheduleRefresh arranges for a used token to be replaced in the
// background shortly before its fresh period ends, so callers in steady
// state never wait for the upstream. The moment is jittered per token so
// replicas and tokens do not all wake at once; all replicas that wake take
// the same lease, and the losers find the winner's token.
func (b *Broker) scheduleRefresh(key string, e *l1Entry, now time.Time) {
	life := e.freshUntil.Sub(now)
	ahead := min(max(life/10, time.Second), 5*time.Minute)
	ahead += time.Duration(rand.Int64N(int64(ahead)/2 + 1))
	delay := life - ahead
	if delay <= 0 {
		return
	}
	e.stop = b.afterFunc(delay, func() { b.refreshAheadNow(key, e) })
}

// refreshAheadNow replaces e's token if it is still current and was used
// during the second half of its fresh period.
func (b *Broker) refreshAheadNow(key string, e *l1Entry) {
	if b.closed.Load() || b.l1.load(key) != e {
		return
	}
	halfway := e.checked.Add(e.freshUntil.Sub(e.checked) / 2)
	if time.Unix(0, e.lastUsed.Load()).Before(halfway) {
		return // idle: let it expire
	}
	b.refreshes.Add(1)
	_, _, _ = b.flights.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), b.fetchTimeout)
		defer cancel()
		t, err := b.fetch(ctx, e.c, key, e.scopes, fetchOptions{replaceBefore: e.tok.Expiry, ahead: true})
		if err != nil {
			b.log.WarnContext(ctx, "refresh-ahead failed; callers will fetch on demand", "connection", e.c.Name, "err", err)
		}
		return t, err
	})
}

// announce tells every replica to drop its L1 copy of key, and drops ours.
func (b *Broker) announce(ctx context.Context, key string) {
	if b.pub == nil {
		return
	}
	if err := b.pub.Publish(ctx, invalidateChannel, []byte(key)); err != nil {
		b.cacheTrouble(ctx, "publish", "invalidation not published; other replicas catch up within l1_max_age", err)
	}
}

// onInvalidate handles another replica's announcement.
func (b *Broker) onInvalidate(msg []byte) {
	b.l1.drop(string(msg), nil)
}

// Close stops background work: refresh-ahead timers and the invalidation
// subscription. It does not close the cache.
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
