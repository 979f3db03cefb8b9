package upstream_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

func TestDo(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name    string
		policy  upstream.Policy // Rand, Sleep and Now are set by the test
		results []error
		// wantCalls is len(results) when 0.
		wantCalls int
		wantWaits []time.Duration
		wantErr   error  // nil: success
		same      bool   // the error comes back unchanged
		wantMsg   string // in the error message
	}{
		{
			name:      "503 with Retry-After 2s then success",
			results:   []error{status(503, 2*time.Second), nil},
			wantWaits: []time.Duration{2 * time.Second},
		},
		{
			name:      "429 is retried",
			results:   []error{status(429, 0), nil},
			wantWaits: []time.Duration{50 * ms},
		},
		{
			name:      "429 with Retry-After",
			results:   []error{status(429, 3*time.Second), status(502, 0), nil},
			wantWaits: []time.Duration{3 * time.Second, 100 * ms},
		},
		{
			name:      "network errors back off exponentially",
			results:   []error{errNetwork, errNetwork, errNetwork, nil},
			wantWaits: []time.Duration{50 * ms, 100 * ms, 200 * ms},
		},
		{
			name:      "RetryAfterer in the chain",
			results:   []error{&hinted{1500 * ms}, nil},
			wantWaits: []time.Duration{1500 * ms},
		},
		{
			name:      "Retry-After 0 means backoff",
			results:   []error{status(503, 0), nil},
			wantWaits: []time.Duration{50 * ms},
		},
		{
			name:    "400 invalid_grant: one call",
			results: []error{oauth(providers.CodeInvalidGrant, 400)},
			wantErr: providers.ErrRejected, same: true,
		},
		{
			name:    "401 invalid_client: one call",
			results: []error{oauth(providers.CodeInvalidClient, 401)},
			wantErr: providers.ErrRejected, same: true,
		},
		{
			name:    "400 invalid_scope: one call",
			results: []error{oauth(providers.CodeInvalidScope, 400)},
			wantErr: providers.ErrRejected, same: true,
		},
		{
			name:    "400 unauthorized_client: one call",
			results: []error{oauth(providers.CodeUnauthorizedClient, 400)},
			wantErr: providers.ErrRejected, same: true,
		},
		{
			name:    "invalid response: one call",
			results: []error{errInvalid},
			wantErr: providers.ErrInvalidResponse, same: true,
		},
		{
			name:    "unclassified error: one call",
			results: []error{errors.New("tokenhttp: client id is required")},
			same:    true, wantMsg: "client id is required",
		},
		{
			name:    "unavailable and rejected at once: one call",
			results: []error{errors.Join(providers.ErrUnavailable, oauth(providers.CodeInvalidGrant, 400))},
			wantErr: providers.ErrRejected, same: true,
		},
		{
			name:      "rejected after a retry: annotated",
			results:   []error{status(503, 0), oauth(providers.CodeInvalidGrant, 400)},
			wantWaits: []time.Duration{50 * ms},
			wantErr:   providers.ErrRejected, wantMsg: "upstream: attempt 2 of 4: ",
		},
		{
			name:      "default MaxAttempts is 4",
			results:   []error{errNetwork, errNetwork, errNetwork, status(500, 0)},
			wantWaits: []time.Duration{50 * ms, 100 * ms, 200 * ms},
			wantErr:   providers.ErrUnavailable, wantMsg: "upstream: gave up after 4 attempts: clientcredentials: token: upstream unavailable: HTTP 500",
		},
		{
			name:      "MaxAttempts 2",
			policy:    upstream.Policy{MaxAttempts: 2},
			results:   []error{errNetwork, status(503, time.Second)},
			wantWaits: []time.Duration{50 * ms},
			wantErr:   providers.ErrUnavailable, wantMsg: "gave up after 2 attempts",
		},
		{
			name:    "MaxAttempts 1 disables retries",
			policy:  upstream.Policy{MaxAttempts: 1},
			results: []error{errNetwork},
			wantErr: providers.ErrUnavailable, wantMsg: "gave up after 1 attempt: ",
		},
		{
			name:      "backoff capped at MaxDelay",
			policy:    upstream.Policy{MaxAttempts: 6, BaseDelay: 100 * ms, MaxDelay: 300 * ms},
			results:   []error{errNetwork, errNetwork, errNetwork, errNetwork, errNetwork, nil},
			wantWaits: []time.Duration{50 * ms, 100 * ms, 150 * ms, 150 * ms, 150 * ms},
		},
		{
			name:    "Retry-After beyond MaxDelay: give up at once",
			results: []error{status(503, 10*time.Second)},
			wantErr: providers.ErrUnavailable, wantMsg: "gave up after 1 attempt (upstream asked to retry after 10s, more than the 5s limit)",
		},
		{
			name:      "Retry-After equal to MaxDelay is honoured",
			policy:    upstream.Policy{MaxDelay: 2 * time.Second},
			results:   []error{status(429, 2*time.Second), nil},
			wantWaits: []time.Duration{2 * time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			sl := &sleeper{t: t, clk: clk}
			p := tt.policy
			p.Rand, p.Sleep, p.Now = fixedRand(0.5), sl.Sleep, clk.Now
			s := &script{t: t, results: tt.results}

			err := p.Do(context.Background(), s.fn)

			wantCalls := tt.wantCalls
			if wantCalls == 0 {
				wantCalls = len(tt.results)
			}
			if got := s.Calls(); got != wantCalls {
				t.Errorf("calls = %d; want %d", got, wantCalls)
			}
			if diff := cmp.Diff(tt.wantWaits, sl.Waits()); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
			last := tt.results[len(tt.results)-1]
			switch {
			case last == nil && err != nil:
				t.Fatalf("Do() = %v; want nil", err)
			case last == nil:
				return
			case err == nil:
				t.Fatalf("Do() = nil; want an error")
			}
			if tt.same && err != last {
				t.Errorf("Do() = %v; want the fn's error unchanged: %v", err, last)
			}
			if !errors.Is(err, last) {
				t.Errorf("Do() = %v; want it to wrap the last error %v", err, last)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Do() = %v; want errors.Is %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Do() = %q; want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestDoDeadline(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name      string
		timeout   time.Duration
		policy    upstream.Policy
		results   []error
		wantWaits []time.Duration
		wantMsg   string
	}{
		{
			name:      "next backoff would pass the deadline",
			timeout:   time.Second,
			policy:    upstream.Policy{BaseDelay: 400 * ms, Rand: fixedRand(0.99)},
			results:   []error{errNetwork, status(503, 0)},
			wantWaits: []time.Duration{396 * ms}, // then 792ms: 1188ms > 1s
			wantMsg:   "gave up after 2 attempts (the next try in 792ms would pass the deadline): clientcredentials: token: upstream unavailable: HTTP 503",
		},
		{
			name:    "Retry-After longer than the time left",
			timeout: time.Second,
			policy:  upstream.Policy{Rand: fixedRand(0.5)},
			results: []error{status(503, 2*time.Second)},
			wantMsg: "gave up after 1 attempt (the next try in 2s would pass the deadline)",
		},
		{
			name:    "a wait ending exactly at the deadline is not made",
			timeout: 50 * ms,
			policy:  upstream.Policy{Rand: fixedRand(0.5)},
			results: []error{errNetwork},
			wantMsg: "the next try in 50ms would pass the deadline",
		},
		{
			name:      "waits that fit are made",
			timeout:   time.Second,
			policy:    upstream.Policy{Rand: fixedRand(0.5)},
			results:   []error{errNetwork, errNetwork, nil},
			wantWaits: []time.Duration{50 * ms, 100 * ms},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			sl := &sleeper{t: t, clk: clk} // fails the test on a wait past the deadline
			p := tt.policy
			p.Sleep, p.Now = sl.Sleep, clk.Now
			s := &script{t: t, results: tt.results}
			ctx := deadlineCtx{context.Background(), t0.Add(tt.timeout)}

			err := p.Do(ctx, s.fn)

			if got, want := s.Calls(), len(tt.results); got != want {
				t.Errorf("calls = %d; want %d", got, want)
			}
			if diff := cmp.Diff(tt.wantWaits, sl.Waits()); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("Do() = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, providers.ErrUnavailable) || !errors.Is(err, tt.results[len(tt.results)-1]) {
				t.Errorf("Do() = %v; want the last error, matching ErrUnavailable", err)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Do() = %v; want no DeadlineExceeded: the deadline has not passed", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Do() = %q; want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}

// The caller's own cancellation is never retried, even when the provider
// reports it as ErrUnavailable (tokenhttp keeps both in the chain).
func TestDoCallerContext(t *testing.T) {
	t.Run("canceled during the call", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		calls := 0
		callErr := errors.Join(providers.ErrUnavailable, context.Canceled)
		p := upstream.Policy{Sleep: func(context.Context, time.Duration) error {
			t.Error("Sleep called; want no retry")
			return nil
		}}
		err := p.Do(ctx, func(context.Context) error {
			calls++
			cancel()
			return callErr
		})
		if calls != 1 {
			t.Errorf("calls = %d; want 1", calls)
		}
		if err != callErr {
			t.Errorf("Do() = %v; want the call's error unchanged", err)
		}
	})
	t.Run("canceled during the wait", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		calls := 0
		p := upstream.Policy{Rand: fixedRand(0.5), Sleep: func(ctx context.Context, d time.Duration) error {
			cancel()
			return ctx.Err()
		}}
		err := p.Do(ctx, func(context.Context) error { calls++; return errNetwork })
		if calls != 1 {
			t.Errorf("calls = %d; want 1", calls)
		}
		if !errors.Is(err, context.Canceled) || !errors.Is(err, errNetwork) {
			t.Errorf("Do() = %v; want context.Canceled and the last error", err)
		}
		if want := "upstream: gave up after 1 attempt (context canceled): "; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Do() = %q; want prefix %q", err, want)
		}
	})
}

func TestJitterBounds(t *testing.T) {
	ms := time.Millisecond
	// BaseDelay 100ms, MaxDelay 1s: the bounds for attempts 1..7.
	ceilings := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second, time.Second}
	run := func(t *testing.T, r func() float64) []time.Duration {
		t.Helper()
		var waits []time.Duration
		p := upstream.Policy{
			MaxAttempts: len(ceilings) + 1, BaseDelay: 100 * ms, MaxDelay: time.Second, Rand: r,
			Sleep: func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil },
		}
		if err := p.Do(context.Background(), func(context.Context) error { return errNetwork }); !errors.Is(err, errNetwork) {
			t.Fatalf("Do() = %v; want %v", err, errNetwork)
		}
		if len(waits) != len(ceilings) {
			t.Fatalf("got %d waits; want %d", len(waits), len(ceilings))
		}
		return waits
	}
	for _, tt := range []struct {
		name string
		r    float64
		want []time.Duration
	}{
		{"rand 0", 0, make([]time.Duration, len(ceilings))},
		{"rand 0.25", 0.25, []time.Duration{25 * ms, 50 * ms, 100 * ms, 200 * ms, 250 * ms, 250 * ms, 250 * ms}},
		{"rand just below 1", math.Nextafter(1, 0), []time.Duration{
			100*ms - 1, 200*ms - 1, 400*ms - 1, 800*ms - 1, time.Second - 1, time.Second - 1, time.Second - 1}},
		{"rand 1 is out of range", 1, make([]time.Duration, len(ceilings))},
		{"rand negative is out of range", -0.5, make([]time.Duration, len(ceilings))},
		{"rand NaN is out of range", math.NaN(), make([]time.Duration, len(ceilings))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, run(t, fixedRand(tt.r))); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("default rand", func(t *testing.T) {
		seen := map[bool]int{} // wait in the lower or upper half of its range
		for range 200 {
			for i, w := range run(t, nil) {
				if w < 0 || w >= ceilings[i] {
					t.Fatalf("wait %d = %v; want in [0, %v)", i+1, w, ceilings[i])
				}
				seen[w >= ceilings[i]/2]++
			}
		}
		// 1400 draws: each half gets some unless the source is not random.
		if seen[false] == 0 || seen[true] == 0 {
			t.Errorf("waits by half of the range = %v; want both halves used", seen)
		}
	})
}

// The zero Policy sleeps on real timers, honours the caller's context while
// waiting, and gives up before the deadline; synctest's fake clock makes that
// exact without sleeping.
func TestZeroPolicy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		var p upstream.Policy
		start := time.Now()
		calls := 0
		err := p.Do(ctx, func(context.Context) error { calls++; return errNetwork })
		if calls != upstream.DefaultMaxAttempts {
			t.Errorf("calls = %d; want %d", calls, upstream.DefaultMaxAttempts)
		}
		if !errors.Is(err, errNetwork) {
			t.Errorf("Do() = %v; want %v", err, errNetwork)
		}
		if got, max := time.Since(start), 700*time.Millisecond; got >= max {
			t.Errorf("fake time waited %v; want under %v (100ms+200ms+400ms)", got, max)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		p := upstream.Policy{BaseDelay: time.Hour, MaxDelay: time.Hour, Rand: fixedRand(0.5)}
		go func() {
			time.Sleep(10 * time.Millisecond)
			cancel()
		}()
		start := time.Now()
		err := p.Do(ctx, func(context.Context) error { return errNetwork })
		if !errors.Is(err, context.Canceled) || !errors.Is(err, errNetwork) {
			t.Errorf("Do() = %v; want context.Canceled and the last error", err)
		}
		if got, want := time.Since(start), 10*time.Millisecond; got != want {
			t.Errorf("fake time waited %v; want %v: the wait ends with the context", got, want)
		}
	})
}
