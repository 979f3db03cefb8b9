// Package memory is the embedded cache: an in-process, sharded map with
// expiry by an injected clock, and optional persistence of durable entries
// (ttl == 0) to a state file so that grants survive a restart.
//
// TTL'd entries (cached tokens, single-use markers) live only in memory. They
// expire on read and are swept away as later writes arrive, so a cache that
// stops being written to stops growing.
package memory

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// Options configures New.
type Options struct {
	// Now is the clock used for expiry. Nil means time.Now.
	Now func() time.Time
	// StateFile, when set, is where durable entries (ttl == 0) are kept
	// across restarts. New loads it (a missing file is an empty cache), and
	// every write that adds, replaces or removes a durable entry rewrites it
	// atomically with mode 0600. Only one Cache may use a file at a time.
	StateFile string
}

// Cache is an in-memory cache.Cache. All methods are safe for concurrent use; reads of different keys, and
// concurrent reads of one key, do not block each other.
//
// Errors: a missing or expired key wraps cache.ErrNotFound, a negative TTL
// cache.ErrInvalidTTL, any call after Close cache.ErrClosed. When the state
// file cannot be written, the write that triggered it has already taken
// effect in memory and its error says so; the next durable write retries
// with the whole state.
type Cache struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [numShards]shard
	closed atomic.Bool
	locks  locks
	idx    indexes

	// Persistence. seq counts durable changes (bumped under the changed
	// shard's lock); a save writes a snapshot covering every change up to
	// the seq it read first, so a writer whose change is already covered
	// returns without writing again.
	file    string
	seq     atomic.Uint64
	saveMu  sync.Mutex
	savedTo uint64 // guarded by saveMu
}

var _ cache.Cache = (*Cache)(nil)

// numShards spreads lock contention; a power of two so the shard is a mask.
const numShards = 32

// minSweep is the fewest writes to a shard between two sweeps of its
// expired entries. A sweep costs the shard's size, so the interval also grows
// with the shard, keeping the amortized cost per write constant.
const minSweep = 1024

type shard struct {
	mu    sync.RWMutex
	items map[string]entry
	// writes counts writes since the last sweep; the next sweep is due when
	// it reaches the entry count the last sweep left (at least minSweep), so
	// expired entries never outnumber live ones by much.
	writes, sweepAt int
	_               [64]byte // keep neighbouring shards' locks off one cache line
}

type entry struct {
	value   []byte    // owned by the cache, never modified after it is stored
	expires time.Time // zero for a durable entry
}

func (e entry) durable() bool { return e.expires.IsZero() }

func (e entry) live(now time.Time) bool { return e.durable() || now.Before(e.expires) }

// New returns an empty cache, or one holding the durable entries of
// o.StateFile. A state file that cannot be read or parsed is an error naming
// the file; its contents are never quoted.
func New(o Options) (*Cache, error) {
	c := &Cache{now: o.Now, seed: maphash.MakeSeed(), file: o.StateFile}
	if c.now == nil {
		c.now = time.Now
	}
	for i := range c.shards {
		c.shards[i].items = make(map[string]entry)
	}
	if c.file != "" {
		entries, err := load(c.file)
		if err != nil {
			return nil, err
		}
		for k, v := range entries {
			c.shard(k).items[k] = entry{value: v}
		}
	}
	return c, nil
}

func (c *Cache) shard(key string) *shard {
	return &c.shards[maphash.String(c.seed, key)&(numShards-1)]
}

// Get implements cache.Cache.
func (c *Cache) Get(_ context.Context, key string) ([]byte, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("memory: get: %w", cache.ErrClosed)
	}
	s := c.shard(key)
	s.mu.RLock()
	e, ok := s.items[key]
	s.mu.RUnlock()
	if !ok || !e.live(c.now()) {
		return nil, fmt.Errorf("memory: get: %w", cache.ErrNotFound)
	}
	return clone(e.value), nil
}

// Set implements cache.Cache.
func (c *Cache) Set(_ context.Context, key string, value []byte, ttl time.Duration) error {
	if c.closed.Load() {
		return fmt.Errorf("memory: set: %w", cache.ErrClosed)
	}
	if ttl < 0 {
		return fmt.Errorf("memory: set: %w", cache.ErrInvalidTTL)
	}
	e := entry{value: clone(value)}
	if ttl > 0 {
		e.expires = c.now().Add(ttl)
	} else if err := c.persistable(key); err != nil {
		return fmt.Errorf("memory: set: %w", err)
	}
	s := c.shard(key)
	s.mu.Lock()
	old, had := s.items[key]
	s.items[key] = e
	seq := c.touched(had && old.durable() || e.durable())
	c.maybeSweep(s)
	s.mu.Unlock()
	return c.save("set", seq)
}

// Delete implements cache.Cache.
func (c *Cache) Delete(_ context.Context, key string) error {
	if c.closed.Load() {
		return fmt.Errorf("memory: delete: %w", cache.ErrClosed)
	}
	s := c.shard(key)
	s.mu.Lock()
	old, had := s.items[key]
	delete(s.items, key)
	seq := c.touched(had && old.durable())
	s.mu.Unlock()
	return c.save("delete", seq)
}

