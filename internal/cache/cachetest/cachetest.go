// Package cachetest is the conformance suite every cache.Cache passes, so
// that the broker can rely on one behaviour whichever backend is configured.
//
// A backend's test is a few lines:
//
//	func TestConformance(t *testing.T) {
//		clk := cachetest.NewClock(time.Unix(1700000000, 0))
//		cachetest.Run(t, func(t *testing.T) cache.Cache {
//			c, err := memory.New(memory.Options{Now: clk.Now})
//			if err != nil {
//				t.Fatal(err)
//			}
//			return c
//		}, clk.Advancer())
//	}
//
// Failure messages name keys and give value lengths, never values: a real
// backend's test may hold real-looking secrets.
package cachetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// Run runs the conformance suite as named subtests of t.
//
// newCache returns a new, empty cache for one subtest; Run closes it when
// the subtest ends. advance makes d of time pass for c, as far as expiry is
// concerned; it must not sleep. Subtests run one after another, so several
// caches may share one clock.
//
// Every method is tested: the contract has no optional parts.
func Run(t *testing.T, newCache func(t *testing.T) cache.Cache, advance func(t *testing.T, c cache.Cache, d time.Duration)) {
	s := suite{newCache: newCache, advance: advance}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, c cache.Cache)
	}{
		{"GetMissing", s.getMissing},
		{"SetGet", s.setGet},
		{"Overwrite", s.overwrite},
		{"OverwriteChangesTTL", s.overwriteChangesTTL},
		{"ValuesAreCopied", s.valuesAreCopied},
		{"BinaryValues", s.binaryValues},
		{"KeysAreDistinct", s.keysAreDistinct},
		{"TTL", s.ttl},
		{"Durable", s.durable},
		{"NegativeTTL", s.negativeTTL},
		{"Delete", s.delete},
		{"DeleteMissing", s.deleteMissing},
		{"CompareAndDelete", s.compareAndDelete},
		{"CompareAndDeleteRace", s.compareAndDeleteRace},
		{"SetNX", s.setNX},
		{"SetNXTTL", s.setNXTTL},
		{"SetNXInvalidTTL", s.setNXInvalidTTL},
		{"SetNXRace", s.setNXRace},
		{"GetDel", s.getDel},
		{"GetDelRace", s.getDelRace},
		{"Concurrent", s.concurrent},
		{"Ping", s.ping},
		{"Lock", s.lock},
		{"LockReads", s.lockReads},
		{"LockCommit", s.lockCommit},
		{"IndexRange", s.indexRange},
		{"IndexDue", s.indexDue},
		{"LockTakeoverAfterLapse", s.lockTakeover},
		{"LockRace", s.lockRace},
		{"CloseThenUse", s.closeThenUse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(t)
			t.Cleanup(func() {
				if err := c.Close(); err != nil && !errors.Is(err, cache.ErrClosed) {
					t.Errorf("Close() = %v; want nil", err)
				}
			})
			tc.fn(t, c)
		})
	}
}

type suite struct {
	newCache func(t *testing.T) cache.Cache
	advance  func(t *testing.T, c cache.Cache, d time.Duration)
}

// ttl is long enough that the real time a test takes does not matter to a
// backend that expires by its own clock (Redis), and the margins around it
// are whole seconds for the same reason.
const ttl = time.Minute

func (s suite) getMissing(t *testing.T, c cache.Cache) {
	got, err := c.Get(t.Context(), "missing")
	if !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("Get(missing) = %s, %v; want error wrapping %v", describe(got), err, cache.ErrNotFound)
	}
}

func (s suite) setGet(t *testing.T, c cache.Cache) {
	for _, tt := range []struct {
		name string
		key  string
		ttl  time.Duration
	}{
		{"durable", "k-durable", 0},
		{"with ttl", "k-ttl", ttl},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want := []byte("value of " + tt.key)
			mustSet(t, c, tt.key, want, tt.ttl)
			wantValue(t, c, tt.key, want)
		})
	}
}

