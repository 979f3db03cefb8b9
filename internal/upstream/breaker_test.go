package upstream_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// breakerEnv is a breaker on a manual clock with a Policy that does not
// retry, so each call is one attempt.
type breakerEnv struct {
	t   *testing.T
	clk *clock
	p   *upstream.Policy
	b   *upstream.Breaker

	mu          sync.Mutex
	transitions []string
}

func newBreakerEnv(t *testing.T, cfg upstream.BreakerConfig) *breakerEnv {
	e := &breakerEnv{t: t, clk: newClock()}
	cfg.OnStateChange = func(from, to string) {
		// The hook may read the state: no lock is held.
		if got := e.b.State(); got == "" {
			t.Errorf("State() in OnStateChange = %q", got)
		}
		e.mu.Lock()
		e.transitions = append(e.transitions, from+"→"+to)
		e.mu.Unlock()
	}
	e.p = &upstream.Policy{
		MaxAttempts: 1, Now: e.clk.Now, Breaker: cfg,
		Sleep: func(context.Context, time.Duration) error { t.Error("Sleep called"); return nil },
	}
	e.b = e.p.NewBreaker()
	return e
}

// call makes one call through the breaker that returns result, and reports
// whether fn ran.
func (e *breakerEnv) call(result error) (ran bool, err error) {
	err = e.p.DoWithBreaker(context.Background(), e.b, func(context.Context) error {
		ran = true
		return result
	})
	return ran, err
}

func (e *breakerEnv) wantState(want string) {
	e.t.Helper()
	if got := e.b.State(); got != want {
		e.t.Errorf("State() = %q; want %q", got, want)
	}
}

func (e *breakerEnv) wantRefused(msg string) {
	e.t.Helper()
	ran, err := e.call(nil)
	if ran {
		e.t.Errorf("fn ran; want the breaker to refuse the call")
	}
	if !errors.Is(err, upstream.ErrBreakerOpen) || !errors.Is(err, providers.ErrUnavailable) {
		e.t.Errorf("DoWithBreaker() = %v; want ErrBreakerOpen and ErrUnavailable", err)
	}
	if err != nil && !strings.Contains(err.Error(), msg) {
		e.t.Errorf("DoWithBreaker() = %q; want it to contain %q", err, msg)
	}
}

func (e *breakerEnv) wantTransitions(want ...string) {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if diff := cmp.Diff(want, e.transitions); diff != "" {
		e.t.Errorf("transitions (-want +got):\n%s", diff)
	}
}

func TestBreakerCounting(t *testing.T) {
	rejected := oauth(providers.CodeInvalidGrant, 400)
	tests := []struct {
		name    string
		results []error
		want    string
	}{
		{"threshold reached", []error{errNetwork, status(503, 0), status(429, 0)}, upstream.StateOpen},
		{"one short of the threshold", []error{errNetwork, errNetwork}, upstream.StateClosed},
		{"success resets the count", []error{errNetwork, errNetwork, nil, errNetwork, errNetwork}, upstream.StateClosed},
		{"rejected errors do not count and reset the count", []error{errNetwork, errNetwork, rejected, errNetwork, errNetwork, rejected}, upstream.StateClosed},
		{"many rejected errors", []error{rejected, rejected, rejected, rejected, rejected, oauth(providers.CodeInvalidClient, 401)}, upstream.StateClosed},
		{"invalid responses do not count", []error{errInvalid, errInvalid, errInvalid, errInvalid}, upstream.StateClosed},
		{"cancellation is neutral", []error{errNetwork, errNetwork, errors.Join(providers.ErrUnavailable, context.Canceled), errNetwork}, upstream.StateOpen},
		{"unclassified errors are neutral", []error{errNetwork, errors.New("boom"), errNetwork, errNetwork}, upstream.StateOpen},
		{"timeouts count", []error{errors.Join(providers.ErrUnavailable, context.DeadlineExceeded), errNetwork, errNetwork}, upstream.StateOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newBreakerEnv(t, upstream.BreakerConfig{FailureThreshold: 3})
			for i, r := range tt.results {
				if ran, err := e.call(r); !ran || !errors.Is(err, r) {
					t.Fatalf("call %d: ran = %v, err = %v; want fn to run and return %v", i, ran, err, r)
				}
			}
			e.wantState(tt.want)
			if tt.want == upstream.StateOpen {
				e.wantRefused("circuit breaker open: next probe in 1s")
				e.wantTransitions("closed→open")
			} else {
				e.wantTransitions()
			}
		})
	}
}

