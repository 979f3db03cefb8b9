package memory

import (
	"fmt"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
)

// TestSweepBoundsMemory: a stream of short-lived entries that are never read
// again does not grow the cache without bound.
func TestSweepBoundsMemory(t *testing.T) {
	clk := cachetest.NewClock(time.Unix(1700000000, 0))
	c, err := New(Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Set(t.Context(), "durable", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	const writes = 200_000
	for i := range writes {
		if err := c.Set(t.Context(), fmt.Sprintf("k%d", i), []byte("v"), time.Second); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second) // each entry expires as the next is written
	}
	// At most about two sweep intervals of garbage per shard remain.
	if got, limit := c.len(), 2*numShards*minSweep+1; got > limit {
		t.Errorf("after %d writes of entries that expired, the cache holds %d entries; want at most %d", writes, got, limit)
	}
	if _, err := c.Get(t.Context(), "durable"); err != nil {
		t.Errorf("Get(durable) after sweeps = %v; want the value", err)
	}
}

func (c *Cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.items)
		s.mu.RUnlock()
	}
	return n
}
