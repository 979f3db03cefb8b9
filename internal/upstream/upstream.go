// Package upstream is the policy the broker wraps around every call to an
// upstream token endpoint.
//
// A Policy retries what may succeed later and nothing else. Retried: errors
// matching providers.ErrUnavailable (the upstream could not be reached, timed
// out, or answered HTTP 5xx or 429), with capped exponential backoff and full
// jitter, or after exactly the delay the upstream asked for in Retry-After
// (RFC 9110 §10.2.3). Never retried: providers.ErrRejected (RFC 6749 §5.2
// errors such as invalid_client, invalid_grant, invalid_scope,
// unauthorized_client: the same request cannot succeed),
// providers.ErrInvalidResponse, the caller's own cancellation or deadline,
// and ErrBreakerOpen. Every wait stays inside the caller's deadline.
//
// A Breaker, one per connection, stops a dead upstream from being hammered:
// after enough consecutive failures it fails calls fast, without contacting
// the upstream, until a cooldown has passed; then a single probe call decides
// whether it closes again. See Breaker.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// Defaults used when the corresponding Policy field is zero.
const (
	DefaultMaxAttempts = 4
	DefaultBaseDelay   = 100 * time.Millisecond
	DefaultMaxDelay    = 5 * time.Second
)

// A Policy says how calls to an upstream are retried. The zero Policy is
// ready to use, with the defaults above. A Policy must not be changed once in
// use; it is then safe for concurrent use, provided Rand, Sleep and Now are.
type Policy struct {
	// MaxAttempts is the most calls Do makes, the first included; 0 (or
	// less) means DefaultMaxAttempts, and 1 disables retries.
	MaxAttempts int
	// BaseDelay bounds the wait before the second attempt; the bound doubles
	// for each further attempt, up to MaxDelay. The wait itself is uniformly
	// random below the bound ("full jitter"). 0 (or less) means
	// DefaultBaseDelay.
	BaseDelay time.Duration
	// MaxDelay caps the backoff bound. It is also the longest Retry-After
	// honoured: when the upstream asks for a longer wait, Do gives up at
	// once instead of holding the caller. 0 (or less) means DefaultMaxDelay.
	MaxDelay time.Duration
	// Rand returns a uniformly random number in [0, 1), for jitter; nil
	// means math/rand/v2.Float64.
	Rand func() float64
	// Sleep waits for d, or until ctx is done and then returns ctx.Err();
	// nil means a timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// Now reads the clock, to compare a wait with the caller's deadline; nil
	// means time.Now. It is also the clock of the breakers made by
	// Policy.NewBreaker when Breaker.Now is nil.
	Now func() time.Time
	// Breaker configures the breakers made by Policy.NewBreaker. Do itself
	// does not read it.
	Breaker BreakerConfig
}

// NewBreaker returns a new closed Breaker configured by p.Breaker, for one
// connection.
func (p *Policy) NewBreaker() *Breaker { return p.NewBreakerNotify(nil) }

// NewBreakerNotify is NewBreaker with onChange, when not nil, called after
// p.Breaker.OnStateChange on every change of state (for one connection's
// metrics and logs). Production and tests build breakers this way.
func (p *Policy) NewBreakerNotify(onChange func(from, to string)) *Breaker {
	cfg := p.Breaker
	if cfg.Now == nil {
		cfg.Now = p.Now
	}
	if shared := cfg.OnStateChange; onChange != nil {
		cfg.OnStateChange = func(from, to string) {
			if shared != nil {
				shared(from, to)
			}
			onChange(from, to)
		}
	}
	return NewBreaker(cfg)
}

// Do calls fn until it succeeds, returns an error that is not retried, or
// the policy gives up; fn gets ctx unchanged. It is DoWithBreaker without a
// breaker.
func (p *Policy) Do(ctx context.Context, fn func(ctx context.Context) error) error {
	return p.DoWithBreaker(ctx, nil, fn)
}

