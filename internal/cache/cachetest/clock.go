package cachetest

import (
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// A Clock is a fake clock for caches that take an injected Now. It only
// moves when told to. It is safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's current reading.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Advancer returns an advance function for Run that moves this clock,
// whichever cache it is given: use it when every cache under test reads the
// same Clock.
func (c *Clock) Advancer() func(t *testing.T, _ cache.Cache, d time.Duration) {
	return func(_ *testing.T, _ cache.Cache, d time.Duration) { c.Advance(d) }
}
