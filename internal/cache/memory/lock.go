package memory

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// locks is the embedded cache's lease table. One process uses the embedded
// cache, so leases only order goroutines; they expire by the injected clock
// like everything else. Its mutex also makes a TryLock's reads, and a
// Commit's writes, one step for every other lease user.
type locks struct {
	mu   sync.Mutex
	held map[string]heldLock
	next uint64
}

type heldLock struct {
	id      uint64
	expires time.Time
}

// TryLock implements cache.Cache.
func (c *Cache) TryLock(ctx context.Context, name string, ttl time.Duration, keys ...string) (cache.Lease, [][]byte, error) {
	if c.closed.Load() {
		return nil, nil, fmt.Errorf("memory: lock: %w", cache.ErrClosed)
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("memory: lock: %w", cache.ErrInvalidTTL)
	}
	c.locks.mu.Lock()
	defer c.locks.mu.Unlock()
	values := make([][]byte, len(keys))
	for i, k := range keys {
		v, err := c.Get(ctx, k)
		switch {
		case errors.Is(err, cache.ErrNotFound):
		case err != nil:
			return nil, nil, err
		default:
			values[i] = v
		}
	}
	now := c.now()
	if h, ok := c.locks.held[name]; ok && now.Before(h.expires) {
		return nil, values, fmt.Errorf("memory: lock: %w", cache.ErrLocked)
	}
	if c.locks.held == nil {
		c.locks.held = map[string]heldLock{}
	}
	c.locks.next++
	c.locks.held[name] = heldLock{id: c.locks.next, expires: now.Add(ttl)}
	return &lease{c: c, name: name, id: c.locks.next}, values, nil
}

type lease struct {
	c    *Cache
	name string
	id   uint64
}

// heldLocked reports whether the lease is still held; locks.mu is held.
func (l *lease) heldLocked() bool {
	h, ok := l.c.locks.held[l.name]
	return ok && h.id == l.id && l.c.now().Before(h.expires)
}

func (l *lease) Renew(_ context.Context, ttl time.Duration) error {
	l.c.locks.mu.Lock()
	defer l.c.locks.mu.Unlock()
	if !l.heldLocked() {
		return fmt.Errorf("memory: renew lease: %w", cache.ErrLeaseLost)
	}
	l.c.locks.held[l.name] = heldLock{id: l.id, expires: l.c.now().Add(ttl)}
	return nil
}

func (l *lease) Commit(ctx context.Context, writes ...cache.Write) error {
	for _, w := range writes {
		if !w.Delete && w.TTL < 0 {
			return fmt.Errorf("memory: commit: %w", cache.ErrInvalidTTL)
		}
	}
	l.c.locks.mu.Lock()
	defer l.c.locks.mu.Unlock()
	if len(writes) > 0 && !l.heldLocked() {
		return fmt.Errorf("memory: commit: %w", cache.ErrLeaseLost)
	}
	var errs []error
	for _, w := range writes {
		if w.Delete {
			errs = append(errs, l.c.Delete(ctx, w.Key))
		} else {
			errs = append(errs, l.c.Set(ctx, w.Key, w.Value, w.TTL))
		}
	}
	l.releaseLocked()
	return errors.Join(errs...)
}

func (l *lease) Release(context.Context) error {
	l.c.locks.mu.Lock()
	defer l.c.locks.mu.Unlock()
	l.releaseLocked()
	return nil
}

func (l *lease) releaseLocked() {
	if h, ok := l.c.locks.held[l.name]; ok && h.id == l.id {
		delete(l.c.locks.held, l.name)
	}
}
