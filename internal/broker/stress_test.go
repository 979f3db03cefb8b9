package broker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// slowAfterCommit answers token requests up to max late: the emulator has
// already done the work (a rotation is committed) when the answer is held
// back, as a slow upstream or network does.
func slowAfterCommit(h http.Handler, max time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != waxemu.TokenPath {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		select {
		case <-time.After(rand.N(max + 1)):
		case <-r.Context().Done():
			return // the client left: the answer is lost
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

// TestStressSharedWork: three replicas on one redis-server, a WAX upstream
// that rotates refresh tokens and answers late, and callers with random
// deadlines and cancellations. Whatever the callers do, no refresh token is
// presented twice, no grant is lost and no breaker opens, and every caller
// that waited longer than the upstream can take got a token.
//
// `make test` runs it with latencies up to 100 ms and deadlines up to 1 s;
// TOKENBROKER_STRESS=full (make test-stress) with latencies up to 2 s and
// deadlines up to 5 s.
func TestStressSharedWork(t *testing.T) {
	const (
		replicas    = 3
		connections = 10
		callers     = 200
		cycles      = 300
	)
	maxLatency, maxDeadline, budget := 100*time.Millisecond, time.Second, 90*time.Second
	if os.Getenv("TOKENBROKER_STRESS") == "full" {
		maxLatency, maxDeadline, budget = 2*time.Second, 5*time.Second, 10*time.Minute
	}
	// A caller is owed a token when its deadline covers a flight ahead of
	// it and its own, plus scheduling slack.
	owed := 2*maxLatency + 300*time.Millisecond
	if maxLatency > time.Second {
		owed = 2*maxLatency + 500*time.Millisecond
	}

	srv := redistest.Start(t)
	emu := waxemu.New(waxemu.Options{ClientID: waxClientID, ClientSecret: waxClientSecret,
		RedirectURL: "https://broker.example/oauth2/callback"})
	emu.SetRotate(true)
	hs := httptest.NewServer(slowAfterCommit(emu, maxLatency))
	t.Cleanup(hs.Close)

	var opens atomic.Int32
	names := make([]string, connections)
	for i := range names {
		names[i] = fmt.Sprintf("wax-%d", i)
	}
	bs := make([]*broker.Broker, replicas)
	for r := range bs {
		rc, err := rediscache.New(rediscache.Options{Client: rediscache.NewClient(rediscache.ClientConfig{Addrs: []string{srv.Addr()}}),
			Prefix: "stress:"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rc.Close() })
		var conns []broker.Connection
		for _, name := range names {
			cfg := &authcode.WAXConfig{Config: authcode.Config{AuthorizeURL: hs.URL + waxemu.AuthorizePath,
				TokenURL: hs.URL + waxemu.TokenPath, ClientID: waxClientID, ClientSecret: secret.Ref{Env: "WAX_SECRET"}}}
			p, err := cfg.Open(providers.Env{Name: name, Now: time.Now,
				Secrets: secret.Loader{LookupEnv: func(string) (string, bool) { return waxClientSecret, true }}})
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, broker.Connection{Name: name, Type: "wax", Provider: p, Skew: time.Minute})
		}
		pol := &upstream.Policy{Breaker: upstream.BreakerConfig{OnStateChange: func(_, to string) {
			if to == upstream.StateOpen {
				opens.Add(1)
			}
		}}}
		b, err := broker.New(broker.Options{Cache: rc, Connections: conns, Upstream: pol})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		bs[r] = b
	}
	for _, name := range names {
		authorizeAs(t, bs[0], name, "", "stress")
	}

	var (
		calls, tokens, deadlines, cancels, force atomic.Int64
		mu                                       sync.Mutex
		owedMissed                               []string
		otherErrs                                = map[string]int{}
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(rand.N(50 * time.Millisecond)):
				}
				deadline := time.Millisecond + rand.N(maxDeadline)
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				cancelled := rand.N(5) == 0
				if cancelled {
					time.AfterFunc(rand.N(deadline), cancel)
				}
				req := broker.Request{Connection: names[rand.N(len(names))], ForceRefresh: rand.N(10) == 0}
				if req.ForceRefresh {
					force.Add(1)
				}
				_, err := bs[rand.N(len(bs))].GetToken(ctx, req)
				cancel()
				calls.Add(1)
				switch {
				case err == nil:
					tokens.Add(1)
				case errors.Is(err, context.Canceled):
					cancels.Add(1)
				case errors.Is(err, context.DeadlineExceeded) && !cancelled && deadline > owed:
					mu.Lock()
					owedMissed = append(owedMissed, fmt.Sprintf("%s deadline %v", req.Connection, deadline))
					mu.Unlock()
				case errors.Is(err, context.DeadlineExceeded):
					deadlines.Add(1)
				default:
					mu.Lock()
					otherErrs[err.Error()]++
					mu.Unlock()
				}
			}
		})
	}
	start := time.Now()
	for emu.Counts().Refreshes < cycles && time.Since(start) < budget {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	took := time.Since(start)

	counts := emu.Counts()
	lost := 0
	for _, name := range names {
		for r, b := range bs {
			if _, err := b.GetToken(context.Background(), broker.Request{Connection: name, ForceRefresh: true}); err != nil {
				lost++
				t.Errorf("replica %d, %s after the storm: %v", r, name, err)
			}
		}
	}
	t.Logf("stress: %d replicas, %d connections, %d callers (deadlines 1ms–%v, 1 in 5 cancelled, 1 in 10 force_refresh), upstream latency 0–%v, %v",
		replicas, connections, callers, maxDeadline, maxLatency, took.Round(time.Second))
	t.Logf("stress: refresh cycles %d, calls %d, tokens %d, left at own deadline %d, cancelled %d, force_refresh %d",
		counts.Refreshes, calls.Load(), tokens.Load(), deadlines.Load(), cancels.Load(), force.Load())
	t.Logf("stress: invalid_grant %d, grants lost %d, breaker openings %d, owed a token but missed %d, other errors %d",
		counts.InvalidGrant, lost, opens.Load(), len(owedMissed), len(otherErrs))
	if counts.Refreshes < cycles {
		t.Errorf("only %d refresh cycles in %v; want %d", counts.Refreshes, budget, cycles)
	}
	if counts.InvalidGrant != 0 {
		t.Errorf("the upstream saw %d spent refresh tokens; want 0", counts.InvalidGrant)
	}
	if n := opens.Load(); n != 0 {
		t.Errorf("breakers opened %d times; want 0", n)
	}
	if len(owedMissed) > 0 {
		t.Errorf("%d callers whose deadline (> %v) covered the upstream got no token, e.g. %s", len(owedMissed), owed, owedMissed[0])
	}
	for msg, n := range otherErrs {
		t.Errorf("%d calls failed with: %s", n, msg)
	}
}
