// Package sealed encrypts a cache at rest: a cache.Cache decorator that
// seals every value with AES-256-GCM before it reaches the inner cache
// (Redis, or the memory cache's state file) and opens it on the way back.
//
// Each value carries the id of the key that sealed it, so a Keyring can hold
// several keys: new values are sealed with the primary key and any key
// opens the values it sealed. To rotate, add a key to every replica's
// keyring with the primary unchanged, then make it primary, so that no
// replica meets a key id it lacks; remove the old key once every value it
// sealed has expired or been rewritten.
//
// The storage key is authenticated with the value, so a value moved or
// copied under another key fails to open (ErrDecrypt).
//
// Keys are not encrypted, and the storage key that is authenticated is the
// one given to this Cache: a namespace the inner cache adds (redis
// Options.Prefix) is not covered.
package sealed

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// Cache is a cache.Cache that stores its values sealed in an inner cache.
// It also implements cache.Publisher: see Publish.
// All methods are safe for concurrent use if the inner cache's are.
//
// Errors from the inner cache are returned unchanged (cache.ErrNotFound,
// cache.ErrClosed, …). A stored value that cannot be opened is an error
// wrapping ErrDecrypt. Errors never contain values, nor storage keys.
type Cache struct {
	inner cache.Cache
	kr    *Keyring
	rand  io.Reader
}

var (
	_ cache.Cache     = (*Cache)(nil)
	_ cache.Publisher = (*Cache)(nil)
)

// New returns a Cache sealing values with kr into inner, reading nonces
// from rand (nil means crypto/rand.Reader). The Cache owns inner from then
// on: Close closes it. New panics if inner or kr is nil.
func New(inner cache.Cache, kr *Keyring, rand io.Reader) *Cache {
	if inner == nil || kr == nil {
		panic("sealed: New with a nil inner cache or keyring")
	}
	if rand == nil {
		rand = cryptorand.Reader
	}
	return &Cache{inner: inner, kr: kr, rand: rand}
}

// maxCADAttempts bounds CompareAndDelete's retries when the stored value
// keeps being rewritten with the same plaintext between its read and its
// delete.
const maxCADAttempts = 4

// Get implements cache.Cache.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := c.inner.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return c.kr.Open(key, v)
}

// Set implements cache.Cache.
func (c *Cache) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if ttl < 0 { // checked here too, so a bad call costs no randomness
		return fmt.Errorf("sealed: set: %w", cache.ErrInvalidTTL)
	}
	v, err := c.kr.Seal(c.rand, key, value)
	if err != nil {
		return fmt.Errorf("sealed: set: %w", err)
	}
	return c.inner.Set(ctx, key, v, ttl)
}

// Delete implements cache.Cache.
func (c *Cache) Delete(ctx context.Context, key string) error {
	return c.inner.Delete(ctx, key)
}

// CompareAndDelete implements cache.Cache. old is a plaintext (what Get
// returned), while the inner cache compares sealed values, whose nonces
// differ even for equal plaintexts. So it reads the sealed value, opens it
// and compares the plaintext with old in constant time, then asks the inner
// cache to delete the key only if it still holds that same sealed value: the
// deletion stays atomic. If the value was replaced meanwhile, it starts
// over. A stored value that cannot be opened does not match; the error wraps
// ErrDecrypt.
func (c *Cache) CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error) {
	for range maxCADAttempts {
		sealed, err := c.inner.Get(ctx, key)
		if errors.Is(err, cache.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		plain, err := c.kr.Open(key, sealed)
		if err != nil {
			return false, err
		}
		if subtle.ConstantTimeCompare(plain, old) != 1 {
			return false, nil
		}
		if ok, err := c.inner.CompareAndDelete(ctx, key, sealed); ok || err != nil {
			return ok, err
		}
	}
	// Rewritten with the same plaintext on every attempt: rare enough to
	// report as a mismatch, which the next caller can retry.
	return false, nil
}

// SetNX implements cache.Cache.
func (c *Cache) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("sealed: setnx: ttl must be > 0: %w", cache.ErrInvalidTTL)
	}
	v, err := c.kr.Seal(c.rand, key, value)
	if err != nil {
		return false, fmt.Errorf("sealed: setnx: %w", err)
	}
	return c.inner.SetNX(ctx, key, v, ttl)
}

