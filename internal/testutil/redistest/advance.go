package redistest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// AdvanceTTLs makes d of time pass, as far as expiry goes, for the keys that
// start with prefix, without sleeping: every such key with a TTL gets that
// TTL less d, or is deleted when none would be left; keys without a TTL are
// left alone. Use it to keep a Redis-backed test in step with a fake clock.
// Redis still expires keys by its own clock meanwhile, which matters only to
// margins of a few milliseconds. It fails t on a Redis error.
func AdvanceTTLs(t testing.TB, c redis.UniversalClient, prefix string, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	pattern := escapeGlob(prefix) + "*"
	advance := func(ctx context.Context, node *redis.Client) error {
		keys := map[string]bool{} // SCAN may return a key twice: collect first
		iter := node.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			keys[iter.Val()] = true
		}
		if err := iter.Err(); err != nil {
			return err
		}
		for k := range keys {
			pttl, err := node.Do(ctx, "PTTL", k).Int64()
			if err != nil {
				return err
			}
			if pttl < 0 { // -1: no expiry; -2: gone meanwhile
				continue
			}
			if left := pttl - d.Milliseconds(); left > 0 {
				err = node.PExpire(ctx, k, time.Duration(left)*time.Millisecond).Err()
			} else {
				err = node.Del(ctx, k).Err()
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	switch c := c.(type) {
	case *redis.Client:
		err = advance(ctx, c)
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, advance)
	default:
		t.Fatalf("redistest: AdvanceTTLs: unsupported client %T", c)
	}
	if err != nil {
		t.Fatalf("redistest: AdvanceTTLs(%v): %v", d, err)
	}
}

// escapeGlob quotes the characters that are special in a SCAN MATCH pattern.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]^\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
