package memory

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

var _ cache.Locker = (*Cache)(nil)

// locks is the embedded cache's lease table. One process uses the embedded
// cache, so leases only order goroutines; they expire by the injected clock
// like everything else.
type locks struct {
	mu   sync.Mutex
	held map[string]heldLock
	next uint64
}

type heldLock struct {
	id      uint64
	expires time.Time
}

// TryLock implements cache.Locker.
func (c *Cache) TryLock(_ context.Context, name string, ttl time.Duration) (cache.Lease, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("memory: lock: %w", cache.ErrClosed)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("memory: lock: %w", cache.ErrInvalidTTL)
	}
	c.locks.mu.Lock()
	defer c.locks.mu.Unlock()
	now := c.now()
	if h, ok := c.locks.held[name]; ok && now.Before(h.expires) {
		return nil, fmt.Errorf("memory: lock: %w", cache.ErrLocked)
	}
	if c.locks.held == nil {
		c.locks.held = map[string]heldLock{}
	}
	c.locks.next++
	c.locks.held[name] = heldLock{id: c.locks.next, expires: now.Add(ttl)}
	return &lease{c: c, name: name, id: c.locks.next}, nil
}

type lease struct {
	c    *Cache
	name string
	id   uint64
}

// holding runs fn while the lease is held, under the lease table's lock.
func (l *lease) holding(fn func() error) error {
	l.c.locks.mu.Lock()
	defer l.c.locks.mu.Unlock()
	h, ok := l.c.locks.held[l.name]
	if !ok || h.id != l.id || !l.c.now().Before(h.expires) {
		return fmt.Errorf("memory: %w", cache.ErrLeaseLost)
	}
	return fn()
}

func (l *lease) Renew(_ context.Context, ttl time.Duration) error {
	return l.holding(func() error {
		l.c.locks.held[l.name] = heldLock{id: l.id, expires: l.c.now().Add(ttl)}
		return nil
	})
}

func (l *lease) SetIfHeld(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return l.holding(func() error { return l.c.Set(ctx, key, value, ttl) })
}

func (l *lease) Release(context.Context) error {
	l.c.locks.mu.Lock()
	defer l.c.locks.mu.Unlock()
	if h, ok := l.c.locks.held[l.name]; ok && h.id == l.id {
		delete(l.c.locks.held, l.name)
	}
	return nil
}
