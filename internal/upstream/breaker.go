package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// Defaults used when the corresponding BreakerConfig field is zero.
const (
	DefaultFailureThreshold = 5
	// A dead upstream sees at most one probe per connection and replica
	// every DefaultMaxCooldown, and callers get tokens again within about
	// that long once it is back (issue 13: recovery within 3 s).
	DefaultCooldown    = time.Second
	DefaultMaxCooldown = 2 * time.Second
)

// The states a Breaker reports, in State and OnStateChange.
const (
	StateClosed   = "closed"
	StateOpen     = "open"
	StateHalfOpen = "half-open"
)

// BreakerConfig configures a Breaker.
type BreakerConfig struct {
	// FailureThreshold is the number of consecutive failed calls that opens
	// the breaker; 0 (or less) means DefaultFailureThreshold.
	FailureThreshold int
	// Cooldown is how long the breaker stays open after it first opens; it
	// doubles each time a probe fails, up to MaxCooldown, and is back to
	// Cooldown once a probe succeeds. 0 (or less) means DefaultCooldown.
	Cooldown time.Duration
	// MaxCooldown caps the cooldown; 0 (or less) means DefaultMaxCooldown,
	// and a value below Cooldown means Cooldown.
	MaxCooldown time.Duration
	// Now reads the clock; nil means time.Now.
	Now func() time.Time
	// OnStateChange, when not nil, is called after every change of state
	// (from and to are State* constants), for metrics and logs. Calls come
	// in the order of the changes and never overlap; they are made without
	// the breaker's lock held, so they may call State, but possibly on the
	// goroutine of another call through the breaker, a moment after the
	// change. It must be quick and must not panic.
	OnStateChange func(from, to string)
}

// A Breaker is the circuit breaker of one connection. Use it through
// Policy.DoWithBreaker. It is safe for concurrent use.
//
// Closed, it lets every call through and counts consecutive failures; at
// FailureThreshold it opens. Open, it refuses calls, with an error wrapping
// ErrBreakerOpen and providers.ErrUnavailable that says when the next probe
// may be made. Once the cooldown has passed, the next call is let through as
// the probe, and the breaker is half-open: while the probe runs, every other
// call is refused. A successful probe closes the breaker; a failed one opens
// it again for twice the previous cooldown (at most MaxCooldown).
//
// A failure is an error matching providers.ErrUnavailable: the upstream
// could not be reached, timed out (also when the caller's deadline ran out
// first: a hung upstream must open the breaker), or answered 5xx or 429. A
// success is nil, providers.ErrRejected or providers.ErrInvalidResponse: the
// upstream answered, so it is up, even if it refused (invalid_grant, …).
// Anything else, the caller's cancellation (context.Canceled) included,
// counts as neither; a probe that ends so leaves the breaker half-open for the
// next call to probe. A call's result counts only while the breaker is still
// in the state (and, for half-open, the probe) it started in.
type Breaker struct {
	threshold             int
	cooldown, maxCooldown time.Duration
	now                   func() time.Time
	onChange              func(from, to string)

	mu        sync.Mutex
	state     string
	gen       uint64 // incremented on every change of state
	failures  int    // consecutive failures, while closed
	trips     int    // opens since the breaker was last closed
	openUntil time.Time
	probing   bool // half-open and the probe is running
	pending   []transition
	notifying bool
}

type transition struct{ from, to string }