func (s suite) overwrite(t *testing.T, c cache.Cache) {
	mustSet(t, c, "k", []byte("first value"), 0)
	mustSet(t, c, "k", []byte("second, longer value"), 0)
	wantValue(t, c, "k", []byte("second, longer value"))
	mustSet(t, c, "k", []byte("3rd"), ttl)
	wantValue(t, c, "k", []byte("3rd"))
}

func (s suite) overwriteChangesTTL(t *testing.T, c cache.Cache) {
	mustSet(t, c, "ttl-then-durable", []byte("v1"), ttl)
	mustSet(t, c, "ttl-then-durable", []byte("v2"), 0)
	mustSet(t, c, "durable-then-ttl", []byte("v1"), 0)
	mustSet(t, c, "durable-then-ttl", []byte("v2"), ttl)
	s.advance(t, c, 2*ttl)
	wantValue(t, c, "ttl-then-durable", []byte("v2"))
	wantNotFound(t, c, "durable-then-ttl")
}

func (s suite) valuesAreCopied(t *testing.T, c cache.Cache) {
	in := []byte("original")
	mustSet(t, c, "k", in, 0)
	copy(in, "MUTATED!")
	wantValue(t, c, "k", []byte("original"))

	out, err := c.Get(t.Context(), "k")
	if err != nil {
		t.Fatalf("Get(k) error = %v", err)
	}
	for i := range out {
		out[i] = 'X'
	}
	wantValue(t, c, "k", []byte("original"))

	{
		mustSet(t, c, "gd", []byte("original"), 0)
		out, err := c.GetDel(t.Context(), "gd")
		if err != nil {
			t.Fatalf("GetDel(gd) error = %v", err)
		}
		mustSet(t, c, "gd2", out, 0)
		for i := range out {
			out[i] = 'X'
		}
		wantValue(t, c, "gd2", []byte("original"))
	}
	{
		in := []byte("original")
		if _, err := c.SetNX(t.Context(), "nx", in, ttl); err != nil {
			t.Fatalf("SetNX(nx) error = %v", err)
		}
		copy(in, "MUTATED!")
		wantValue(t, c, "nx", []byte("original"))
	}
}

func (s suite) binaryValues(t *testing.T, c cache.Cache) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	big := bytes.Repeat([]byte("0123456789abcdef\x00"), 1<<14) // ~272 KiB
	for _, tt := range []struct {
		name  string
		value []byte
	}{
		{"empty", []byte{}},
		{"nil", nil},
		{"one zero byte", []byte{0}},
		{"zeros", make([]byte, 64)},
		{"every byte", all},
		{"invalid utf8", []byte{0xff, 0xfe, 0xc3, 0x28}},
		{"trailing CRLF", []byte("value\r\n")},
		{"large", big},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := "bin:" + tt.name
			for _, d := range []time.Duration{0, ttl} {
				mustSet(t, c, key, tt.value, d)
				wantValue(t, c, key, tt.value)
			}
		})
	}
}

