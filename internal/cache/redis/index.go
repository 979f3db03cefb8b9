package redis

import (
	"context"
	"strconv"

	goredis "github.com/redis/go-redis/v9"
)

// Indexes are sorted sets.

// IndexAdd implements cache.Cache with ZADD.
func (c *Cache) IndexAdd(ctx context.Context, key, member string, score float64) error {
	if err := c.client.ZAdd(ctx, c.prefix+key, goredis.Z{Score: score, Member: member}).Err(); err != nil {
		return c.wrap(ctx, "index add", err)
	}
	return nil
}

// IndexRemove implements cache.Cache with ZREM.
func (c *Cache) IndexRemove(ctx context.Context, key, member string) error {
	if err := c.client.ZRem(ctx, c.prefix+key, member).Err(); err != nil {
		return c.wrap(ctx, "index remove", err)
	}
	return nil
}

// IndexRange implements cache.Cache with ZRANGE BYLEX … LIMIT.
func (c *Cache) IndexRange(ctx context.Context, key, from string, limit int) ([]string, error) {
	if limit <= 0 {
		return nil, nil
	}
	out, err := c.client.ZRangeArgs(ctx, goredis.ZRangeArgs{Key: c.prefix + key, Start: "[" + from, Stop: "+",
		ByLex: true, Count: int64(limit)}).Result()
	if err != nil {
		return nil, c.wrap(ctx, "index range", err)
	}
	return out, nil
}

// IndexDue implements cache.Cache with ZRANGE BYSCORE … LIMIT.
func (c *Cache) IndexDue(ctx context.Context, key string, max float64, limit int) ([]string, error) {
	if limit <= 0 {
		return nil, nil
	}
	out, err := c.client.ZRangeArgs(ctx, goredis.ZRangeArgs{Key: c.prefix + key, Start: "-inf",
		Stop: strconv.FormatFloat(max, 'f', -1, 64), ByScore: true, Count: int64(limit)}).Result()
	if err != nil {
		return nil, c.wrap(ctx, "index due", err)
	}
	return out, nil
}

// IndexLen implements cache.Cache with ZCARD.
func (c *Cache) IndexLen(ctx context.Context, key string) (int64, error) {
	n, err := c.client.ZCard(ctx, c.prefix+key).Result()
	if err != nil {
		return 0, c.wrap(ctx, "index len", err)
	}
	return n, nil
}
