package cachetest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

func mustLock(t *testing.T, c cache.Cache, name string, keys ...string) (cache.Lease, [][]byte) {
	t.Helper()
	l, values, err := c.TryLock(t.Context(), name, ttl, keys...)
	if err != nil {
		t.Fatalf("TryLock(%s) = %v; want nil", name, err)
	}
	return l, values
}

func (s suite) lock(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	a, _ := mustLock(t, c, "{conn}")
	if _, _, err := c.TryLock(ctx, "{conn}", ttl); !errors.Is(err, cache.ErrLocked) {
		t.Fatalf("TryLock(held) = %v; want error wrapping %v", err, cache.ErrLocked)
	}
	if _, _, err := c.TryLock(ctx, "{other}", ttl); err != nil {
		t.Fatalf("TryLock(another name) = %v; want nil", err)
	}
	if _, _, err := c.TryLock(ctx, "{x}", 0); !errors.Is(err, cache.ErrInvalidTTL) {
		t.Errorf("TryLock(ttl 0) = %v; want error wrapping %v", err, cache.ErrInvalidTTL)
	}
	if err := a.Renew(ctx, ttl); err != nil {
		t.Errorf("Renew while held = %v; want nil", err)
	}
	s.advance(t, c, ttl/2)
	if _, _, err := c.TryLock(ctx, "{conn}", ttl); !errors.Is(err, cache.ErrLocked) {
		t.Fatalf("TryLock after Renew = %v; want %v", err, cache.ErrLocked)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatalf("Release = %v; want nil", err)
	}
	b, _ := mustLock(t, c, "{conn}")
	if err := a.Commit(ctx, cache.Write{Key: "grant:{conn}", Value: []byte("stale")}); !errors.Is(err, cache.ErrLeaseLost) {
		t.Errorf("Commit by a released holder = %v; want %v", err, cache.ErrLeaseLost)
	}
	wantNotFound(t, c, "grant:{conn}")
	if err := a.Release(ctx); err != nil {
		t.Errorf("second Release = %v; want nil", err)
	}
	if _, _, err := c.TryLock(ctx, "{conn}", ttl); !errors.Is(err, cache.ErrLocked) {
		t.Errorf("a stale Release freed another holder's lock: TryLock = %v", err)
	}
	_ = b.Release(ctx)
}

// TryLock reads its keys in the same step, whether it takes the lease or not.
func (s suite) lockReads(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	mustSet(t, c, "token:{conn}:a", []byte("tok"), ttl)
	mustSet(t, c, "grant:{conn}", []byte("grant"), 0)
	a, got := mustLock(t, c, "{conn}", "token:{conn}:a", "token:{conn}:missing", "grant:{conn}")
	want := []string{"tok", "", "grant"}
	if len(got) != len(want) {
		t.Fatalf("TryLock read %d values; want %d", len(got), len(want))
	}
	for i, w := range want {
		if string(got[i]) != w || (w == "") != (got[i] == nil) {
			t.Errorf("TryLock value[%d] = %q (nil %t); want %q", i, got[i], got[i] == nil, w)
		}
	}
	_, held, err := c.TryLock(ctx, "{conn}", ttl, "grant:{conn}")
	if !errors.Is(err, cache.ErrLocked) || len(held) != 1 || string(held[0]) != "grant" {
		t.Errorf("TryLock(held) = %q, %v; want [grant] and an error wrapping %v", held, err, cache.ErrLocked)
	}
	_ = a.Release(ctx)
}

// Commit writes, deletes and releases in one step.
func (s suite) lockCommit(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	mustSet(t, c, "token:{conn}:old", []byte("old"), ttl)
	a, _ := mustLock(t, c, "{conn}")
	err := a.Commit(ctx,
		cache.Write{Key: "grant:{conn}", Value: []byte("v1")},
		cache.Write{Key: "token:{conn}:", Value: []byte("tok"), TTL: ttl},
		cache.Write{Key: "token:{conn}:old", Delete: true})
	if err != nil {
		t.Fatalf("Commit while held = %v; want nil", err)
	}
	wantValue(t, c, "grant:{conn}", []byte("v1"))
	wantValue(t, c, "token:{conn}:", []byte("tok"))
	wantNotFound(t, c, "token:{conn}:old")
	s.advance(t, c, ttl+1e9)
	wantNotFound(t, c, "token:{conn}:")
	wantValue(t, c, "grant:{conn}", []byte("v1"))
	b, _ := mustLock(t, c, "{conn}") // Commit released it
	if err := a.Commit(ctx, cache.Write{Key: "grant:{conn}", Value: []byte("v2")}); !errors.Is(err, cache.ErrLeaseLost) {
		t.Errorf("second Commit = %v; want %v", err, cache.ErrLeaseLost)
	}
	if err := b.Commit(ctx, cache.Write{Key: "k", Value: []byte("v"), TTL: -1}); !errors.Is(err, cache.ErrInvalidTTL) {
		t.Errorf("Commit(ttl -1) = %v; want %v", err, cache.ErrInvalidTTL)
	}
	wantValue(t, c, "grant:{conn}", []byte("v1"))
	_ = b.Release(ctx)
}

// A holder whose lease lapsed cannot overwrite what the next holder wrote.
func (s suite) lockTakeover(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	old, _ := mustLock(t, c, "{conn}")
	s.advance(t, c, ttl+1e9)
	if err := old.Renew(ctx, ttl); !errors.Is(err, cache.ErrLeaseLost) {
		t.Errorf("Renew after lapse = %v; want %v", err, cache.ErrLeaseLost)
	}
	next, _ := mustLock(t, c, "{conn}")
	if err := next.Commit(ctx, cache.Write{Key: "grant:{conn}", Value: []byte("newer")}); err != nil {
		t.Fatal(err)
	}
	if err := old.Commit(ctx, cache.Write{Key: "grant:{conn}", Value: []byte("older")}); !errors.Is(err, cache.ErrLeaseLost) {
		t.Errorf("Commit by the lapsed holder = %v; want %v", err, cache.ErrLeaseLost)
	}
	wantValue(t, c, "grant:{conn}", []byte("newer"))
}

func (s suite) lockRace(t *testing.T, c cache.Cache) {
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, _, err := c.TryLock(t.Context(), "{race}", ttl); err == nil {
				wins.Add(1)
			} else if !errors.Is(err, cache.ErrLocked) {
				t.Errorf("TryLock = %v", err)
			}
		})
	}
	wg.Wait()
	if got := wins.Load(); got != 1 {
		t.Errorf("%d goroutines won the lock; want exactly 1", got)
	}
}