// CompareAndDelete implements cache.Cache. An expired entry
// never matches.
func (c *Cache) CompareAndDelete(_ context.Context, key string, old []byte) (bool, error) {
	if c.closed.Load() {
		return false, fmt.Errorf("memory: compare and delete: %w", cache.ErrClosed)
	}
	now := c.now()
	s := c.shard(key)
	s.mu.Lock()
	e, ok := s.items[key]
	if !ok || !e.live(now) || string(e.value) != string(old) {
		s.mu.Unlock()
		return false, nil
	}
	delete(s.items, key)
	seq := c.touched(e.durable())
	s.mu.Unlock()
	return true, c.save("compare and delete", seq)
}

// SetNX implements cache.Cache. ttl must be > 0: a single-use marker that
// never expires would never be reclaimed, so ttl <= 0 wraps
// cache.ErrInvalidTTL.
func (c *Cache) SetNX(_ context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	if c.closed.Load() {
		return false, fmt.Errorf("memory: setnx: %w", cache.ErrClosed)
	}
	if ttl <= 0 {
		return false, fmt.Errorf("memory: setnx: ttl must be > 0: %w", cache.ErrInvalidTTL)
	}
	now := c.now()
	e := entry{value: clone(value), expires: now.Add(ttl)}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.items[key]; ok && old.live(now) {
		return false, nil
	}
	// Whatever was there had expired, so it was not durable: no save.
	s.items[key] = e
	c.maybeSweep(s)
	return true, nil
}

// GetDel implements cache.Cache.
func (c *Cache) GetDel(_ context.Context, key string) ([]byte, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("memory: getdel: %w", cache.ErrClosed)
	}
	now := c.now()
	s := c.shard(key)
	s.mu.Lock()
	e, ok := s.items[key]
	if !ok || !e.live(now) {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: getdel: %w", cache.ErrNotFound)
	}
	delete(s.items, key)
	seq := c.touched(e.durable())
	s.mu.Unlock()
	// The value was handed over only if the deletion is as durable as the
	// entry was: otherwise a restart would bring a single-use value back.
	if err := c.save("getdel", seq); err != nil {
		return nil, err
	}
	return clone(e.value), nil
}

// Ping implements cache.Cache: it fails only after Close.
func (c *Cache) Ping(context.Context) error {
	if c.closed.Load() {
		return fmt.Errorf("memory: ping: %w", cache.ErrClosed)
	}
	return nil
}

// Close drops every entry. The state file already holds the durable ones.
// Calls after Close, including Close, wrap cache.ErrClosed.
func (c *Cache) Close() error {
	if c.closed.Swap(true) {
		return fmt.Errorf("memory: close: %w", cache.ErrClosed)
	}
	// Wait for a save in progress; later ones see closed and refuse, so the
	// emptied shards below never reach the file.
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.items)
		s.mu.Unlock()
	}
	return nil
}

// touched records a change; durable says whether it added, replaced or
// removed a durable entry. It returns the change's sequence number, or 0 when
// no save is needed. The caller holds the changed shard's lock.
func (c *Cache) touched(durable bool) uint64 {
	if !durable || c.file == "" {
		return 0
	}
	return c.seq.Add(1)
}

// maybeSweep drops s's expired entries once enough writes have gone by. The
// caller holds s.mu for writing.
func (c *Cache) maybeSweep(s *shard) {
	s.writes++
	if s.writes < max(minSweep, s.sweepAt) {
		return
	}
	now := c.now()
	for k, e := range s.items {
		if !e.live(now) {
			delete(s.items, k)
		}
	}
	s.writes, s.sweepAt = 0, len(s.items)
}

// save writes the state file if change seq is not yet on disk.
func (c *Cache) save(op string, seq uint64) error {
	if seq == 0 {
		return nil
	}
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	if c.savedTo >= seq {
		return nil // a save that began after our change has covered it
	}
	if c.closed.Load() {
		return fmt.Errorf("memory: %s: done in memory, but not saved: %w", op, cache.ErrClosed)
	}
	upTo := c.seq.Load()
	entries := make(map[string][]byte)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		for k, e := range s.items {
			if e.durable() {
				entries[k] = e.value // never modified, so sharing is safe
			}
		}
		s.mu.RUnlock()
	}
	if err := store(c.file, entries); err != nil {
		return fmt.Errorf("memory: %s: done in memory, but not saved: %w", op, err)
	}
	c.savedTo = upTo
	return nil
}

// persistable reports whether key can be written to the state file, whose
// JSON object keys must be valid UTF-8.
func (c *Cache) persistable(key string) error {
	if c.file == "" || validKey(key) {
		return nil
	}
	return errors.New("a durable key must be valid UTF-8 when a state file is set")
}

func clone(b []byte) []byte { return append([]byte{}, b...) }
