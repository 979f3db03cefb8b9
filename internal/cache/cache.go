// Package cache is the contract for the broker's shared store: cached tokens
// (with a TTL) and durable state such as grants and authorization states
// (no TTL). Implementations are memory (embedded, the default) and redis;
// sealed encrypts any of them at rest. Every implementation passes the
// cachetest conformance suite whole: there are no optional parts but
// Publisher.
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
//
// Errors: a missing or expired key wraps ErrNotFound; a backend that cannot
// be reached wraps ErrUnavailable; a context that ended first wraps the
// context's error; any call after Close wraps ErrClosed. Errors never
// contain values, nor keys (a key may embed a single-use code).
type Cache interface {
	// Get returns the value stored under key, or an error wrapping
	// ErrNotFound when there is none or it has expired.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores value under key. ttl > 0 expires it after ttl; ttl == 0
	// stores it durably (never evicted); ttl < 0 is an error.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Delete removes key. Deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
	// CompareAndDelete deletes key if its current value equals old and
	// reports whether it did, atomically. The broker uses it to invalidate
	// a token only if it is still the one a caller reported as rejected.
	CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error)
	// SetNX stores value under key with ttl (> 0) if key is absent and
	// reports whether it did, atomically. Used for single-use markers
	// (authorization states, spent codes).
	SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)
	// GetDel returns the value and deletes it in one atomic step, or
	// ErrNotFound, so that two replicas racing on a single-use value see it
	// at most once.
	GetDel(ctx context.Context, key string) ([]byte, error)
	// TryLock takes the lease on name for ttl (> 0) if nobody holds it and,
	// in the same atomic step (one round trip), reads the values under
	// keys: values[i] is the value of keys[i], nil when absent. When another
	// holder has the lease it returns a nil Lease, the values all the same,
	// and an error wrapping ErrLocked; a caller waiting for that holder can
	// poll with TryLock alone. In a Redis Cluster, name and keys must share
	// a hash tag ({…}).
	TryLock(ctx context.Context, name string, ttl time.Duration, keys ...string) (Lease, [][]byte, error)
	// IndexAdd puts member into the sorted index under key with score
	// (replacing its score when present). Indexes are durable. Members are
	// ordered by score, then bytewise; IndexRange ignores scores.
	IndexAdd(ctx context.Context, key, member string, score float64) error
	// IndexRemove takes member out of the index under key; absent is fine.
	IndexRemove(ctx context.Context, key, member string) error
	// IndexRange returns up to limit members of the index under key that
	// sort bytewise at or after from ("" for the first), in bytewise order.
	// All members of an index that uses it must have the same score. Its
	// cost grows with limit, not with the size of the index.
	IndexRange(ctx context.Context, key, from string, limit int) ([]string, error)
	// IndexDue returns up to limit members of the index under key whose
	// score is at most max, lowest score first.
	IndexDue(ctx context.Context, key string, max float64, limit int) ([]string, error)
	// IndexLen returns the number of members of the index under key.
	IndexLen(ctx context.Context, key string) (int64, error)
	// Ping reports whether the store is reachable, for readiness checks.
	Ping(ctx context.Context) error
	// Close releases the store's resources. Calls after Close fail.
	Close() error
}

// A Lease is a held lock: the cross-replica single flight on a key, and the
// fence of every grant write. Its methods are safe for concurrent use.
type Lease interface {
	// Renew extends the lease to ttl from now. It returns an error wrapping
	// ErrLeaseLost when the lease lapsed (and may be held by another).
	Renew(ctx context.Context, ttl time.Duration) error
	// Commit applies writes in order, atomically and only while the lease
	// is still held, then releases the lease: one round trip. It is the
	// fencing check that stops a holder whose lease lapsed from overwriting
	// what a newer holder wrote; then nothing is written and the error
	// wraps ErrLeaseLost. With no writes it is Release that reports a lost
	// lease.
	Commit(ctx context.Context, writes ...Write) error
	// Release gives the lease up if it is still held (compare-and-delete).
	// Releasing a lease that lapsed or was committed is not an error.
	Release(ctx context.Context) error
}

// A Write is one change made by Lease.Commit: Set(Key, Value, TTL), or
// Delete(Key) when Delete is true.
type Write struct {
	Key    string
	Value  []byte
	TTL    time.Duration
	Delete bool
}

// A Publisher broadcasts small messages to every replica sharing the cache,
// best effort: a message may be lost (e.g. while reconnecting), so users
// must bound how long they rely on not having missed one. The embedded
// cache, used by one process, has no need of it.
type Publisher interface {
	// Publish sends msg on channel.
	Publish(ctx context.Context, channel string, msg []byte) error
	// Subscribe calls fn, from one goroutine, for every message on channel
	// until stop is called. It reconnects by itself.
	Subscribe(ctx context.Context, channel string, fn func(msg []byte)) (stop func(), err error)
}
