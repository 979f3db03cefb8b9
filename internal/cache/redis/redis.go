// Package redis is the shared cache for several broker replicas, on Redis
// through go-redis v9: a single node, a Sentinel-managed primary or a Cluster
// (see NewClient). Expiry is Redis's own (SET … PX); the atomic operations are
// single commands (SET NX, GETDEL) or a Lua script (compare and delete), so
// they hold across replicas and, in a Cluster, per key.
//
// Durable entries (ttl == 0) are stored without an expiry; they survive a
// restart only if the server persists its data (AOF or RDB), and they are
// never evicted only under a noeviction or volatile-* maxmemory policy.
package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// Options configures New.
type Options struct {
	// Client is the connection to Redis, usually from NewClient. Required.
	// The Cache owns it from then on: Cache.Close closes it.
	Client goredis.UniversalClient
	// Prefix is prepended to every key, e.g. "tokenbroker:v1:", so that
	// several deployments, or other applications, can share one database.
	Prefix string
}

// Cache is a cache.Cache on Redis. It also implements cache.Publisher.
// All methods are safe for concurrent use.
//
// Errors: a missing or expired key wraps cache.ErrNotFound; a negative TTL
// cache.ErrInvalidTTL; any call after Close cache.ErrClosed. A failure to
// reach Redis (connection refused, timeout, closed connection pool, a server
// that is loading, read-only, failing over or refusing our credentials) wraps
// cache.ErrUnavailable together with the underlying error. When the caller's
// context ends first, the error wraps the context's error instead. Errors
// never contain values, nor keys: a key may embed a single-use code.
type Cache struct {
	client goredis.UniversalClient
	prefix string
	closed atomic.Bool
}

var (
	_ cache.Cache     = (*Cache)(nil)
	_ cache.Publisher = (*Cache)(nil)
)

// New returns a Cache using o.Client. It does not contact Redis; use Ping
// for that.
func New(o Options) (*Cache, error) {
	if o.Client == nil {
		return nil, errors.New("redis: Options.Client is nil")
	}
	return &Cache{client: o.Client, prefix: o.Prefix}, nil
}

// compareAndDelete deletes KEYS[1] if it holds exactly ARGV[1]. Lua strings
// are byte strings, and a missing key reads as false, which equals no
// string, not even "".
var compareAndDelete = goredis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// Get implements cache.Cache.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("redis: get: %w", cache.ErrClosed)
	}
	v, err := c.client.Get(ctx, c.prefix+key).Bytes()
	if err != nil {
		return nil, c.wrap(ctx, "get", err)
	}
	return v, nil
}

// Set implements cache.Cache.
func (c *Cache) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if c.closed.Load() {
		return fmt.Errorf("redis: set: %w", cache.ErrClosed)
	}
	if ttl < 0 {
		return fmt.Errorf("redis: set: %w", cache.ErrInvalidTTL)
	}
	// go-redis sends SET without an expiry for 0, and PX for the rest.
	if err := c.client.Set(ctx, c.prefix+key, value, roundTTL(ttl)).Err(); err != nil {
		return c.wrap(ctx, "set", err)
	}
	return nil
}

// Delete implements cache.Cache.
func (c *Cache) Delete(ctx context.Context, key string) error {
	if c.closed.Load() {
		return fmt.Errorf("redis: delete: %w", cache.ErrClosed)
	}
	if err := c.client.Del(ctx, c.prefix+key).Err(); err != nil {
		return c.wrap(ctx, "delete", err)
	}
	return nil
}

// CompareAndDelete implements cache.Cache with a Lua script,
// sent by digest (EVALSHA) and in full only when the server lacks it.
func (c *Cache) CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error) {
	if c.closed.Load() {
		return false, fmt.Errorf("redis: compare and delete: %w", cache.ErrClosed)
	}
	n, err := compareAndDelete.Run(ctx, c.client, []string{c.prefix + key}, old).Int()
	if err != nil {
		return false, c.wrap(ctx, "compare and delete", err)
	}
	return n == 1, nil
}

// SetNX implements cache.Cache with SET NX PX. ttl must be > 0: a
// single-use marker that never expires would never be reclaimed, so ttl <= 0
// wraps cache.ErrInvalidTTL.
func (c *Cache) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	if c.closed.Load() {
		return false, fmt.Errorf("redis: setnx: %w", cache.ErrClosed)
	}
	if ttl <= 0 {
		return false, fmt.Errorf("redis: setnx: ttl must be > 0: %w", cache.ErrInvalidTTL)
	}
	ok, err := c.client.SetNX(ctx, c.prefix+key, value, roundTTL(ttl)).Result()
	if err != nil {
		return false, c.wrap(ctx, "setnx", err)
	}
	return ok, nil
}

// GetDel implements cache.Cache with GETDEL (Redis 6.2 or later).
func (c *Cache) GetDel(ctx context.Context, key string) ([]byte, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("redis: getdel: %w", cache.ErrClosed)
	}
	v, err := c.client.GetDel(ctx, c.prefix+key).Bytes()
	if err != nil {
		return nil, c.wrap(ctx, "getdel", err)
	}
	return v, nil
}

// Ping implements cache.Cache with PING. In a Cluster it asks one node.
func (c *Cache) Ping(ctx context.Context) error {
	if c.closed.Load() {
		return fmt.Errorf("redis: ping: %w", cache.ErrClosed)
	}
	if err := c.client.Ping(ctx).Err(); err != nil {
		return c.wrap(ctx, "ping", err)
	}
	return nil
}

// Close closes the client passed in Options. Calls after Close, including
// Close, wrap cache.ErrClosed.
func (c *Cache) Close() error {
	if c.closed.Swap(true) {
		return fmt.Errorf("redis: close: %w", cache.ErrClosed)
	}
	if err := c.client.Close(); err != nil {
		return fmt.Errorf("redis: close: %w", err)
	}
	return nil
}

// roundTTL rounds a positive ttl up to whole milliseconds, the unit of PX,
// so that a sub-millisecond TTL still expires rather than being rejected.
func roundTTL(ttl time.Duration) time.Duration {
	if r := ttl % time.Millisecond; r != 0 {
		ttl += time.Millisecond - r
	}
	return ttl
}

// wrap turns a go-redis error into the cache's: redis.Nil is ErrNotFound,
// the caller's own deadline or cancellation stays a context error, a failure
// to reach a working server is ErrUnavailable, and anything else (a bug such
// as WRONGTYPE) is passed on with context only.
func (c *Cache) wrap(ctx context.Context, op string, err error) error {
	switch {
	case errors.Is(err, goredis.Nil):
		return fmt.Errorf("redis: %s: %w", op, cache.ErrNotFound)
	case ctx.Err() != nil:
		return fmt.Errorf("redis: %s: %w (%v)", op, ctx.Err(), err)
	case unavailable(err):
		return fmt.Errorf("redis: %s: %w: %w", op, cache.ErrUnavailable, err)
	default:
		return fmt.Errorf("redis: %s: %w", op, err)
	}
}

// unavailableReplies are the server errors that mean "not now" or "not with
// these credentials" rather than "not this request".
var unavailableReplies = []string{
	"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS",
	"BUSY", "OOM", "NOAUTH", "WRONGPASS", "NOPERM", "ERR max number of clients",
}

func unavailable(err error) bool {
	var rerr goredis.Error
	if !errors.As(err, &rerr) {
		// Not a reply from the server: dial, I/O, timeout, closed pool.
		return true
	}
	msg := rerr.Error()
	for _, p := range unavailableReplies {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
