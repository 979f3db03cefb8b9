package replicas_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/testutil/cluster"
)

// MeasureEnv turns on TestMeasure, which prints the numbers in the
// "Replicas" section of BENCHMARKS.md:
//
//	TOKENBROKER_MEASURE=1 go test -count=1 -v -run TestMeasure ./test/replicas/
const MeasureEnv = "TOKENBROKER_MEASURE"

func TestMeasure(t *testing.T) {
	if os.Getenv(MeasureEnv) == "" {
		t.Skipf("set %s=1 to measure (about 3 minutes)", MeasureEnv)
	}
	t.Run("upstream requests per token lifetime", measureUpstreamPerLifetime)
	t.Run("redis round trips per hit", measureRedisPerHit)
}

// measureUpstreamPerLifetime runs steady load on 3 replicas over several
// lifetimes of short-lived tokens and counts the upstream's token requests.
func measureUpstreamPerLifetime(t *testing.T) {
	const (
		lifetime = 10 * time.Second
		skew     = 2 * time.Second
		window   = 60 * time.Second // 6 lifetimes
		upstream = 150 * time.Millisecond
		workers  = 6
		pause    = 10 * time.Millisecond
	)
	for _, refreshAhead := range []bool{true, false} {
		t.Run(fmt.Sprintf("refresh_ahead=%t", refreshAhead), func(t *testing.T) {
			emu, conn := newCC(t, "cc", nil)
			emu.SetLifetime(lifetime)
			emu.SetFailure(ccemu.Slow(upstream))
			conn.Skew = skew
			c := cluster.Start(t, cluster.Options{Replicas: 3, Connections: []cluster.Connection{conn}, DisableRefreshAhead: !refreshAhead})
			rr := c.RoundRobin()
			mustToken(t, rr, "cc", false)
			before := emu.Requests()
			var calls, waited, failed atomic.Int64
			stop := time.Now().Add(window)
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for time.Now().Before(stop) && calls.Load() < maxLoadCalls {
						start := time.Now()
						_, err := getToken(rr, "cc", false)
						calls.Add(1)
						if err != nil {
							failed.Add(1)
						}
						if time.Since(start) >= upstream {
							waited.Add(1) // this call waited for the upstream
						}
						time.Sleep(pause)
					}
				})
			}
			wg.Wait()
			req := emu.Requests() - before
			lifetimes := float64(window) / float64(lifetime)
			t.Logf("MEASURE replicas=3 lifetime=%v skew=%v refresh_ahead=%t window=%v: %d calls (%d failed), "+
				"%d upstream requests = %.2f per token lifetime; %d calls waited for the upstream",
				lifetime, skew, refreshAhead, window, calls.Load(), failed.Load(), req, float64(req)/lifetimes, waited.Load())
		})
	}
}

// measureRedisPerHit counts Redis commands (INFO commandstats) during a
// burst of GetToken calls on warm keys.
func measureRedisPerHit(t *testing.T) {
	const hits = 30000
	for _, l1 := range []time.Duration{0, time.Millisecond} {
		name := "l1_max_age=default"
		if l1 > 0 {
			name = "l1_max_age=" + l1.String()
		}
		t.Run(name, func(t *testing.T) {
			_, conn := newCC(t, "cc", nil)
			c := cluster.Start(t, cluster.Options{Replicas: 3, Connections: []cluster.Connection{conn}, L1MaxAge: l1})
			scopes := [][]string{{"read"}, {"write"}, {"read", "write"}}
			for i := range c.N() {
				for _, s := range scopes {
					mustToken(t, c.Client(i), "cc", false, s...)
				}
			}
			rc := c.Redis().Client(t)
			ctx := context.Background()
			if err := rc.ConfigResetStat(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			rr := c.RoundRobin()
			var next, failed atomic.Int64
			deadline := time.Now().Add(60 * time.Second)
			start := time.Now()
			var wg sync.WaitGroup
			for range 16 {
				wg.Go(func() {
					for n := next.Add(1); n <= hits && time.Now().Before(deadline); n = next.Add(1) {
						if _, err := getToken(rr, "cc", false, scopes[n%3]...); err != nil {
							failed.Add(1)
						}
					}
				})
			}
			wg.Wait()
			took := time.Since(start)
			done := min(next.Load()-16, hits)
			stats := commandStats(t, rc)
			var total int64
			var parts []string
			for _, k := range sortedKeys(stats) {
				if k == "info" || k == "config|resetstat" {
					continue // ours
				}
				total += stats[k]
				parts = append(parts, fmt.Sprintf("%s=%d", k, stats[k]))
			}
			t.Logf("MEASURE replicas=3 %s: %d hits (%d failed) in %v; Redis commands %d = %.4f per hit [%s]",
				name, done, failed.Load(), took.Round(time.Millisecond), total, float64(total)/float64(done), strings.Join(parts, " "))
		})
	}
}

// commandStats returns the calls per command from INFO commandstats.
func commandStats(t *testing.T, rc *redis.Client) map[string]int64 {
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return out
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
