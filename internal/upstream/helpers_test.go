package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
)

var t0 = time.Unix(1700000000, 0).UTC()

// clock is a manual clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// sleeper records the waits asked for and advances clk instead of sleeping.
// It fails the test when a wait would end past ctx's deadline.
type sleeper struct {
	t     *testing.T
	clk   *clock
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleeper) Sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok && s.clk.Now().Add(d).After(dl) {
		s.t.Errorf("Sleep(%v) at %v ends past the deadline %v", d, s.clk.Now().Sub(t0), dl.Sub(t0))
	}
	s.clk.Advance(d)
	return ctx.Err()
}

func (s *sleeper) Waits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

// deadlineCtx has a deadline on the manual clock that the real clock never
// reaches: only Policy.Now decides whether a wait fits.
type deadlineCtx struct {
	context.Context
	deadline time.Time
}

func (c deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func fixedRand(f float64) func() float64 { return func() float64 { return f } }

// script returns an fn that returns results in order, and counts its calls.
// A call past the end of results fails the test.
type script struct {
	t       *testing.T
	mu      sync.Mutex
	results []error
	calls   int
}

func (s *script) fn(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls > len(s.results) {
		s.t.Errorf("call %d; want at most %d", s.calls, len(s.results))
		return errors.New("unexpected call")
	}
	return s.results[s.calls-1]
}

func (s *script) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Errors as providers return them.
var (
	errNetwork = fmt.Errorf("wx: token: %w: dial tcp 127.0.0.1:1: connect: connection refused", providers.ErrUnavailable)
	errInvalid = fmt.Errorf("wx: token: %w: HTTP 200: no access_token in the response", providers.ErrInvalidResponse)
)

func status(code int, retryAfter time.Duration) error {
	return fmt.Errorf("clientcredentials: token: %w", &tokenhttp.StatusError{Status: code, RetryAfter: retryAfter})
}

func oauth(code string, httpStatus int) error {
	return fmt.Errorf("authcode: refresh: %w", &providers.OAuthError{Code: code, HTTPStatus: httpStatus})
}

// hinted is an error that is not a *tokenhttp.StatusError but carries a
// Retry-After through the RetryAfterer interface.
type hinted struct{ d time.Duration }

func (e *hinted) Error() string                  { return fmt.Sprintf("throttled, retry after %v", e.d) }
func (e *hinted) Unwrap() error                  { return providers.ErrUnavailable }
func (e *hinted) RetryAfterDelay() time.Duration { return e.d }
