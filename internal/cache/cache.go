// Package cache is the contract for the broker's shared store: cached tokens
// (with a TTL) and durable state such as grants and authorization states
// (no TTL). Implementations are memory (embedded, the default) and redis.
//
// Values are opaque bytes; the broker encodes and, when configured, encrypts
// them. Keys are built by the broker; implementations may add a namespace.
package cache

import (
	"context"
	"time"
)

// A Cache stores byte values under string keys. All methods are safe for
// concurrent use. Values passed in and returned are owned by the caller.
type Cache interface {
	// Get returns the value stored under key, or an error wrapping
	// ErrNotFound when there is none or it has expired. Other errors mean
	// the store could not be asked (ErrUnavailable for a backend outage).
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores value under key. ttl > 0 expires it after ttl; ttl == 0
	// stores it durably (never evicted); ttl < 0 is an error.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Delete removes key. Deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
	// Close releases the store's resources. Calls after Close fail.
	Close() error
}

// A CompareAndDeleter deletes a key only while it still holds a given value,
// atomically. The broker uses it to invalidate a token only if it is still
// the one a caller reported as rejected.
type CompareAndDeleter interface {
	// CompareAndDelete deletes key if its current value equals old and
	// reports whether it did.
	CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error)
}

// A SetNXer stores a value only when the key is absent, atomically. Used for
// single-use markers (authorization states, spent codes).
type SetNXer interface {
	// SetNX stores value under key with ttl (> 0) if key is absent and
	// reports whether it did.
	SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)
}

// A GetDeleter reads and removes a key in one atomic step, so that two
// replicas racing on a single-use value see it at most once.
type GetDeleter interface {
	// GetDel returns the value and deletes it, or ErrNotFound.
	GetDel(ctx context.Context, key string) ([]byte, error)
}

// A Pinger reports whether the store is reachable, for readiness checks.
type Pinger interface {
	Ping(ctx context.Context) error
}

// A Locker grants short, renewable leases on names, so that replicas sharing
// the cache make one upstream request per token (cross-replica single flight).
type Locker interface {
	// TryLock takes the lease on name for ttl (> 0) if nobody holds it. It
	// returns an error wrapping ErrLocked when another holder has it, and
	// ErrUnavailable when the backend cannot be reached.
	TryLock(ctx context.Context, name string, ttl time.Duration) (Lease, error)
}

// A Lease is a held lock. Its methods are safe for concurrent use.
type Lease interface {
	// Renew extends the lease to ttl from now. It returns an error wrapping
	// ErrLeaseLost when the lease lapsed (and may be held by another).
	Renew(ctx context.Context, ttl time.Duration) error
	// SetIfHeld is Set, done only while the lease is still held, atomically:
	// the fencing check that stops a holder whose lease lapsed from
	// overwriting what a newer holder wrote. ErrLeaseLost otherwise.
	SetIfHeld(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Release gives the lease up if it is still held (compare-and-delete).
	Release(ctx context.Context) error
}

// A Publisher broadcasts small messages to every replica sharing the cache,
// best effort: a message may be lost (e.g. while reconnecting), so users
// must bound how long they rely on not having missed one.
type Publisher interface {
	// Publish sends msg on channel.
	Publish(ctx context.Context, channel string, msg []byte) error
	// Subscribe calls fn, from one goroutine, for every message on channel
	// until stop is called. It reconnects by itself.
	Subscribe(ctx context.Context, channel string, fn func(msg []byte)) (stop func(), err error)
}