func TestBreakerDefaults(t *testing.T) {
	e := newBreakerEnv(t, upstream.BreakerConfig{})
	for range upstream.DefaultFailureThreshold - 1 {
		e.call(errNetwork)
	}
	e.wantState(upstream.StateClosed)
	e.call(errNetwork)
	e.wantState(upstream.StateOpen)
	e.wantRefused("upstream unavailable: circuit breaker open: next probe in 1s")
	e.clk.Advance(upstream.DefaultCooldown - time.Millisecond)
	e.wantRefused("next probe in 1ms")
	e.clk.Advance(time.Millisecond)
	if ran, err := e.call(nil); !ran || err != nil {
		t.Fatalf("probe: ran = %v, err = %v; want it to run and succeed", ran, err)
	}
	e.wantState(upstream.StateClosed)
	e.wantTransitions("closed→open", "open→half-open", "half-open→closed")
}

func TestBreakerCooldownDoubles(t *testing.T) {
	e := newBreakerEnv(t, upstream.BreakerConfig{FailureThreshold: 1, Cooldown: 10 * time.Second, MaxCooldown: 25 * time.Second})
	e.call(errNetwork)
	// Each failed probe doubles the cooldown, up to MaxCooldown.
	for i, cooldown := range []time.Duration{10 * time.Second, 20 * time.Second, 25 * time.Second, 25 * time.Second} {
		e.wantState(upstream.StateOpen)
		e.wantRefused("next probe in " + cooldown.String())
		e.clk.Advance(cooldown - time.Millisecond)
		e.wantRefused("next probe in 1ms")
		e.clk.Advance(time.Millisecond)
		if i == 3 {
			break
		}
		if ran, _ := e.call(status(503, 0)); !ran {
			t.Fatalf("probe %d did not run", i+1)
		}
	}
	// A successful probe closes the breaker and resets the cooldown.
	if ran, err := e.call(nil); !ran || err != nil {
		t.Fatalf("probe: ran = %v, err = %v; want it to run and succeed", ran, err)
	}
	e.wantState(upstream.StateClosed)
	e.call(errNetwork)
	e.wantRefused("next probe in 10s")
	e.wantTransitions(
		"closed→open",
		"open→half-open", "half-open→open",
		"open→half-open", "half-open→open",
		"open→half-open", "half-open→open",
		"open→half-open", "half-open→closed",
		"closed→open",
	)
}

func TestBreakerProbeResults(t *testing.T) {
	tests := []struct {
		name  string
		probe error
		want  string
	}{
		{"success closes", nil, upstream.StateClosed},
		{"rejected closes: the upstream answered", oauth(providers.CodeInvalidGrant, 400), upstream.StateClosed},
		{"invalid response closes", errInvalid, upstream.StateClosed},
		{"unavailable reopens", status(503, 0), upstream.StateOpen},
		{"cancellation leaves it half-open", errors.Join(providers.ErrUnavailable, context.Canceled), upstream.StateHalfOpen},
		{"unclassified leaves it half-open", errors.New("boom"), upstream.StateHalfOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newBreakerEnv(t, upstream.BreakerConfig{FailureThreshold: 1})
			e.call(errNetwork)
			e.clk.Advance(upstream.DefaultCooldown)
			if ran, _ := e.call(tt.probe); !ran {
				t.Fatal("probe did not run")
			}
			e.wantState(tt.want)
			if tt.want == upstream.StateHalfOpen {
				// The next call is the probe.
				if ran, err := e.call(nil); !ran || err != nil {
					t.Fatalf("second probe: ran = %v, err = %v; want it to run and succeed", ran, err)
				}
				e.wantState(upstream.StateClosed)
			}
		})
	}
}

func TestBreakerOneProbeAtATime(t *testing.T) {
	const callers = 50
	e := newBreakerEnv(t, upstream.BreakerConfig{FailureThreshold: 1})
	e.call(errNetwork)
	e.clk.Advance(upstream.DefaultCooldown)

	var calls atomic.Int32
	entered, release := make(chan struct{}), make(chan struct{})
	fn := func(context.Context) error {
		if calls.Add(1) == 1 {
			close(entered)
			<-release // the probe runs until every other caller is done
		}
		return nil
	}
	results := make(chan error, callers)
	for range callers {
		go func() { results <- e.p.DoWithBreaker(context.Background(), e.b, fn) }()
	}
	<-entered
	for i := range callers - 1 {
		if err := <-results; !errors.Is(err, upstream.ErrBreakerOpen) || !strings.Contains(err.Error(), "a probe is in flight") {
			t.Errorf("caller %d: DoWithBreaker() = %v; want ErrBreakerOpen, a probe is in flight", i, err)
		}
	}
	e.wantState(upstream.StateHalfOpen)
	close(release)
	if err := <-results; err != nil {
		t.Errorf("probe: DoWithBreaker() = %v; want nil", err)
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("fn calls = %d; want 1", got)
	}
	e.wantState(upstream.StateClosed)
	e.wantTransitions("closed→open", "open→half-open", "half-open→closed")
}

