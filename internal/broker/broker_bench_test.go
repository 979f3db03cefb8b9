package broker

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// The hit path: GetToken answered from L1, and its parts. Run with
//
//	go test -run '^$' -bench . -benchmem ./internal/broker

// benchProvider issues a 43-character token (as the demo emulator does)
// valid for ten hours.
type benchProvider struct{}

func (benchProvider) Token(_ context.Context, req providers.Request) (*providers.Token, error) {
	return &providers.Token{AccessToken: secret.New("0123456789abcdefghijABCDEFGHIJ-_0123456789a"),
		TokenType: "Bearer", Expiry: time.Now().Add(10 * time.Hour), Scopes: req.Scopes}, nil
}

func newBenchBroker(b *testing.B) *Broker {
	b.Helper()
	c, err := memory.New(memory.Options{})
	if err != nil {
		b.Fatal(err)
	}
	br, err := New(Options{Cache: c, Connections: []Connection{
		{Name: "demo-cc", Type: "client_credentials", Provider: benchProvider{}, Skew: time.Minute},
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close(); c.Close() })
	return br
}

func benchHit(b *testing.B, scopes []string) {
	br := newBenchBroker(b)
	ctx := context.Background()
	req := Request{Connection: "demo-cc", Scopes: scopes}
	if _, err := br.GetToken(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	stop := cpuMeter(b)
	for b.Loop() {
		if _, err := br.GetToken(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	stop()
}

func BenchmarkGetTokenL1Hit(b *testing.B) {
	b.Run("scopes=1", func(b *testing.B) { benchHit(b, []string{"read"}) })
	b.Run("scopes=3", func(b *testing.B) { benchHit(b, []string{"write", "read", "admin"}) })
}

// BenchmarkGetTokenL1HitParallel: every goroutine asks for the one key, the
// contention a hot token sees.
func BenchmarkGetTokenL1HitParallel(b *testing.B) {
	br := newBenchBroker(b)
	ctx := context.Background()
	req := Request{Connection: "demo-cc", Scopes: []string{"read"}}
	if _, err := br.GetToken(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	stop := cpuMeter(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := br.GetToken(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	stop()
}

func BenchmarkL1Get(b *testing.B) {
	br := newBenchBroker(b)
	if _, err := br.GetToken(context.Background(), Request{Connection: "demo-cc", Scopes: []string{"read"}}); err != nil {
		b.Fatal(err)
	}
	key := tokenKey("demo-cc", "", []string{"read"})
	b.ReportAllocs()
	stop := cpuMeter(b)
	for b.Loop() {
		if _, ok := br.l1.get(key, time.Now(), 0, DefaultL1MaxAge); !ok {
			b.Fatal("miss")
		}
	}
	stop()
}

func BenchmarkKey(b *testing.B) {
	for _, scopes := range [][]string{{"read"}, {"write", "read", "admin"}} {
		b.Run("scopes="+strconv.Itoa(len(scopes)), func(b *testing.B) {
			b.ReportAllocs()
			stop := cpuMeter(b)
			for b.Loop() {
				s, err := normalizeScopes(scopes)
				if err != nil {
					b.Fatal(err)
				}
				_ = tokenKey("demo-cc", "", s)
			}
			stop()
		})
	}
}

// BenchmarkDecodeToken is the shared-hit path's decoding of a stored token.
func BenchmarkDecodeToken(b *testing.B) {
	t := &Token{AccessToken: secret.New("0123456789abcdefghijABCDEFGHIJ-_0123456789a"), TokenType: "Bearer",
		Expiry: time.Now().Add(time.Hour), Scopes: []string{"read"}}
	raw := encodeToken(t, t.Expiry.Add(-time.Minute), "")
	b.ReportAllocs()
	stop := cpuMeter(b)
	for b.Loop() {
		if _, _, err := decodeToken(raw); err != nil {
			b.Fatal(err)
		}
	}
	stop()
}

// cpuMeter reports the process's CPU time per operation as cpu-ns/op next
// to ns/op: on a shared machine wall time per op swings with other work,
// CPU time much less. Start it right before the loop; call the function it
// returns right after.
func cpuMeter(b *testing.B) func() {
	start := processCPU()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
