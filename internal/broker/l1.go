package broker

import (
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
	account    string
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

// get returns key's token if it can be served at now to a caller needing
// minTTL without asking the shared cache: fresh, and checked within maxAge.
func (l *l1) get(key string, now time.Time, minTTL, maxAge time.Duration) (*Token, bool) {
	e := l.load(key)
	if !e.usable(now, minTTL) || now.Sub(e.checked) >= maxAge {
		return nil, false
	}
	return &e.tok, true
}

// usable reports whether e's token is fresh at now for minTTL, whatever
// e's age, and counts a use.
func (e *l1Entry) usable(now time.Time, minTTL time.Duration) bool {
	if e == nil || !now.Before(e.freshUntil) || e.tok.Expiry.Sub(now) <= minTTL {
		return false
	}
	e.lastUsed.Store(now.UnixNano())
	return true
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

// dropTag removes every entry of the (connection, account) tag t.
func (l *l1) dropTag(t string) {
	l.m.Range(func(k, v any) bool {
		if e := v.(*l1Entry); tag(e.c.Name, e.account) == t {
			l.drop(k.(string), e)
		}
		return true
	})
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