// Calls that began before the breaker changed state do not count after it.
func TestBreakerStaleResults(t *testing.T) {
	e := newBreakerEnv(t, upstream.BreakerConfig{FailureThreshold: 2})
	started, finish := make(chan struct{}), make(chan error)
	done := make(chan error)
	go func() {
		done <- e.p.DoWithBreaker(context.Background(), e.b, func(context.Context) error {
			close(started)
			return <-finish
		})
	}()
	<-started
	e.call(errNetwork)
	e.call(errNetwork)
	e.wantState(upstream.StateOpen)
	finish <- nil // a success from before the trip does not close the breaker
	if err := <-done; err != nil {
		t.Fatalf("slow call: %v", err)
	}
	e.wantState(upstream.StateOpen)
	e.wantRefused("next probe in 1s")
}

// A breaker used with retries: every attempt counts, and once it opens the
// retries stop with both the breaker's refusal and the last upstream error.
func TestDoWithBreakerRetries(t *testing.T) {
	clk := newClock()
	sl := &sleeper{t: t, clk: clk}
	p := upstream.Policy{Rand: fixedRand(0.5), Sleep: sl.Sleep, Now: clk.Now, Breaker: upstream.BreakerConfig{FailureThreshold: 2}}
	b := p.NewBreaker()
	s := &script{t: t, results: []error{status(503, 0), status(503, time.Second)}}
	// The second failure opens the breaker: Do gives up without waiting.

	err := p.DoWithBreaker(context.Background(), b, s.fn)

	if got := s.Calls(); got != 2 {
		t.Errorf("calls = %d; want 2", got)
	}
	if !errors.Is(err, upstream.ErrBreakerOpen) || !errors.Is(err, providers.ErrUnavailable) || !errors.Is(err, s.results[1]) {
		t.Errorf("DoWithBreaker() = %v; want ErrBreakerOpen, ErrUnavailable and the last error", err)
	}
	want := "upstream: gave up after 2 attempts (upstream unavailable: circuit breaker open: next probe in 1s): " + s.results[1].Error()
	if err.Error() != want {
		t.Errorf("DoWithBreaker() = %q; want %q", err, want)
	}
	if got := b.State(); got != upstream.StateOpen {
		t.Errorf("State() = %q; want %q", got, upstream.StateOpen)
	}
	// A later call fails fast and is not retried.
	if err := p.DoWithBreaker(context.Background(), b, s.fn); !errors.Is(err, upstream.ErrBreakerOpen) {
		t.Errorf("DoWithBreaker() = %v; want ErrBreakerOpen", err)
	}
	if got, want := len(sl.Waits()), 1; got != want {
		t.Errorf("waits = %v; want %d", sl.Waits(), want)
	}
}

// A probe that panics frees the probe slot.
func TestBreakerProbePanics(t *testing.T) {
	e := newBreakerEnv(t, upstream.BreakerConfig{FailureThreshold: 1})
	e.call(errNetwork)
	e.clk.Advance(upstream.DefaultCooldown)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("no panic")
			}
		}()
		e.p.DoWithBreaker(context.Background(), e.b, func(context.Context) error { panic("boom") })
	}()
	e.wantState(upstream.StateHalfOpen)
	if ran, err := e.call(nil); !ran || err != nil {
		t.Fatalf("next probe: ran = %v, err = %v; want it to run and succeed", ran, err)
	}
	e.wantState(upstream.StateClosed)
}

// Many goroutines through one breaker: run with -race.
func TestBreakerConcurrent(t *testing.T) {
	e := newBreakerEnv(t, upstream.BreakerConfig{FailureThreshold: 3, Cooldown: time.Millisecond})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			for j := range 200 {
				var r error
				switch (i + j) % 3 {
				case 0:
					r = errNetwork
				case 1:
					r = oauth(providers.CodeInvalidGrant, 400)
				}
				e.call(r)
				e.clk.Advance(time.Millisecond / 4)
				_ = e.b.State()
			}
		})
	}
	wg.Wait()
	// Transitions come in order: each starts where the previous ended.
	e.mu.Lock()
	defer e.mu.Unlock()
	state := upstream.StateClosed
	for i, tr := range e.transitions {
		from, to, _ := strings.Cut(tr, "→")
		if from != state {
			t.Fatalf("transition %d is %s; want it to start from %s", i, tr, state)
		}
		state = to
	}
	if got := e.b.State(); got != state {
		t.Errorf("State() = %q; the last transition ended in %q", got, state)
	}
}
