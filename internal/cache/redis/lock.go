package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

var (
	_ cache.Locker    = (*Cache)(nil)
	_ cache.Publisher = (*Cache)(nil)
)

// Lock keys live under "lock:" + name; in a Cluster, a name and the keys a
// lease writes must share a hash tag ({…}) so the fencing script can see both.
const lockPrefix = "lock:"

var (
	// renewLease: PEXPIRE the lock only if we still hold it.
	renewLease = goredis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)
	// setIfHeld: write KEYS[2] only while KEYS[1] holds our lock value.
	// ARGV[3] is the TTL in ms, 0 for none.
	setIfHeld = goredis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
	return 0
end
if ARGV[3] == "0" then
	redis.call("SET", KEYS[2], ARGV[2])
else
	redis.call("SET", KEYS[2], ARGV[2], "PX", ARGV[3])
end
return 1
`)
)

// TryLock implements cache.Locker with SET NX PX and a random value.
func (c *Cache) TryLock(ctx context.Context, name string, ttl time.Duration) (cache.Lease, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("redis: lock: %w", cache.ErrClosed)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("redis: lock: %w", cache.ErrInvalidTTL)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("redis: lock: %w", err)
	}
	l := &lease{c: c, key: c.prefix + lockPrefix + name, value: hex.EncodeToString(b[:])}
	ok, err := c.client.SetNX(ctx, l.key, l.value, roundTTL(ttl)).Result()
	if err != nil {
		return nil, c.wrap(ctx, "lock", err)
	}
	if !ok {
		return nil, fmt.Errorf("redis: lock: %w", cache.ErrLocked)
	}
	return l, nil
}

type lease struct {
	c          *Cache
	key, value string
}

func (l *lease) Renew(ctx context.Context, ttl time.Duration) error {
	n, err := renewLease.Run(ctx, l.c.client, []string{l.key}, l.value, roundTTL(ttl).Milliseconds()).Int()
	if err != nil {
		return l.c.wrap(ctx, "renew lease", err)
	}
	if n != 1 {
		return fmt.Errorf("redis: renew lease: %w", cache.ErrLeaseLost)
	}
	return nil
}

func (l *lease) SetIfHeld(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("redis: set if held: %w", cache.ErrInvalidTTL)
	}
	n, err := setIfHeld.Run(ctx, l.c.client, []string{l.key, l.c.prefix + key}, l.value, value, roundTTL(ttl).Milliseconds()).Int()
	if err != nil {
		return l.c.wrap(ctx, "set if held", err)
	}
	if n != 1 {
		return fmt.Errorf("redis: set if held: %w", cache.ErrLeaseLost)
	}
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	if err := compareAndDelete.Run(ctx, l.c.client, []string{l.key}, l.value).Err(); err != nil {
		return l.c.wrap(ctx, "release lease", err)
	}
	return nil
}

// Publish implements cache.Publisher with PUBLISH on Prefix+channel.
func (c *Cache) Publish(ctx context.Context, channel string, msg []byte) error {
	if c.closed.Load() {
		return fmt.Errorf("redis: publish: %w", cache.ErrClosed)
	}
	if err := c.client.Publish(ctx, c.prefix+channel, msg).Err(); err != nil {
		return c.wrap(ctx, "publish", err)
	}
	return nil
}

// Subscribe implements cache.Publisher. go-redis resubscribes after a
// reconnect; messages published meanwhile are lost.
func (c *Cache) Subscribe(ctx context.Context, channel string, fn func(msg []byte)) (func(), error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("redis: subscribe: %w", cache.ErrClosed)
	}
	ps := c.client.Subscribe(context.WithoutCancel(ctx), c.prefix+channel)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ps.Channel() {
			fn([]byte(m.Payload))
		}
	}()
	return func() { _ = ps.Close(); <-done }, nil
}
