package broker

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

// TestAccountsAtScale: N accounts on one connection in Redis mode. It
// prints the broker's heap per idle account, the ListAccounts page latency
// at N and at N/100, and the Redis commands one keep-alive tick makes for a
// fixed number of due accounts; it fails if the heap per idle account
// passes 1 KiB or the keep-alive's work grows with N rather than with what
// is due. `make test` runs N = 2 000; `make bench-accounts`
// (TOKENBROKER_ACCOUNTS=100000) the figures in BENCHMARKS.md.
func TestAccountsAtScale(t *testing.T) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("TOKENBROKER_ACCOUNTS")); err == nil && v > 0 {
		n = v
	}
	const due = 50
	srv := redistest.Start(t)
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = raw.Close() })
	ctx := context.Background()

	populate := func(conn string, count, dueCount int) {
		t.Helper()
		now := time.Now()
		for start := 0; start < count; start += 1000 {
			pipe := raw.Pipeline()
			for i := start; i < min(start+1000, count); i++ {
				acct := fmt.Sprintf("user-%07d", i)
				g := &providers.Grant{State: providers.GrantReady, RefreshToken: secret.New("rt-" + acct),
					RefreshExpiry: now.Add(time.Hour), Scopes: []string{"identity_basic"}, UpdatedAt: now}
				v, _ := encodeGrant(g, grantMeta{tokenExpiry: now.Add(30 * time.Minute)})
				pipe.Set(ctx, "scale:"+grantKey(conn, acct), v, 0)
				pipe.ZAdd(ctx, "scale:"+accountsKey(conn), goredis.Z{Member: acct})
				score := now.Add(30 * time.Minute).UnixMilli()
				if i < dueCount {
					score = now.Add(-time.Second).UnixMilli()
				}
				pipe.ZAdd(ctx, "scale:"+keepAliveKey(conn), goredis.Z{Member: acct, Score: float64(score)})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	small := max(n/100, 200)
	populate("big", n, due)
	populate("small", small, due)

	client := rediscache.NewClient(rediscache.ClientConfig{Addrs: []string{srv.Addr()}})
	rt := &roundTrips{}
	client.AddHook(rt)
	rc, err := rediscache.New(rediscache.Options{Client: client, Prefix: "scale:"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rc.Close() })
	up := &fakeUpstream{now: time.Now, life: time.Hour, reject: map[string]error{}}
	b, err := New(Options{Cache: rc, DisableRefreshAhead: true, DisableKeepAlive: true, Connections: []Connection{
		{Name: "big", Type: "fake", Provider: scaleRefresher{up}, Skew: time.Minute},
		{Name: "small", Type: "fake", Provider: scaleRefresher{up}, Skew: time.Minute},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	// Every account listed once, page by page.
	pages, token := 0, ""
	for {
		infos, next, err := b.ListAccounts(ctx, "big", MaxAccountPageSize, token, 0)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if next == "" {
			_ = infos
			break
		}
		token = next
	}
	after := heap()
	perAccount := (float64(after) - float64(before)) / float64(n)
	runtime.KeepAlive(b)

	pageLatency := func(conn string) time.Duration {
		var ds []time.Duration
		token := ""
		for range 30 {
			start := time.Now()
			_, next, err := b.ListAccounts(ctx, conn, 100, token, 0)
			if err != nil {
				t.Fatal(err)
			}
			ds = append(ds, time.Since(start))
			token = next
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	pageLatency("small") // warm the connections and the scripts
	pSmall, pBig := pageLatency("small"), pageLatency("big")

	// keepAliveBatch at a time: drain the due ones.
	var kaSmall, kaBig int64
	for range (due + keepAliveBatch - 1) / keepAliveBatch {
		kaSmall += keepAliveCostBatch(b, rt, "small")
		kaBig += keepAliveCostBatch(b, rt, "big")
	}
	if refreshed, _, _ := up.counts(); refreshed != 2*due {
		t.Errorf("keep-alive refreshed %d grants; want %d (%d due on each connection)", refreshed, 2*due, due)
	}
	t.Logf("accounts: %d on one connection (Redis); broker heap after listing them all (%d pages): %+.0f B per idle account",
		n, pages, perAccount)
	t.Logf("accounts: ListAccounts page of 100, p50 of 30 pages: %v at %d accounts, %v at %d accounts (%.2fx)",
		pSmall.Round(time.Microsecond), small, pBig.Round(time.Microsecond), n, float64(pBig)/float64(pSmall))
	t.Logf("accounts: keep-alive of %d due grants: %d Redis commands at %d accounts, %d at %d accounts",
		due, kaSmall, small, kaBig, n)
	if perAccount > 1024 {
		t.Errorf("broker heap per idle account = %.0f B; want at most 1 KiB", perAccount)
	}
	if kaBig > 2*kaSmall {
		t.Errorf("keep-alive made %d Redis commands at %d accounts against %d at %d: its work grows with the accounts, not with what is due",
			kaBig, n, kaSmall, small)
	}
}

func keepAliveCostBatch(b *Broker, rt *roundTrips, conn string) int64 {
	rt.n.Store(0)
	b.keepAliveConn(b.conns[conn])
	return rt.n.Load()
}

// scaleRefresher refreshes any grant (no rotation), counting calls.
type scaleRefresher struct{ *fakeUpstream }

func (u scaleRefresher) Token(context.Context, providers.Request) (*providers.Token, error) {
	return nil, providers.ErrNeedsAuthorization
}

func (u scaleRefresher) Refresh(_ context.Context, req providers.Request, _ *providers.Grant) (*providers.Token, error) {
	n, _ := u.enter()
	return u.token(n, req.Scopes), nil
}
