// Package replicas_test runs several broker processes against one Redis
// and the upstream emulators, and breaks things: a slow upstream under a
// thundering herd, refresh-token rotation, a lease holder killed mid-fetch,
// Redis killed, restarted and failed over, upstream errors, and SIGTERM
// under load (issue 5). Counts come from the emulators; loads are bounded by
// count and time; nothing asserts wall-clock latency.
package replicas_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/testutil/cluster"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

// cacheHealthService is the grpc.health.v1 service through which a broker
// reports its shared cache (cmd/broker).
const cacheHealthService = "tokenbroker.v1.SharedCache"

// TestColdKeyOneUpstreamRequest: 3 replicas × 100 concurrent callers on a
// cold key, with the upstream slowed so that they all pile up → exactly one
// upstream token request, and everyone gets that token.
func TestColdKeyOneUpstreamRequest(t *testing.T) {
	emu, conn := newCC(t, "cc", nil)
	emu.SetFailure(ccemu.Slow(300 * time.Millisecond))
	c := cluster.Start(t, cluster.Options{Replicas: 3, Connections: []cluster.Connection{conn}})
	for i := range c.N() { // connect first, so the calls start together
		if _, err := c.Replica(i).Health().Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("replica %d health: %v", i, err)
		}
	}

	const perReplica = 100
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	tokens := map[string]int{}
	var errs []error
	for i := range c.N() {
		client := c.Client(i)
		for range perReplica {
			wg.Go(func() {
				<-start
				resp, err := getToken(client, "cc", false, "read")
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, fmt.Errorf("replica %d: %w", i, err))
					return
				}
				tokens[resp.GetAccessToken()]++
			})
		}
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d of %d calls failed; first: %v", len(errs), c.N()*perReplica, errs[0])
	}
	if len(tokens) != 1 {
		t.Errorf("callers got %d different tokens; want 1", len(tokens))
	}
	if n := emu.Requests(); n != 1 {
		t.Errorf("upstream token requests = %d for %d concurrent callers on 3 replicas; want exactly 1", n, c.N()*perReplica)
	}
}