// GetDel implements cache.Cache. A value that cannot be opened is deleted
// all the same, and the error wraps ErrDecrypt.
func (c *Cache) GetDel(ctx context.Context, key string) ([]byte, error) {
	v, err := c.inner.GetDel(ctx, key)
	if err != nil {
		return nil, err
	}
	return c.kr.Open(key, v)
}

// Ping implements cache.Cache.
func (c *Cache) Ping(ctx context.Context) error { return c.inner.Ping(ctx) }

// TryLock implements cache.Cache with the inner cache's leases, opening the
// values read. Lock values are random and hold no secret; what a lease
// writes is sealed. A value read that cannot be opened fails the call (the
// lease, if taken, is released) with an error wrapping ErrDecrypt.
func (c *Cache) TryLock(ctx context.Context, name string, ttl time.Duration, keys ...string) (cache.Lease, [][]byte, error) {
	inner, sealed, err := c.inner.TryLock(ctx, name, ttl, keys...)
	if sealed == nil {
		return nil, nil, err
	}
	values := make([][]byte, len(sealed))
	for i, v := range sealed {
		if v == nil {
			continue
		}
		plain, oerr := c.kr.Open(keys[i], v)
		if oerr != nil {
			if inner != nil {
				_ = inner.Release(ctx)
			}
			return nil, nil, oerr
		}
		values[i] = plain
	}
	if inner == nil {
		return nil, values, err
	}
	return &lease{Lease: inner, c: c}, values, nil
}

// A lease seals what Commit writes; Renew and Release are the inner
// lease's.
type lease struct {
	cache.Lease
	c *Cache
}

func (l *lease) Commit(ctx context.Context, writes ...cache.Write) error {
	sealed := make([]cache.Write, len(writes))
	for i, w := range writes {
		sealed[i] = w
		if w.Delete {
			continue
		}
		if w.TTL < 0 {
			return fmt.Errorf("sealed: commit: %w", cache.ErrInvalidTTL)
		}
		v, err := l.c.kr.Seal(l.c.rand, w.Key, w.Value)
		if err != nil {
			return fmt.Errorf("sealed: commit: %w", err)
		}
		sealed[i].Value = v
	}
	return l.Lease.Commit(ctx, sealed...)
}

// Publish implements cache.Publisher with the inner cache's. Messages are
// not sealed: they are not stored, and the broker sends only storage keys,
// which the inner cache holds in plain text anyway.
//
// When the inner cache is not a Publisher, it offers no way to reach other
// replicas (the memory cache belongs to one process), so Publish does
// nothing and Subscribe returns a stop function that does nothing: to the
// caller, the same as finding no Publisher. An error here would instead fail
// a caller that subscribes at start, as the broker does.
func (c *Cache) Publish(ctx context.Context, channel string, msg []byte) error {
	p, ok := c.inner.(cache.Publisher)
	if !ok {
		return nil
	}
	return p.Publish(ctx, channel, msg)
}

// Subscribe implements cache.Publisher; see Publish.
func (c *Cache) Subscribe(ctx context.Context, channel string, fn func(msg []byte)) (stop func(), err error) {
	p, ok := c.inner.(cache.Publisher)
	if !ok {
		return func() {}, nil
	}
	return p.Subscribe(ctx, channel, fn)
}

// Close closes the inner cache.
func (c *Cache) Close() error { return c.inner.Close() }

// IndexAdd implements cache.Cache. Index members (account ids) are not
// secrets and are stored as given, like keys.
func (c *Cache) IndexAdd(ctx context.Context, key, member string, score float64) error {
	return c.inner.IndexAdd(ctx, key, member, score)
}

// IndexRemove implements cache.Cache.
func (c *Cache) IndexRemove(ctx context.Context, key, member string) error {
	return c.inner.IndexRemove(ctx, key, member)
}

// IndexRange implements cache.Cache.
func (c *Cache) IndexRange(ctx context.Context, key, from string, limit int) ([]string, error) {
	return c.inner.IndexRange(ctx, key, from, limit)
}

// IndexDue implements cache.Cache.
func (c *Cache) IndexDue(ctx context.Context, key string, max float64, limit int) ([]string, error) {
	return c.inner.IndexDue(ctx, key, max, limit)
}

// IndexLen implements cache.Cache.
func (c *Cache) IndexLen(ctx context.Context, key string) (int64, error) {
	return c.inner.IndexLen(ctx, key)
}
