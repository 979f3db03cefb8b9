package memory_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
)

// The shared store's side of a shared hit and of a fetch, in memory mode.
// BenchmarkGetParallel (memory_test.go) is the contended read.

func BenchmarkGet(b *testing.B) {
	c := mustNew(b, memory.Options{})
	defer c.Close()
	ctx := context.Background()
	const key = "token:{demo-cc}:read"
	if err := c.Set(ctx, key, make([]byte, 120), time.Hour); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Get(ctx, key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSet(b *testing.B) {
	c := mustNew(b, memory.Options{})
	defer c.Close()
	ctx := context.Background()
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "token:{demo-cc}:scope-" + strconv.Itoa(i)
	}
	value := make([]byte, 120)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := c.Set(ctx, keys[i%len(keys)], value, time.Hour); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