// TestRefreshTokenRotation drives 200+ refresh cycles of a rotating WX
// grant through 3 replicas, one at a time and three at once → no refresh
// token is ever presented twice or rejected, the password grant runs only
// once, and the stored refresh token is the newest after every round.
func TestRefreshTokenRotation(t *testing.T) {
	w, conn := newWX(t, "wx")
	c := cluster.Start(t, cluster.Options{Replicas: 3, Connections: []cluster.Connection{conn}, DisableRefreshAhead: true})
	mustToken(t, c.Client(0), "wx", false)
	checkStoredRT(t, c, w, "wx", "after the password grant")

	const cycles = 200
	deadline := time.Now().Add(60 * time.Second)
	round := 0
	for ; w.counts().RefreshIssued < cycles; round++ {
		if round >= 2*cycles || time.Now().After(deadline) {
			t.Fatalf("only %d refresh cycles in %d rounds before the bound", w.counts().RefreshIssued, round)
		}
		if round%4 == 3 {
			// All three replicas force a refresh at once.
			var wg sync.WaitGroup
			errs := make([]error, c.N())
			for i := range c.N() {
				wg.Go(func() { _, errs[i] = getToken(c.Client(i), "wx", true) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("round %d (concurrent): %v", round, err)
			}
		} else {
			mustToken(t, c.Client(round%c.N()), "wx", true)
		}
		checkStoredRT(t, c, w, "wx", fmt.Sprintf("after round %d", round))
	}
	// Every replica serves a token that works upstream.
	for i := range c.N() {
		if tok := mustToken(t, c.Client(i), "wx", false); !w.emu.Valid(tok) {
			t.Errorf("replica %d serves a token the emulator does not know", i)
		}
	}
	got := w.counts()
	t.Logf("%d rounds: %+v", round, got)
	if got.InvalidGrant != 0 || got.Reused != 0 {
		t.Errorf("invalid_grant answers = %d, reused refresh tokens = %d; want 0 and 0", got.InvalidGrant, got.Reused)
	}
	if got.Password != 1 {
		t.Errorf("password grants = %d; want 1 (a lost refresh token makes the broker sign in again)", got.Password)
	}
	if got.Refresh != got.RefreshIssued {
		t.Errorf("refresh requests = %d but refreshes issued = %d; every refresh should succeed", got.Refresh, got.RefreshIssued)
	}
}

// TestLeaseHolderKilled: the replica holding a connection's lease is killed
// (SIGKILL) while its refresh is on the way to the upstream → a replica
// already waiting takes over once the lease lapses (lease_ttl 1s), and the
// grant still works: no invalid_grant, no second password grant.
func TestLeaseHolderKilled(t *testing.T) {
	w, conn := newWX(t, "wx")
	c := cluster.Start(t, cluster.Options{
		Replicas: 3, Connections: []cluster.Connection{conn},
		LeaseTTL: time.Second, DisableRefreshAhead: true,
	})
	mustToken(t, c.Client(0), "wx", false)
	before := w.counts()
	ctx := context.Background()
	rc := c.RedisClient()
	lockKey := c.KeyPrefix() + "lock:{wx}"

	arrived := w.holdNextRefresh(time.Minute)
	holderDone := make(chan error, 1)
	go func() { _, err := getToken(c.Client(0), "wx", true); holderDone <- err }()
	select {
	case <-arrived:
	case <-time.After(callTimeout):
		t.Fatal("replica 0's refresh never reached the upstream")
	}
	held, err := rc.Get(ctx, lockKey).Result()
	if err != nil {
		t.Fatalf("GET %s while replica 0 refreshes: %v; want its lease", lockKey, err)
	}
	// Replica 1 asks too and has to wait for the lease. The wire notes who
	// holds it when the next refresh reaches the upstream.
	type lockSeen struct {
		holder string
		err    error
	}
	seen := make(chan lockSeen, 8)
	w.setOnRefresh(func() {
		v, err := rc.Get(ctx, lockKey).Result()
		select {
		case seen <- lockSeen{v, err}:
		default:
		}
	})
	waiterDone := make(chan error, 1)
	go func() { _, err := getToken(c.Client(1), "wx", true); waiterDone <- err }()
	time.Sleep(200 * time.Millisecond) // let replica 1 find the lease taken; the test holds either way
	c.Kill(0)
	if err := <-holderDone; err == nil {
		t.Error("the killed replica's call succeeded")
	}
	select {
	case err := <-waiterDone:
		if err != nil {
			t.Fatalf("replica 1 after the holder died: %v", err)
		}
	case <-time.After(callTimeout + 5*time.Second):
		t.Fatal("replica 1 never completed")
	}
	w.setOnRefresh(nil)
	select {
	case ls := <-seen:
		if ls.err != nil || ls.holder == "" || ls.holder == held {
			t.Errorf("when the next refresh reached the upstream the lease was %q (err %v); want a new holder's, not the dead one's",
				redact(ls.holder), ls.err)
		}
	default:
		t.Error("no refresh reached the upstream after the holder died")
	}
	checkStoredRT(t, c, w, "wx", "after the takeover")
	// The grant still works, from any replica.
	mustToken(t, c.Client(2), "wx", true)
	checkStoredRT(t, c, w, "wx", "after a later refresh")
	got := w.counts()
	t.Logf("counts: %+v", got)
	if got.Dropped != 1 {
		t.Errorf("held requests dropped by the dead replica = %d; want 1", got.Dropped)
	}
	if got.InvalidGrant != 0 || got.Reused != 0 || got.Password != before.Password {
		t.Errorf("invalid_grant = %d, reused = %d, password grants %d → %d; want 0, 0 and no new password grant",
			got.InvalidGrant, got.Reused, before.Password, got.Password)
	}
}

func redact(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf("<%d bytes>", len(s))
}

// TestRedisKilledDuringLoad: Redis dies under load → warm keys keep being
// served (0 failures), cold keys are fetched upstream by each replica,
// /readyz and health report degraded; Redis comes back → the replicas
// reconnect by themselves.
func TestRedisKilledDuringLoad(t *testing.T) {
	emu, conn := newCC(t, "cc", nil)
	// L1 entries outlive the test, however slow the machine: the warm keys
	// must come from memory, not from a later upstream fetch.
	c := cluster.Start(t, cluster.Options{Replicas: 3, Connections: []cluster.Connection{conn}, L1MaxAge: 10 * time.Minute})
	warm := [][]string{{"read"}, {"write"}, {"read", "write"}}
	for i := range c.N() {
		for _, s := range warm {
			mustToken(t, c.Client(i), "cc", false, s...)
		}
	}
	if n := emu.Requests(); n != len(warm) {
		t.Fatalf("upstream requests while warming = %d; want %d (one per key)", n, len(warm))
	}
	var workers []loadWorker
	for i := range c.N() {
		for _, s := range warm {
			workers = append(workers, loadWorker{client: c.Client(i), conn: "cc", scopes: s, pause: 2 * time.Millisecond})
		}
	}
	l := startLoad(workers)
	time.Sleep(300 * time.Millisecond)
	c.Redis().Kill()
	killedAt := emu.Requests()

	// Cold keys: every replica fetches them itself.
	for i := range c.N() {
		mustToken(t, c.Client(i), "cc", false, "admin")
	}
	cold := emu.Requests() - killedAt
	t.Logf("cold key with Redis down: %d upstream requests from %d replicas", cold, c.N())
	if cold < 1 || cold > c.N() {
		t.Errorf("upstream requests for a cold key on %d replicas without Redis = %d; want 1 to %d", c.N(), cold, c.N())
	}
	ctx := context.Background()
	for i := range c.N() {
		r := c.Replica(i)
		eventually(t, 15*time.Second, fmt.Sprintf("replica %d reports degraded", i), func() error {
			code, body, err := r.Ready(ctx)
			if err != nil {
				return err
			}
			if !strings.Contains(body, "degraded") {
				return fmt.Errorf("/readyz = %d %q", code, strings.TrimSpace(body))
			}
			if code != http.StatusOK {
				return fmt.Errorf("/readyz = %d %q; want 200: the replica still serves", code, strings.TrimSpace(body))
			}
			return checkHealth(r, cacheHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
		})
		if err := checkHealth(r, "", healthpb.HealthCheckResponse_SERVING); err != nil {
			t.Errorf("replica %d overall health with Redis down: %v", i, err)
		}
	}
	calls, failures, detail := l.finish()
	t.Logf("load with Redis killed: %d calls, %d failures", calls, failures)
	if failures != 0 {
		t.Errorf("%d of %d GetToken calls on warm keys failed with Redis down; want 0 (%s)", failures, calls, detail)
	}
	if got := emu.Requests() - killedAt; got != cold {
		t.Errorf("upstream requests for warm keys with Redis down = %d; want 0", got-cold)
	}

	c.Redis().Restart(t)
	for i := range c.N() {
		r := c.Replica(i)
		eventually(t, 15*time.Second, fmt.Sprintf("replica %d reconnects", i), func() error {
			code, body, err := r.Ready(ctx)
			if err != nil {
				return err
			}
			if code != http.StatusOK || strings.Contains(body, "degraded") {
				return fmt.Errorf("/readyz = %d %q", code, strings.TrimSpace(body))
			}
			return checkHealth(r, cacheHealthService, healthpb.HealthCheckResponse_SERVING)
		})
	}
	// A new key lands in the restarted Redis.
	mustToken(t, c.Client(1), "cc", false, "admin", "read")
	if n, err := c.RedisClient().Exists(ctx, c.TokenKey("cc", "admin", "read")).Result(); err != nil || n != 1 {
		t.Errorf("token key in the restarted Redis: EXISTS = %d, %v; want 1", n, err)
	}
}

func checkHealth(r *cluster.Replica, service string, want healthpb.HealthCheckResponse_ServingStatus) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := r.Health().Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return fmt.Errorf("health %q: %w", service, err)
	}
	if resp.GetStatus() != want {
		return fmt.Errorf("health %q = %v; want %v", service, resp.GetStatus(), want)
	}
	return nil
}

// TestRedisRestartKeepsGrants: Redis with an fsynced append-only file is
// killed and restarted → the stored grant is intact and the next refresh
// uses it (no new password grant).
func TestRedisRestartKeepsGrants(t *testing.T) {
	w, conn := newWX(t, "wx")
	_, ccConn := newCC(t, "cc", nil)
	rs := redistest.Start(t, redistest.WithPersistence())
	c := cluster.Start(t, cluster.Options{Replicas: 3, Redis: rs, Connections: []cluster.Connection{conn, ccConn}})
	mustToken(t, c.Client(0), "wx", false)
	mustToken(t, c.Client(1), "cc", false)

	rs.Kill()
	rs.Restart(t)
	checkStoredRT(t, c, w, "wx", "after the Redis restart")
	ctx := context.Background()
	if n, err := c.RedisClient().Exists(ctx, c.TokenKey("cc")).Result(); err != nil || n != 1 {
		t.Errorf("cc token after the Redis restart: EXISTS = %d, %v; want 1", n, err)
	}
	for i := range c.N() {
		mustToken(t, c.Client(i), "wx", true)
		checkStoredRT(t, c, w, "wx", fmt.Sprintf("after replica %d refreshed", i))
	}
	got := w.counts()
	if got.Password != 1 || got.InvalidGrant != 0 || got.Refresh != c.N() {
		t.Errorf("after the restart: %+v; want 1 password grant, %d refreshes, no invalid_grant", got, c.N())
	}
}

// TestSentinelFailover: the brokers reach Redis through three Sentinels;
// the primary is killed → the replica is promoted, the brokers follow, and
// the grants written before the failure are still there.
func TestSentinelFailover(t *testing.T) {
	w, conn := newWX(t, "wx")
	emu, ccConn := newCC(t, "cc", nil)
	s := cluster.StartSentinel(t)
	c := cluster.Start(t, cluster.Options{Replicas: 3, Sentinel: s, Connections: []cluster.Connection{conn, ccConn}})
	mustToken(t, c.Client(0), "wx", false)
	mustToken(t, c.Client(1), "cc", false)

	// The replica has the grant before the primary dies.
	ctx := context.Background()
	rep := s.Replica.Client(t)
	eventually(t, 10*time.Second, "grant replicated", func() error {
		return rep.Get(ctx, c.GrantKey("wx")).Err()
	})
	old := s.Primary.Addr()
	s.Primary.Kill()
	promoted := s.WaitFailover(old, 60*time.Second)
	if promoted != s.Replica.Addr() {
		t.Fatalf("new primary %s; want the replica %s", promoted, s.Replica.Addr())
	}
	for i := range c.N() {
		r := c.Replica(i)
		eventually(t, 30*time.Second, fmt.Sprintf("replica %d reaches the new primary", i), func() error {
			code, body, err := r.Ready(ctx)
			if err != nil {
				return err
			}
			if code != http.StatusOK || strings.Contains(body, "degraded") {
				return fmt.Errorf("/readyz = %d %q", code, strings.TrimSpace(body))
			}
			return nil
		})
	}
	checkStoredRT(t, c, w, "wx", "after the failover")
	for i := range c.N() {
		mustToken(t, c.Client(i), "wx", true)
		mustToken(t, c.Client(i), "cc", false)
		mustToken(t, c.Client(i), "cc", false, "write")
	}
	checkStoredRT(t, c, w, "wx", "after refreshes on the new primary")
	if n, err := c.RedisClient().Exists(ctx, c.TokenKey("cc", "write")).Result(); err != nil || n != 1 {
		t.Errorf("token written after the failover: EXISTS = %d, %v; want 1", n, err)
	}
	got := w.counts()
	if got.Password != 1 || got.InvalidGrant != 0 {
		t.Errorf("after the failover: %+v; want the grant kept (1 password grant, no invalid_grant)", got)
	}
	if n := emu.Requests(); n != 2 {
		t.Errorf("cc upstream requests = %d; want 2 (one per key: the cached token survived)", n)
	}
}

// TestUpstreamErrors: 503 with Retry-After, then 200 → the caller gets a
// token; 400 invalid_grant → FAILED_PRECONDITION after exactly one upstream
// request. Calls go to one replica without client retries, so a retry can
// only come from the broker.
func TestUpstreamErrors(t *testing.T) {
	var flaky, rejecting *scripted
	_, flakyConn := newCC(t, "flaky", func(h http.Handler) http.Handler {
		flaky = &scripted{next: h, fail: func(n int64, w http.ResponseWriter) bool {
			if n > 1 {
				return false
			}
			w.Header().Set("Retry-After", "1")
			writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable")
			return true
		}}
		return flaky
	})
	_, rejConn := newCC(t, "rejecting", func(h http.Handler) http.Handler {
		rejecting = &scripted{next: h, fail: func(_ int64, w http.ResponseWriter) bool {
			writeOAuthError(w, http.StatusBadRequest, "invalid_grant")
			return true
		}}
		return rejecting
	})
	c := cluster.Start(t, cluster.Options{Replicas: 3, Connections: []cluster.Connection{flakyConn, rejConn}})

	t.Run("503 Retry-After then 200", func(t *testing.T) {
		mustToken(t, c.Client(0), "flaky", false)
		if n := flaky.n.Load(); n != 2 {
			t.Errorf("upstream requests = %d; want 2 (the 503, then the retry)", n)
		}
	})
	t.Run("400 invalid_grant", func(t *testing.T) {
		_, err := getToken(c.Client(1), "rejecting", false)
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("GetToken = %v; want FAILED_PRECONDITION", err)
		}
		var oauth string
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				oauth = info.GetMetadata()["oauth_error"]
			}
		}
		if oauth != "invalid_grant" {
			t.Errorf("ErrorInfo oauth_error = %q; want invalid_grant", oauth)
		}
		if n := rejecting.n.Load(); n != 1 {
			t.Errorf("upstream requests = %d; want exactly 1 (terminal errors are not retried)", n)
		}
	})
}

