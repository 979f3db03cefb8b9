package cachetest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

func locker(t *testing.T, c cache.Cache) cache.Locker {
	t.Helper()
	l, ok := c.(cache.Locker)
	if !ok {
		t.Skip("cache does not implement cache.Locker")
	}
	return l
}

func (s suite) lock(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	l := locker(t, c)
	a, err := l.TryLock(ctx, "{conn}", ttl)
	if err != nil {
		t.Fatalf("TryLock(free) = %v; want nil", err)
	}
	if _, err := l.TryLock(ctx, "{conn}", ttl); !errors.Is(err, cache.ErrLocked) {
		t.Fatalf("TryLock(held) = %v; want error wrapping %v", err, cache.ErrLocked)
	}
	if _, err := l.TryLock(ctx, "{other}", ttl); err != nil {
		t.Fatalf("TryLock(another name) = %v; want nil", err)
	}
	if _, err := l.TryLock(ctx, "{x}", 0); !errors.Is(err, cache.ErrInvalidTTL) {
		t.Errorf("TryLock(ttl 0) = %v; want error wrapping %v", err, cache.ErrInvalidTTL)
	}
	if err := a.SetIfHeld(ctx, "grant:{conn}", []byte("v1"), 0); err != nil {
		t.Fatalf("SetIfHeld while held = %v; want nil", err)
	}
	wantValue(t, c, "grant:{conn}", []byte("v1"))
	if err := a.SetIfHeld(ctx, "token:{conn}:", []byte("tok"), ttl); err != nil {
		t.Fatalf("SetIfHeld with ttl while held = %v; want nil", err)
	}
	s.advance(t, c, ttl/2)
	if err := a.Renew(ctx, ttl); err != nil {
		t.Fatalf("Renew while held = %v; want nil", err)
	}
	s.advance(t, c, ttl*3/4) // past the first ttl, within the renewed one
	if _, err := l.TryLock(ctx, "{conn}", ttl); !errors.Is(err, cache.ErrLocked) {
		t.Fatalf("TryLock after Renew = %v; want %v", err, cache.ErrLocked)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatalf("Release = %v; want nil", err)
	}
	b, err := l.TryLock(ctx, "{conn}", ttl)
	if err != nil {
		t.Fatalf("TryLock after Release = %v; want nil", err)
	}
	if err := a.SetIfHeld(ctx, "grant:{conn}", []byte("stale"), 0); !errors.Is(err, cache.ErrLeaseLost) {
		t.Errorf("SetIfHeld by a released holder = %v; want %v", err, cache.ErrLeaseLost)
	}
	wantValue(t, c, "grant:{conn}", []byte("v1"))
	if err := a.Release(ctx); err != nil {
		t.Errorf("second Release = %v; want nil", err)
	}
	if _, err := l.TryLock(ctx, "{conn}", ttl); !errors.Is(err, cache.ErrLocked) {
		t.Errorf("a stale Release freed another holder's lock: TryLock = %v", err)
	}
	_ = b.Release(ctx)
}

// A holder whose lease lapsed cannot overwrite what the next holder wrote.
func (s suite) lockTakeover(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	l := locker(t, c)
	old, err := l.TryLock(ctx, "{conn}", ttl)
	if err != nil {
		t.Fatal(err)
	}
	s.advance(t, c, ttl+1e9)
	if err := old.Renew(ctx, ttl); !errors.Is(err, cache.ErrLeaseLost) {
		t.Errorf("Renew after lapse = %v; want %v", err, cache.ErrLeaseLost)
	}
	next, err := l.TryLock(ctx, "{conn}", ttl)
	if err != nil {
		t.Fatalf("TryLock after lapse = %v; want nil", err)
	}
	if err := next.SetIfHeld(ctx, "grant:{conn}", []byte("newer"), 0); err != nil {
		t.Fatal(err)
	}
	if err := old.SetIfHeld(ctx, "grant:{conn}", []byte("older"), 0); !errors.Is(err, cache.ErrLeaseLost) {
		t.Errorf("SetIfHeld by the lapsed holder = %v; want %v", err, cache.ErrLeaseLost)
	}
	wantValue(t, c, "grant:{conn}", []byte("newer"))
}

func (s suite) lockRace(t *testing.T, c cache.Cache) {
	l := locker(t, c)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := l.TryLock(t.Context(), "{race}", ttl); err == nil {
				wins.Add(1)
			} else if !errors.Is(err, cache.ErrLocked) {
				t.Errorf("TryLock = %v", err)
			}
		}()
	}
	wg.Wait()
	if got := wins.Load(); got != 1 {
		t.Errorf("%d goroutines won the lock; want exactly 1", got)
	}
}