// NewBreaker returns a closed Breaker.
func NewBreaker(cfg BreakerConfig) *Breaker {
	b := &Breaker{
		threshold:   cfg.FailureThreshold,
		cooldown:    cfg.Cooldown,
		maxCooldown: cfg.MaxCooldown,
		now:         cfg.Now,
		onChange:    cfg.OnStateChange,
		state:       StateClosed,
	}
	if b.threshold <= 0 {
		b.threshold = DefaultFailureThreshold
	}
	if b.cooldown <= 0 {
		b.cooldown = DefaultCooldown
	}
	if b.maxCooldown <= 0 {
		b.maxCooldown = DefaultMaxCooldown
	}
	b.maxCooldown = max(b.maxCooldown, b.cooldown)
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

// State returns StateClosed, StateOpen or StateHalfOpen. An open breaker
// whose cooldown has passed still reports StateOpen until a call comes to
// probe.
func (b *Breaker) State() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// allow asks to make one call. If the breaker refuses, err says why;
// otherwise the caller must report the call's result to done exactly once.
func (b *Breaker) allow() (done func(error), err error) {
	b.mu.Lock()
	if err := b.refusalLocked(); err != nil {
		b.mu.Unlock()
		return nil, err
	}
	switch b.state {
	case StateOpen:
		b.setState(StateHalfOpen)
		b.probing = true
	case StateHalfOpen:
		b.probing = true
	}
	gen := b.gen
	b.mu.Unlock()
	b.notify()
	return func(err error) { b.record(gen, err) }, nil
}

// refusal returns the error allow would refuse a call with now, or nil.
func (b *Breaker) refusal() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refusalLocked()
}

func (b *Breaker) refusalLocked() error {
	switch {
	case b.state == StateOpen:
		if wait := b.openUntil.Sub(b.now()); wait > 0 {
			return fmt.Errorf("%w: %w: next probe in %v", providers.ErrUnavailable, ErrBreakerOpen, ceilMillis(wait))
		}
	case b.state == StateHalfOpen && b.probing:
		return fmt.Errorf("%w: %w: a probe is in flight", providers.ErrUnavailable, ErrBreakerOpen)
	}
	return nil
}

// record takes the result of a call allowed in generation gen.
func (b *Breaker) record(gen uint64, err error) {
	b.mu.Lock()
	if gen != b.gen {
		b.mu.Unlock()
		return
	}
	switch classify(err) {
	case success:
		b.failures = 0
		if b.state == StateHalfOpen {
			b.probing = false
			b.trips = 0
			b.setState(StateClosed)
		}
	case failure:
		if b.state == StateHalfOpen {
			b.trip()
			break
		}
		b.failures++
		if b.failures >= b.threshold {
			b.trip()
		}
	case neutral:
		if b.state == StateHalfOpen {
			b.probing = false
		}
	}
	b.mu.Unlock()
	b.notify()
}

// trip opens the breaker; b.mu is held.
func (b *Breaker) trip() {
	b.trips++
	d := b.cooldown
	for i := 1; i < b.trips && d < b.maxCooldown; i++ {
		d = min(2*d, b.maxCooldown)
	}
	b.openUntil = b.now().Add(d)
	b.failures = 0
	b.probing = false
	b.setState(StateOpen)
}

// setState changes the state and queues the notification; b.mu is held.
func (b *Breaker) setState(to string) {
	if to == b.state {
		return
	}
	if b.onChange != nil {
		b.pending = append(b.pending, transition{b.state, to})
	}
	b.state = to
	b.gen++
}

// notify delivers the queued notifications, in order, unless another
// goroutine already is: that one will deliver those queued meanwhile too.
func (b *Breaker) notify() {
	if b.onChange == nil {
		return
	}
	b.mu.Lock()
	if b.notifying {
		b.mu.Unlock()
		return
	}
	b.notifying = true
	defer func() {
		if r := recover(); r != nil {
			b.mu.Lock()
			b.notifying = false
			b.mu.Unlock()
			panic(r)
		}
	}()
	for len(b.pending) > 0 {
		t := b.pending[0]
		b.pending = b.pending[1:]
		b.mu.Unlock()
		b.onChange(t.from, t.to)
		b.mu.Lock()
	}
	b.notifying = false
	b.mu.Unlock()
}

type outcome int

const (
	neutral outcome = iota
	success
	failure
)

func classify(err error) outcome {
	switch {
	case err == nil:
		return success
	case errors.Is(err, context.Canceled):
		return neutral
	case errors.Is(err, providers.ErrRejected), errors.Is(err, providers.ErrInvalidResponse):
		return success
	case errors.Is(err, providers.ErrUnavailable):
		return failure
	}
	return neutral
}

// ceilMillis rounds d up to a millisecond, for messages.
func ceilMillis(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}
