package memory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// indexes are the embedded cache's sorted indexes: each a slice kept in
// (score, member) order, with a map for the member's score. They live in
// memory only; the broker rebuilds what it needs from the grants, which the
// state file keeps.
type indexes struct {
	mu sync.Mutex
	m  map[string]*index
}

type index struct {
	byScore []scored
	score   map[string]float64
}

type scored struct {
	score  float64
	member string
}

func less(a, b scored) int {
	switch {
	case a.score < b.score:
		return -1
	case a.score > b.score:
		return 1
	}
	return strings.Compare(a.member, b.member)
}

func (c *Cache) index(key string, create bool) *index {
	if c.idx.m == nil {
		if !create {
			return nil
		}
		c.idx.m = map[string]*index{}
	}
	ix := c.idx.m[key]
	if ix == nil && create {
		ix = &index{score: map[string]float64{}}
		c.idx.m[key] = ix
	}
	return ix
}

func (ix *index) remove(member string) {
	s, ok := ix.score[member]
	if !ok {
		return
	}
	if i, found := slices.BinarySearchFunc(ix.byScore, scored{s, member}, less); found {
		ix.byScore = slices.Delete(ix.byScore, i, i+1)
	}
	delete(ix.score, member)
}

// IndexAdd implements cache.Cache.
func (c *Cache) IndexAdd(_ context.Context, key, member string, score float64) error {
	if c.closed.Load() {
		return fmt.Errorf("memory: index add: %w", cache.ErrClosed)
	}
	c.idx.mu.Lock()
	defer c.idx.mu.Unlock()
	ix := c.index(key, true)
	ix.remove(member)
	e := scored{score, member}
	i, _ := slices.BinarySearchFunc(ix.byScore, e, less)
	ix.byScore = slices.Insert(ix.byScore, i, e)
	ix.score[member] = score
	return nil
}

// IndexRemove implements cache.Cache.
func (c *Cache) IndexRemove(_ context.Context, key, member string) error {
	if c.closed.Load() {
		return fmt.Errorf("memory: index remove: %w", cache.ErrClosed)
	}
	c.idx.mu.Lock()
	defer c.idx.mu.Unlock()
	if ix := c.index(key, false); ix != nil {
		ix.remove(member)
	}
	return nil
}

// IndexRange implements cache.Cache.
func (c *Cache) IndexRange(_ context.Context, key, from string, limit int) ([]string, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("memory: index range: %w", cache.ErrClosed)
	}
	c.idx.mu.Lock()
	defer c.idx.mu.Unlock()
	ix := c.index(key, false)
	if ix == nil || limit <= 0 {
		return nil, nil
	}
	var score float64
	if len(ix.byScore) > 0 {
		score = ix.byScore[0].score
	}
	i, _ := slices.BinarySearchFunc(ix.byScore, scored{score, from}, less)
	var out []string
	for ; i < len(ix.byScore) && len(out) < limit; i++ {
		out = append(out, ix.byScore[i].member)
	}
	return out, nil
}

// IndexDue implements cache.Cache.
func (c *Cache) IndexDue(_ context.Context, key string, max float64, limit int) ([]string, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("memory: index due: %w", cache.ErrClosed)
	}
	c.idx.mu.Lock()
	defer c.idx.mu.Unlock()
	ix := c.index(key, false)
	if ix == nil {
		return nil, nil
	}
	var out []string
	for _, e := range ix.byScore {
		if e.score > max || len(out) >= limit {
			break
		}
		out = append(out, e.member)
	}
	return out, nil
}

// IndexLen implements cache.Cache.
func (c *Cache) IndexLen(_ context.Context, key string) (int64, error) {
	if c.closed.Load() {
		return 0, fmt.Errorf("memory: index len: %w", cache.ErrClosed)
	}
	c.idx.mu.Lock()
	defer c.idx.mu.Unlock()
	if ix := c.index(key, false); ix != nil {
		return int64(len(ix.byScore)), nil
	}
	return 0, nil
}
