package health_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/health"
)

// waitTimeout bounds every wait for the checker; it never passes on a
// healthy run.
const waitTimeout = 10 * time.Second

// A pinger answers each ping with what the test sends on answers; it tells
// the test that a ping started on calls.
type pinger struct {
	calls   chan struct{}
	answers chan error
}

func newPinger() *pinger {
	return &pinger{calls: make(chan struct{}, 100), answers: make(chan error, 1)}
}

// ping answers with the next error the test sends, or with its context's
// error.
func (p *pinger) ping(ctx context.Context) error {
	p.calls <- struct{}{}
	select {
	case err := <-p.answers:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func start(t *testing.T, o health.Options) (*health.Checker, chan health.State) {
	t.Helper()
	changes := make(chan health.State, 100)
	o.OnChange = func(s health.State) { changes <- s }
	c := health.Start(t.Context(), o)
	t.Cleanup(c.Stop)
	return c, changes
}

func next(t *testing.T, changes chan health.State) health.State {
	t.Helper()
	select {
	case s := <-changes:
		return s
	case <-time.After(waitTimeout):
		t.Fatal("no state change")
		return health.State{}
	}
}

func TestFlipsOnFirstFailureAndBack(t *testing.T) {
	p := newPinger()
	clock := time.Unix(1700000000, 0)
	now := func() time.Time { return clock }
	p.answers <- nil // the first ping, made by Start
	c, changes := start(t, health.Options{Ping: p.ping, Interval: time.Millisecond, Timeout: waitTimeout, Now: now})
	if s := c.State(); !s.Healthy || s.Err != nil {
		t.Fatalf("State() after Start = %+v; want healthy", s)
	}
	if s := next(t, changes); !s.Healthy {
		t.Fatalf("first change: %+v; want healthy", s)
	}
	<-p.calls
	<-p.calls
	p.answers <- nil // no change: no call
	<-p.calls
	boom := errors.New("boom")
	p.answers <- boom
	s := next(t, changes)
	if s.Healthy || !errors.Is(s.Err, boom) || !s.Since.Equal(clock) {
		t.Fatalf("after one failed ping: %+v; want degraded by %v since %v", s, boom, clock)
	}
	<-p.calls
	p.answers <- nil
	if s := next(t, changes); !s.Healthy {
		t.Fatalf("after a successful ping again: %+v; want healthy", s)
	}
}

// TestTimeoutWithoutWaitingForThePing: a ping that never answers, not
// even to its context, makes the state degraded at the timeout; State
// answers meanwhile, and no second ping piles up behind the hung one.
func TestTimeoutWithoutWaitingForThePing(t *testing.T) {
	release := make(chan struct{})
	hung := make(chan struct{}, 100)
	c, changes := start(t, health.Options{Ping: func(ctx context.Context) error {
		hung <- struct{}{}
		<-release
		return nil
	}, Interval: time.Millisecond, Timeout: 20 * time.Millisecond})
	<-hung
	s := next(t, changes)
	if s.Healthy || !errors.Is(s.Err, health.ErrTimeout) {
		t.Fatalf("with a hung ping: %+v; want degraded by %v", s, health.ErrTimeout)
	}
	if got := c.State(); got.Healthy {
		t.Errorf("State() while the ping hangs = %+v; want degraded", got)
	}
	// Several intervals pass; the hung ping is not joined by others.
	for range 5 {
		select {
		case <-hung:
			t.Fatal("a second ping started while the first still hangs")
		case <-time.After(5 * time.Millisecond):
		}
	}
	close(release)
	if s := next(t, changes); !s.Healthy {
		t.Fatalf("after the hung ping returned and the next succeeded: %+v; want healthy", s)
	}
}

// TestContextTimeoutIsATimeout: a ping that honours its context and fails
// with the context's error reports ErrTimeout.
func TestContextTimeoutIsATimeout(t *testing.T) {
	p := newPinger()
	_, changes := start(t, health.Options{Ping: p.ping, Interval: time.Millisecond, Timeout: 10 * time.Millisecond})
	s := next(t, changes)
	if s.Healthy || !errors.Is(s.Err, health.ErrTimeout) {
		t.Fatalf("after a ping past its timeout: %+v; want degraded by %v", s, health.ErrTimeout)
	}
}

func TestNilPingIsHealthy(t *testing.T) {
	_, changes := start(t, health.Options{})
	if s := next(t, changes); !s.Healthy {
		t.Fatalf("with no Ping: %+v; want healthy", s)
	}
}
