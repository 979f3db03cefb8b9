package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// Lock keys live under "lock:" + name; in a Cluster, a name and the keys a
// lease reads and writes must share a hash tag ({…}) so one script can see
// them all.
const lockPrefix = "lock:"

var (
	// tryLock: SET NX PX the lock (KEYS[1]) and read KEYS[2..], in one step.
	// Returns {1 if taken else 0, value of KEYS[2], …}; a missing key reads
	// as false, which the reply turns into nil.
	tryLock = goredis.NewScript(`
local out = {0}
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
	out[1] = 1
end
for i = 2, #KEYS do
	out[i] = redis.call("GET", KEYS[i])
end
return out
`)
	// renewLease: PEXPIRE the lock only if we still hold it.
	renewLease = goredis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)
	// commit: while KEYS[1] holds our lock value ARGV[1], apply the writes
	// to KEYS[2..] (ARGV[2i-2] the value, ARGV[2i-1] the TTL in ms: "0" for
	// none, "-1" to delete), then release the lock.
	commit = goredis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
	return 0
end
for i = 2, #KEYS do
	local v, ttl = ARGV[2*i-2], ARGV[2*i-1]
	if ttl == "-1" then
		redis.call("DEL", KEYS[i])
	elseif ttl == "0" then
		redis.call("SET", KEYS[i], v)
	else
		redis.call("SET", KEYS[i], v, "PX", ttl)
	end
end
redis.call("DEL", KEYS[1])
return 1
`)
)

// TryLock implements cache.Cache with one script: SET NX PX with a random
// value, and GET of keys.
func (c *Cache) TryLock(ctx context.Context, name string, ttl time.Duration, keys ...string) (cache.Lease, [][]byte, error) {
	if c.closed.Load() {
		return nil, nil, fmt.Errorf("redis: lock: %w", cache.ErrClosed)
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("redis: lock: %w", cache.ErrInvalidTTL)
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	l := &lease{c: c, key: c.prefix + lockPrefix + name, value: hex.EncodeToString(b[:])}
	all := make([]string, 1, len(keys)+1)
	all[0] = l.key
	for _, k := range keys {
		all = append(all, c.prefix+k)
	}
	res, err := tryLock.Run(ctx, c.client, all, l.value, roundTTL(ttl).Milliseconds()).Slice()
	if err != nil {
		return nil, nil, c.wrap(ctx, "lock", err)
	}
	if len(res) != len(all) {
		return nil, nil, fmt.Errorf("redis: lock: script returned %d values; want %d", len(res), len(all))
	}
	values := make([][]byte, len(keys))
	for i := range keys {
		if s, ok := res[i+1].(string); ok {
			values[i] = []byte(s)
		}
	}
	if taken, _ := res[0].(int64); taken != 1 {
		return nil, values, fmt.Errorf("redis: lock: %w", cache.ErrLocked)
	}
	return l, values, nil
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

func (l *lease) Commit(ctx context.Context, writes ...cache.Write) error {
	if len(writes) == 0 {
		return l.Release(ctx)
	}
	keys := make([]string, 1, len(writes)+1)
	keys[0] = l.key
	args := make([]any, 1, 2*len(writes)+1)
	args[0] = l.value
	for _, w := range writes {
		keys = append(keys, l.c.prefix+w.Key)
		switch {
		case w.Delete:
			args = append(args, "", "-1")
		case w.TTL < 0:
			return fmt.Errorf("redis: commit: %w", cache.ErrInvalidTTL)
		default:
			args = append(args, w.Value, strconv.FormatInt(roundTTL(w.TTL).Milliseconds(), 10))
		}
	}
	n, err := commit.Run(ctx, l.c.client, keys, args...).Int()
	if err != nil {
		return l.c.wrap(ctx, "commit", err)
	}
	if n != 1 {
		return fmt.Errorf("redis: commit: %w", cache.ErrLeaseLost)
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