// DoWithBreaker calls fn as Do does, each attempt through b when b is not
// nil: an attempt that b refuses is not made, and ends the retries.
//
// It returns nil once fn succeeds. An error that is not retried, met on the
// first attempt, comes back unchanged; otherwise the last error comes back
// wrapped (errors.Is still matches it) in a message giving the number of
// attempts and why Do stopped. Do stops when:
//   - fn's error is not retried (see the package documentation);
//   - MaxAttempts calls have been made;
//   - the next wait would reach ctx's deadline: the caller gets the last
//     error at once rather than DeadlineExceeded later;
//   - the upstream asked, in Retry-After, for a wait longer than MaxDelay;
//   - ctx is done during a wait: the error then also wraps ctx.Err();
//   - b refuses an attempt, or would refuse the next one (it is open): the
//     error then also wraps ErrBreakerOpen.
//
// When b refuses the first attempt, fn is never called and the error wraps
// both ErrBreakerOpen and providers.ErrUnavailable. Messages hold only what
// fn's errors hold, counts and durations.
func (p *Policy) DoWithBreaker(ctx context.Context, b *Breaker, fn func(ctx context.Context) error) error {
	maxAttempts := p.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = DefaultMaxAttempts
	}
	var last error
	for attempt := 1; ; attempt++ {
		called, err := p.attempt(ctx, b, fn)
		if !called {
			if last == nil {
				return err
			}
			return giveUp(attempt-1, err, last)
		}
		if err == nil {
			return nil
		}
		last = err
		if !retryable(ctx, err) {
			if attempt == 1 {
				return err
			}
			return fmt.Errorf("upstream: attempt %d of %d: %w", attempt, maxAttempts, err)
		}
		if attempt >= maxAttempts {
			return giveUp(attempt, nil, err)
		}
		if b != nil {
			if refusal := b.refusal(); refusal != nil {
				return giveUp(attempt, refusal, err) // no point in waiting
			}
		}
		wait, asked := p.delay(attempt, err)
		if max := p.maxDelay(); asked && wait > max {
			return giveUp(attempt, fmt.Errorf("upstream asked to retry after %v, more than the %v limit", wait, max), err)
		}
		if dl, ok := ctx.Deadline(); ok && !p.now().Add(wait).Before(dl) {
			return giveUp(attempt, fmt.Errorf("the next try in %v would pass the deadline", wait), err)
		}
		if serr := p.sleep(ctx, wait); serr != nil {
			return giveUp(attempt, serr, err)
		}
	}
}

// errAbandoned stands for the result of an fn that panicked: the breaker
// counts it as neither success nor failure.
var errAbandoned = errors.New("upstream: call abandoned")

// attempt makes one call through b. called is false when b refused it; err
// is then b's refusal.
func (p *Policy) attempt(ctx context.Context, b *Breaker, fn func(context.Context) error) (called bool, err error) {
	if b == nil {
		return true, fn(ctx)
	}
	done, err := b.allow()
	if err != nil {
		return false, err
	}
	finished := false
	defer func() {
		if !finished {
			done(errAbandoned)
		}
	}()
	err = fn(ctx)
	finished = true
	done(err)
	return true, err
}

// retryable reports whether err, returned by an attempt under ctx, may be
// retried. The checks for ErrRejected and ErrInvalidResponse matter only for
// an error that (oddly) matches ErrUnavailable as well: those are final.
func retryable(ctx context.Context, err error) bool {
	return errors.Is(err, providers.ErrUnavailable) &&
		!errors.Is(err, providers.ErrRejected) &&
		!errors.Is(err, providers.ErrInvalidResponse) &&
		!errors.Is(err, ErrBreakerOpen) &&
		ctx.Err() == nil
}

// giveUp wraps last, the error of the last attempt, with the number of
// attempts made and, when not nil, why Do stopped early.
func giveUp(attempts int, why, last error) error {
	noun := "attempts"
	if attempts == 1 {
		noun = "attempt"
	}
	if why == nil {
		return fmt.Errorf("upstream: gave up after %d %s: %w", attempts, noun, last)
	}
	return fmt.Errorf("upstream: gave up after %d %s (%w): %w", attempts, noun, why, last)
}

// delay returns the wait after the attempt-th attempt failed with err, and
// whether the upstream asked for it.
func (p *Policy) delay(attempt int, err error) (time.Duration, bool) {
	if d := retryAfter(err); d > 0 {
		return d, true
	}
	return p.backoff(attempt), false
}

// backoff is full jitter: uniform in [0, min(MaxDelay, BaseDelay·2^(attempt-1))).
func (p *Policy) backoff(attempt int) time.Duration {
	base, max := p.BaseDelay, p.maxDelay()
	if base <= 0 {
		base = DefaultBaseDelay
	}
	ceil := min(base, max)
	for i := 1; i < attempt && ceil < max; i++ {
		ceil = min(2*ceil, max) // 2*ceil cannot overflow: ceil < max.
	}
	r := rand.Float64
	if p.Rand != nil {
		r = p.Rand
	}
	f := r()
	if !(f >= 0 && f < 1) { // also NaN
		f = 0
	}
	return time.Duration(f * float64(ceil))
}

func (p *Policy) maxDelay() time.Duration {
	if p.MaxDelay <= 0 {
		return DefaultMaxDelay
	}
	return p.MaxDelay
}

func (p *Policy) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Policy) sleep(ctx context.Context, d time.Duration) error {
	if p.Sleep != nil {
		return p.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// retryAfter returns the delay the upstream asked for in err's chain, from
// the first RetryAfterer (tokenhttp.StatusError is one); 0 when there is
// none, or it asked for none.
func retryAfter(err error) time.Duration {
	var ra RetryAfterer
	if errors.As(err, &ra) {
		return max(ra.RetryAfterDelay(), 0)
	}
	return 0
}
