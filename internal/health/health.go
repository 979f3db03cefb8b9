// Package health keeps the state of a dependency, such as the shared cache,
// checked by a background loop, so that readiness and health probes answer
// from memory, at once, whatever the dependency does.
//
// A Checker pings every Interval with a budget of Timeout. The state turns
// degraded on the first ping that fails or does not answer within Timeout,
// and healthy again on the first that succeeds. A ping that ignores its
// context is given up on at Timeout, and no second ping is started while it
// hangs.
package health

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Defaults for Options.
const (
	DefaultInterval = 500 * time.Millisecond
	DefaultTimeout  = 500 * time.Millisecond
)

// ErrTimeout is the State.Err of a ping that did not answer within
// Options.Timeout.
var ErrTimeout = errors.New("health: no answer within the timeout")

// Options configures Start.
type Options struct {
	// Ping checks the dependency; nil means it is always healthy. It is
	// called from one goroutine at a time.
	Ping func(ctx context.Context) error
	// Interval between the starts of two pings (0: DefaultInterval).
	Interval time.Duration
	// Timeout of one ping (0: DefaultTimeout).
	Timeout time.Duration
	// OnChange, if not nil, is called with the state after the first ping
	// (from Start) and after every change (from the checker's goroutine). It
	// must not block for long.
	OnChange func(State)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// State is what the last ping found.
type State struct {
	// Healthy is true when the last ping succeeded in time.
	Healthy bool
	// Since is when Healthy last changed, or when the checker started.
	Since time.Time
	// Err is the last ping's error, nil when Healthy.
	Err error
}

// A Checker pings a dependency in the background. Its methods are safe for
// concurrent use.
type Checker struct {
	o    Options
	stop context.CancelFunc
	done chan struct{}

	mu    sync.Mutex
	state State
}

// Start pings once, waiting at most o.Timeout, then goes on checking in the
// background until ctx ends or Stop is called.
func Start(ctx context.Context, o Options) *Checker {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Ping == nil {
		o.Ping = func(context.Context) error { return nil }
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &Checker{o: o, stop: cancel, done: make(chan struct{}), state: State{Since: o.Now()}}
	inFlight, err := c.ping(ctx)
	c.record(err, true)
	go c.loop(ctx, inFlight)
	return c
}

// State returns the current state without waiting for anything.
func (c *Checker) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Stop stops the checker and waits for its goroutine to end (a hung ping
// is left to its context, which Stop cancels).
func (c *Checker) Stop() {
	c.stop()
	<-c.done
}

// loop pings every interval. inFlight is a ping given up on that has not
// returned yet.
func (c *Checker) loop(ctx context.Context, inFlight chan error) {
	defer close(c.done)
	t := time.NewTicker(c.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var err error
		if inFlight != nil {
			select {
			case <-inFlight:
				inFlight = nil
			default:
				err = ErrTimeout // still hung: do not pile up another
			}
		}
		if err == nil {
			inFlight, err = c.ping(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		c.record(err, false)
	}
}

// ping runs one ping under the timeout. When the ping outlives it, ping
// returns the channel on which the ping will end, and ErrTimeout.
func (c *Checker) ping(ctx context.Context) (chan error, error) {
	pctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	res := make(chan error, 1)
	go func() {
		defer cancel()
		res <- c.o.Ping(pctx)
	}()
	timer := time.NewTimer(c.o.Timeout)
	defer timer.Stop()
	select {
	case err := <-res:
		if err != nil && pctx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("%w: %w", ErrTimeout, err)
		}
		return nil, err
	case <-timer.C:
		return res, ErrTimeout
	}
}

func (c *Checker) record(err error, first bool) {
	c.mu.Lock()
	old := c.state
	healthy := err == nil
	if healthy != old.Healthy {
		c.state.Healthy, c.state.Since = healthy, c.o.Now()
	}
	c.state.Err = err
	s := c.state
	c.mu.Unlock()
	if c.o.OnChange != nil && (first || healthy != old.Healthy) {
		c.o.OnChange(s)
	}
}
