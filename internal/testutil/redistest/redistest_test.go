package redistest_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

func TestStartPing(t *testing.T) {
	s := redistest.Start(t)
	c := s.Client(t)
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING %s: %v", s.Addr(), err)
	}
	// The defaults keep nothing on disk.
	for _, tt := range []struct{ param, want string }{
		{"save", ""},
		{"appendonly", "no"},
		{"dir", s.Dir()},
	} {
		got, err := c.ConfigGet(t.Context(), tt.param).Result()
		if err != nil {
			t.Fatalf("CONFIG GET %s: %v", tt.param, err)
		}
		if got[tt.param] != tt.want {
			t.Errorf("CONFIG GET %s = %q; want %q", tt.param, got[tt.param], tt.want)
		}
	}
}

func TestRestart(t *testing.T) {
	for _, tt := range []struct {
		name     string
		opts     []redistest.Option
		stop     func(s *redistest.Server)
		wantKept bool
	}{
		{"no persistence", nil, (*redistest.Server).Stop, false},
		{"persistence, stop", []redistest.Option{redistest.WithPersistence()}, (*redistest.Server).Stop, true},
		{"persistence, kill", []redistest.Option{redistest.WithPersistence()}, (*redistest.Server).Kill, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := redistest.Start(t, tt.opts...)
			addr := s.Addr()
			c := s.Client(t)
			if err := c.Set(t.Context(), "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			tt.stop(s)
			if err := c.Ping(t.Context()).Err(); err == nil {
				t.Fatalf("PING after stopping = nil; want an error")
			}
			s.Restart(t)
			if got := s.Addr(); got != addr {
				t.Errorf("Addr() after Restart = %s; want %s", got, addr)
			}
			_, err := c.Get(t.Context(), "k").Result()
			switch {
			case tt.wantKept && err != nil:
				t.Errorf("GET k after restart: %v; want the value kept", err)
			case !tt.wantKept && !errors.Is(err, redis.Nil):
				t.Errorf("GET k after restart: %v; want redis.Nil (data not kept)", err)
			}
		})
	}
}

func TestWithArgsPassword(t *testing.T) {
	s := redistest.Start(t, redistest.WithArgs("--requirepass", "test-password"))
	if err := s.Client(t).Ping(t.Context()).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("PING without a password = %v; want NOAUTH", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: "test-password"})
	defer c.Close()
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Errorf("PING with the password = %v; want nil", err)
	}
}

func TestMissingBinaryFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	ft := run(t, func(tb testing.TB) { redistest.Start(tb) })
	if !ft.failed {
		t.Fatal("Start without redis-server did not fail the test")
	}
	if ft.msg != redistest.NotFoundMessage {
		t.Errorf("failure message = %q; want %q", ft.msg, redistest.NotFoundMessage)
	}
}

func TestStartFailureShowsLog(t *testing.T) {
	ft := run(t, func(tb testing.TB) {
		redistest.Start(tb, redistest.WithArgs("--no-such-directive", "x"))
	})
	if !ft.failed {
		t.Fatal("Start with a bad argument did not fail the test")
	}
	for _, want := range []string{"last lines of", "no-such-directive"} {
		if !strings.Contains(ft.msg, want) {
			t.Errorf("failure message does not contain %q:\n%s", want, ft.msg)
		}
	}
}

func TestParallelServers(t *testing.T) {
	var wg sync.WaitGroup
	addrs := make([]string, 4)
	for i := range addrs {
		wg.Go(func() {
			ft := run(t, func(tb testing.TB) { addrs[i] = redistest.Start(tb).Addr() })
			if ft.failed {
				t.Errorf("server %d: %s", i, ft.msg)
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Errorf("two servers share address %s", a)
		}
		seen[a] = true
	}
}

// fakeT records a fatal failure instead of failing the real test.
type fakeT struct {
	testing.TB
	mu     sync.Mutex
	failed bool
	msg    string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Fatal(args ...any) { f.fail(fmt.Sprint(args...)) }

func (f *fakeT) Fatalf(format string, args ...any) { f.fail(fmt.Sprintf(format, args...)) }

func (f *fakeT) fail(msg string) {
	f.mu.Lock()
	f.failed, f.msg = true, msg
	f.mu.Unlock()
	runtime.Goexit()
}

// run calls fn with a fakeT on its own goroutine, as the testing package
// does, so that Fatal can end it.
func run(t *testing.T, fn func(tb testing.TB)) *fakeT {
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(ft)
	}()
	<-done
	return ft
}

func TestAdvanceTTLs(t *testing.T) {
	s := redistest.Start(t)
	c := s.Client(t)
	ctx := t.Context()
	for _, k := range []struct {
		key string
		ttl time.Duration
	}{
		{"p*:short", time.Minute},
		{"p*:long", time.Hour},
		{"p*:durable", 0},
		{"pX:other", time.Minute}, // matches p*: as a glob, but not as a prefix
	} {
		if err := c.Set(ctx, k.key, "v", k.ttl).Err(); err != nil {
			t.Fatal(err)
		}
	}
	redistest.AdvanceTTLs(t, c, "p*:", 2*time.Minute)
	for _, tt := range []struct {
		key      string
		min, max time.Duration // -1, -1: no expiry; -2, -2: gone
	}{
		{"p*:short", -2, -2},
		{"p*:long", 57 * time.Minute, 58 * time.Minute},
		{"p*:durable", -1, -1},
		{"pX:other", 59 * time.Second, time.Minute},
	} {
		n, err := c.Do(ctx, "PTTL", tt.key).Int64()
		if err != nil {
			t.Fatal(err)
		}
		got := time.Duration(n) * time.Millisecond
		if n < 0 {
			got = time.Duration(n)
		}
		if got < tt.min || got > tt.max {
			t.Errorf("PTTL %s after advancing 2m = %v; want %v..%v", tt.key, got, tt.min, tt.max)
		}
	}
}