func (s suite) keysAreDistinct(t *testing.T, c cache.Cache) {
	// Characters that are special to glob patterns, key-value protocols or
	// namespaces, and keys that are prefixes of one another.
	keys := []string{"a", "ab", "a:b", "a*", "a?", "[a]", `a\`, "a b", "a\x00b", "ä", "a/b", "A"}
	for i, k := range keys {
		mustSet(t, c, k, fmt.Appendf(nil, "value %d", i), 0)
	}
	for i, k := range keys {
		wantValue(t, c, k, fmt.Appendf(nil, "value %d", i))
	}
	if err := c.Delete(t.Context(), "a*"); err != nil {
		t.Fatalf("Delete(%q) error = %v", "a*", err)
	}
	wantNotFound(t, c, "a*")
	wantValue(t, c, "a", []byte("value 0"))
	wantValue(t, c, "ab", []byte("value 1"))
}

func (s suite) ttl(t *testing.T, c cache.Cache) {
	mustSet(t, c, "k", []byte("v"), ttl)
	s.advance(t, c, ttl-time.Second)
	wantValue(t, c, "k", []byte("v"))
	s.advance(t, c, 2*time.Second)
	wantNotFound(t, c, "k")
}

func (s suite) durable(t *testing.T, c cache.Cache) {
	mustSet(t, c, "durable", []byte("v"), 0)
	mustSet(t, c, "short", []byte("v"), ttl)
	s.advance(t, c, 400*24*time.Hour)
	wantValue(t, c, "durable", []byte("v"))
	wantNotFound(t, c, "short")
}

func (s suite) negativeTTL(t *testing.T, c cache.Cache) {
	for _, d := range []time.Duration{-1, -time.Second} {
		if err := c.Set(t.Context(), "k", []byte("v"), d); !errors.Is(err, cache.ErrInvalidTTL) {
			t.Errorf("Set(k, ttl %v) = %v; want error wrapping %v", d, err, cache.ErrInvalidTTL)
		}
	}
	wantNotFound(t, c, "k")

	mustSet(t, c, "kept", []byte("v"), 0)
	if err := c.Set(t.Context(), "kept", []byte("other"), -time.Second); !errors.Is(err, cache.ErrInvalidTTL) {
		t.Errorf("Set(kept, ttl -1s) = %v; want error wrapping %v", err, cache.ErrInvalidTTL)
	}
	wantValue(t, c, "kept", []byte("v"))
}

func (s suite) delete(t *testing.T, c cache.Cache) {
	for _, tt := range []struct {
		name string
		ttl  time.Duration
	}{
		{"durable", 0},
		{"with ttl", ttl},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mustSet(t, c, "k", []byte("v"), tt.ttl)
			mustSet(t, c, "other", []byte("w"), tt.ttl)
			if err := c.Delete(t.Context(), "k"); err != nil {
				t.Fatalf("Delete(k) = %v; want nil", err)
			}
			wantNotFound(t, c, "k")
			wantValue(t, c, "other", []byte("w"))
		})
	}
}

func (s suite) deleteMissing(t *testing.T, c cache.Cache) {
	if err := c.Delete(t.Context(), "missing"); err != nil {
		t.Errorf("Delete(missing) = %v; want nil", err)
	}
	mustSet(t, c, "k", []byte("v"), 0)
	for i := range 2 {
		if err := c.Delete(t.Context(), "k"); err != nil {
			t.Errorf("Delete(k) #%d = %v; want nil", i+1, err)
		}
	}
}

func (s suite) compareAndDelete(t *testing.T, c cache.Cache) {
	for _, tt := range []struct {
		name      string
		stored    []byte // nil: key absent
		ttl       time.Duration
		expire    bool // advance past ttl before comparing
		old       []byte
		want      bool
		wantAfter []byte // nil: key absent
	}{
		{name: "match", stored: []byte("token-1"), old: []byte("token-1"), want: true},
		{name: "match with ttl", stored: []byte("token-1"), ttl: ttl, old: []byte("token-1"), want: true},
		{name: "mismatch", stored: []byte("token-2"), old: []byte("token-1"), wantAfter: []byte("token-2")},
		{name: "prefix is a mismatch", stored: []byte("token-12"), old: []byte("token-1"), wantAfter: []byte("token-12")},
		{name: "longer is a mismatch", stored: []byte("token-1"), old: []byte("token-12"), wantAfter: []byte("token-1")},
		{name: "missing", old: []byte("token-1")},
		{name: "missing vs empty", old: []byte{}},
		{name: "empty matches empty", stored: []byte{}, old: []byte{}, want: true},
		{name: "empty vs nil", stored: []byte{}, old: nil, want: true},
		{name: "binary match", stored: []byte{0, 1, 0xff}, old: []byte{0, 1, 0xff}, want: true},
		{name: "binary mismatch", stored: []byte{0, 1, 0xff}, old: []byte{0, 1, 0xfe}, wantAfter: []byte{0, 1, 0xff}},
		{name: "expired", stored: []byte("token-1"), ttl: ttl, expire: true, old: []byte("token-1")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := "cad:" + tt.name
			if tt.stored != nil {
				mustSet(t, c, key, tt.stored, tt.ttl)
			}
			if tt.expire {
				s.advance(t, c, tt.ttl+time.Second)
			}
			got, err := c.CompareAndDelete(t.Context(), key, tt.old)
			if err != nil {
				t.Fatalf("CompareAndDelete(%s) error = %v", key, err)
			}
			if got != tt.want {
				t.Errorf("CompareAndDelete(%s, %s) = %v; want %v", key, describe(tt.old), got, tt.want)
			}
			if tt.wantAfter == nil {
				wantNotFound(t, c, key)
			} else {
				wantValue(t, c, key, tt.wantAfter)
			}
		})
	}
}

// compareAndDeleteRace: N callers reporting the same dead token delete it
// once between them.
func (s suite) compareAndDeleteRace(t *testing.T, c cache.Cache) {
	for round := range 20 {
		mustSet(t, c, "k", []byte("token"), ttl)
		var wins atomic.Int32
		race(t, func(t *testing.T) {
			ok, err := c.CompareAndDelete(context.Background(), "k", []byte("token"))
			if err != nil {
				t.Errorf("CompareAndDelete(k) error = %v", err)
			}
			if ok {
				wins.Add(1)
			}
		})
		if got := wins.Load(); got != 1 {
			t.Fatalf("round %d: %d concurrent CompareAndDelete calls succeeded; want 1", round, got)
		}
	}
}

func (s suite) setNX(t *testing.T, c cache.Cache) {
	for _, tt := range []struct {
		name      string
		stored    []byte // nil: key absent
		ttl       time.Duration
		expire    bool
		want      bool
		wantAfter []byte
	}{
		{name: "absent", want: true, wantAfter: []byte("new")},
		{name: "present durable", stored: []byte("old"), wantAfter: []byte("old")},
		{name: "present with ttl", stored: []byte("old"), ttl: ttl, wantAfter: []byte("old")},
		{name: "present empty", stored: []byte{}, wantAfter: []byte{}},
		{name: "expired", stored: []byte("old"), ttl: ttl, expire: true, want: true, wantAfter: []byte("new")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := "nx:" + tt.name
			if tt.stored != nil {
				mustSet(t, c, key, tt.stored, tt.ttl)
			}
			if tt.expire {
				s.advance(t, c, tt.ttl+time.Second)
			}
			got, err := c.SetNX(t.Context(), key, []byte("new"), ttl)
			if err != nil {
				t.Fatalf("SetNX(%s) error = %v", key, err)
			}
			if got != tt.want {
				t.Errorf("SetNX(%s) = %v; want %v", key, got, tt.want)
			}
			wantValue(t, c, key, tt.wantAfter)
		})
	}
}

func (s suite) setNXTTL(t *testing.T, c cache.Cache) {
	if ok, err := c.SetNX(t.Context(), "k", []byte("v"), ttl); !ok || err != nil {
		t.Fatalf("SetNX(k) = %v, %v; want true, nil", ok, err)
	}
	s.advance(t, c, ttl-time.Second)
	wantValue(t, c, "k", []byte("v"))
	if ok, err := c.SetNX(t.Context(), "k", []byte("w"), ttl); ok || err != nil {
		t.Fatalf("SetNX(k) before expiry = %v, %v; want false, nil", ok, err)
	}
	s.advance(t, c, 2*time.Second)
	wantNotFound(t, c, "k")
}

func (s suite) setNXInvalidTTL(t *testing.T, c cache.Cache) {
	for _, d := range []time.Duration{0, -1, -time.Second} {
		if ok, err := c.SetNX(t.Context(), "k", []byte("v"), d); ok || !errors.Is(err, cache.ErrInvalidTTL) {
			t.Errorf("SetNX(k, ttl %v) = %v, %v; want false and an error wrapping %v", d, ok, err, cache.ErrInvalidTTL)
		}
	}
	wantNotFound(t, c, "k")
}

// setNXRace: of N callers claiming one marker, one wins.
func (s suite) setNXRace(t *testing.T, c cache.Cache) {
	for round := range 20 {
		key := fmt.Sprintf("nx-race:%d", round)
		var wins atomic.Int32
		race(t, func(t *testing.T) {
			ok, err := c.SetNX(context.Background(), key, []byte("v"), ttl)
			if err != nil {
				t.Errorf("SetNX(%s) error = %v", key, err)
			}
			if ok {
				wins.Add(1)
			}
		})
		if got := wins.Load(); got != 1 {
			t.Fatalf("%d concurrent SetNX(%s) calls succeeded; want 1", got, key)
		}
	}
}

func (s suite) getDel(t *testing.T, c cache.Cache) {
	for _, tt := range []struct {
		name string
		ttl  time.Duration
	}{
		{"durable", 0},
		{"with ttl", ttl},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want := []byte("single-use")
			mustSet(t, c, "k", want, tt.ttl)
			got, err := c.GetDel(t.Context(), "k")
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("GetDel(k) = %s, %v; want %s, nil", describe(got), err, describe(want))
			}
			if got, err := c.GetDel(t.Context(), "k"); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("second GetDel(k) = %s, %v; want error wrapping %v", describe(got), err, cache.ErrNotFound)
			}
			wantNotFound(t, c, "k")
		})
	}
	t.Run("missing", func(t *testing.T) {
		if got, err := c.GetDel(t.Context(), "missing"); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("GetDel(missing) = %s, %v; want error wrapping %v", describe(got), err, cache.ErrNotFound)
		}
	})
	t.Run("expired", func(t *testing.T) {
		mustSet(t, c, "exp", []byte("v"), ttl)
		s.advance(t, c, ttl+time.Second)
		if got, err := c.GetDel(t.Context(), "exp"); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("GetDel(exp) after expiry = %s, %v; want error wrapping %v", describe(got), err, cache.ErrNotFound)
		}
	})
}

// getDelRace: two replicas racing on a single-use value see it at most once.
func (s suite) getDelRace(t *testing.T, c cache.Cache) {
	for round := range 20 {
		mustSet(t, c, "k", []byte("code"), ttl)
		var wins atomic.Int32
		race(t, func(t *testing.T) {
			v, err := c.GetDel(context.Background(), "k")
			switch {
			case err == nil && bytes.Equal(v, []byte("code")):
				wins.Add(1)
			case err == nil:
				t.Errorf("GetDel(k) = %s; want %s", describe(v), describe([]byte("code")))
			case !errors.Is(err, cache.ErrNotFound):
				t.Errorf("GetDel(k) error = %v", err)
			}
		})
		if got := wins.Load(); got != 1 {
			t.Fatalf("round %d: %d concurrent GetDel calls got the value; want 1", round, got)
		}
	}
}

// concurrent hammers a few shared keys from many goroutines with every
// operation. Run it with -race. Each writer stores a value that identifies
// it, so a torn or mixed value is detected.
func (s suite) concurrent(t *testing.T, c cache.Cache) {
	const (
		workers = 8
		ops     = 150
	)
	keys := []string{"c0", "c1", "c2", "c3"}
	check := func(t *testing.T, op, key string, v []byte) {
		if !wellFormed(v) {
			t.Errorf("%s(%s) returned a value that no writer stored (%s)", op, key, describe(v))
		}
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			ctx := context.Background()
			mine := workerValue(w)
			for i := range ops {
				key := keys[(w+i)%len(keys)]
				var d time.Duration
				if i%3 == 0 {
					d = ttl
				}
				var err error
				switch i % 6 {
				case 0, 1:
					err = c.Set(ctx, key, mine, d)
				case 2:
					var v []byte
					if v, err = c.Get(ctx, key); err == nil {
						check(t, "Get", key, v)
					}
				case 3:
					err = c.Delete(ctx, key)
				case 4:
					if _, err = c.CompareAndDelete(ctx, key, mine); err == nil {
						_, err = c.SetNX(ctx, key, mine, ttl)
					}
				case 5:
					var v []byte
					if v, err = c.GetDel(ctx, key); err == nil {
						check(t, "GetDel", key, v)
					}
				}
				if err != nil && !errors.Is(err, cache.ErrNotFound) {
					t.Errorf("worker %d, op %d on %s: %v", w, i, key, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		if v, err := c.Get(t.Context(), k); err == nil {
			check(t, "Get", k, v)
		} else if !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("Get(%s) after the workers = %v", k, err)
		}
	}
}

// workerValue is 16+w bytes, every one of them w.
func workerValue(w int) []byte { return bytes.Repeat([]byte{byte(w)}, 16+w) }

func wellFormed(v []byte) bool {
	return len(v) > 0 && len(v) == 16+int(v[0]) && bytes.Count(v, v[:1]) == len(v)
}

func (s suite) ping(t *testing.T, c cache.Cache) {
	if err := c.Ping(t.Context()); err != nil {
		t.Errorf("Ping() = %v; want nil", err)
	}
}

func (s suite) closeThenUse(t *testing.T, c cache.Cache) {
	mustSet(t, c, "k", []byte("v"), 0)
	if err := c.Close(); err != nil {
		t.Fatalf("Close() = %v; want nil", err)
	}
	ctx := t.Context()
	calls := []struct {
		name string
		call func() error
	}{
		{"Get", func() error { _, err := c.Get(ctx, "k"); return err }},
		{"Set", func() error { return c.Set(ctx, "k", []byte("v"), 0) }},
		{"Delete", func() error { return c.Delete(ctx, "k") }},
		{"Close", c.Close},
		{"CompareAndDelete", func() error { _, err := c.CompareAndDelete(ctx, "k", []byte("v")); return err }},
		{"SetNX", func() error { _, err := c.SetNX(ctx, "k2", []byte("v"), ttl); return err }},
		{"GetDel", func() error { _, err := c.GetDel(ctx, "k"); return err }},
		{"Ping", func() error { return c.Ping(ctx) }},
		{"TryLock", func() error { _, _, err := c.TryLock(ctx, "{k}", ttl); return err }},
	}
	for _, tt := range calls {
		if err := tt.call(); !errors.Is(err, cache.ErrClosed) {
			t.Errorf("%s after Close = %v; want error wrapping %v", tt.name, err, cache.ErrClosed)
		}
	}
}

// race runs fn from several goroutines released at once.
func race(t *testing.T, fn func(t *testing.T)) {
	const n = 8
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			<-start
			fn(t)
		})
	}
	close(start)
	wg.Wait()
}

func mustSet(t *testing.T, c cache.Cache, key string, value []byte, ttl time.Duration) {
	t.Helper()
	if err := c.Set(t.Context(), key, value, ttl); err != nil {
		t.Fatalf("Set(%s, %s, ttl %v) = %v; want nil", key, describe(value), ttl, err)
	}
}

func wantValue(t *testing.T, c cache.Cache, key string, want []byte) {
	t.Helper()
	got, err := c.Get(t.Context(), key)
	if err != nil {
		t.Errorf("Get(%s) error = %v; want %s", key, err, describe(want))
		return
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Get(%s) = %s; want %s", key, describe(got), describe(want))
	}
}

func wantNotFound(t *testing.T, c cache.Cache, key string) {
	t.Helper()
	got, err := c.Get(t.Context(), key)
	if !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("Get(%s) = %s, %v; want error wrapping %v", key, describe(got), err, cache.ErrNotFound)
	}
}

// describe stands for a value in a failure message: its length, never its
// bytes.
func describe(v []byte) string { return fmt.Sprintf("<%d bytes>", len(v)) }