// TestSIGTERMUnderLoad: a replica gets SIGTERM (with -shutdown-delay 1s)
// while callers hammer the cluster through the round-robin client → no call
// fails. Calls in flight on it when the signal comes finish, even those
// that outlast the shutdown delay (checked with calls made straight to it,
// without client retries); new ones go elsewhere. It comes back and takes
// calls again.
func TestSIGTERMUnderLoad(t *testing.T) {
	_, fast := newCC(t, "fast", nil)
	slowEmu, slow := newCC(t, "slow", nil)
	slowEmu.SetFailure(ccemu.Slow(200 * time.Millisecond))
	drainEmu, drain := newCC(t, "drain", nil)
	drainEmu.SetFailure(ccemu.Slow(1500 * time.Millisecond)) // longer than the shutdown delay
	c := cluster.Start(t, cluster.Options{
		Replicas: 3, Connections: []cluster.Connection{fast, slow, drain},
		BrokerArgs: []string{"-shutdown-delay", "1s", "-drain-timeout", "20s"},
	})
	rr := c.RoundRobin()
	mustToken(t, rr, "fast", false)
	var workers []loadWorker
	for range 6 {
		workers = append(workers, loadWorker{client: rr, conn: "fast", pause: time.Millisecond})
	}
	for _, s := range [][]string{{"read"}, {"write"}, {"admin"}} {
		// Slow upstream calls, so some are in flight all the time.
		workers = append(workers, loadWorker{client: rr, conn: "slow", scopes: s, force: true})
	}
	l := startLoad(workers)
	time.Sleep(500 * time.Millisecond)

	// Calls straight to replica 1 that are in the upstream when SIGTERM
	// comes, and stay there past the shutdown delay.
	inflight := [][]string{{"read"}, {"write"}, {"admin"}}
	direct := make(chan error, len(inflight))
	for _, s := range inflight {
		go func() { _, err := getToken(c.Client(1), "drain", false, s...); direct <- err }()
	}
	eventually(t, callTimeout, "direct calls reach the upstream", func() error {
		if n := drainEmu.Requests(); n < len(inflight) {
			return fmt.Errorf("%d of %d arrived", n, len(inflight))
		}
		return nil
	})
	c.Signal(1, syscall.SIGTERM)
	if err := c.Wait(1); err != nil {
		t.Errorf("replica 1 exit after SIGTERM: %v; want status 0", err)
	}
	for range inflight {
		if err := <-direct; err != nil {
			t.Errorf("a call in flight on replica 1 at SIGTERM failed: %v; want it drained", err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	c.Restart(1)
	time.Sleep(500 * time.Millisecond)
	calls, failures, detail := l.finish()
	t.Logf("load across SIGTERM and restart: %d calls, %d failures", calls, failures)
	if failures != 0 {
		t.Errorf("%d of %d calls failed across a SIGTERM; want 0 (%s)", failures, calls, detail)
	}
	// During its shutdown delay replica 1 still served the calls routed to
	// it: its log has fetches between "shutting down" and "stopped".
	logs := c.Replica(1).Logs()
	i := strings.Index(logs, "shutting down")
	j := strings.Index(logs, `"msg":"stopped"`)
	if i < 0 || j < i {
		t.Fatalf("replica 1 log lacks the shutdown sequence")
	}
	if !strings.Contains(logs[i:j], `"connection":"slow"`) {
		t.Errorf("replica 1 served no load while shutting down")
	}
	if _, err := c.Client(1).GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Connection: "fast"}); err != nil {
		t.Errorf("replica 1 after restart: %v", err)
	}
}
