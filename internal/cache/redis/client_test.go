package redis_test

import (
	"context"
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

// budgetSlack is how far past its budget a bounded operation may end on a
// busy machine under -race.
const budgetSlack = 700 * time.Millisecond

// TestOpTimeoutBoundsHungServer: a server that stops answering (SIGSTOP)
// costs each operation its budget, not the socket timeouts, also when the
// caller has no deadline; the pipeline path too.
func TestOpTimeoutBoundsHungServer(t *testing.T) {
	srv := redistest.Start(t)
	const budget = 200 * time.Millisecond
	client := redis.NewClient(redis.ClientConfig{
		Addrs:     []string{srv.Addr()},
		OpTimeout: budget,
		// Far longer than the budget: the budget must win.
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
	})
	c := mustNew(t, redis.Options{Client: client})
	if err := c.Set(t.Context(), "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	srv.Pause()
	t.Cleanup(srv.Resume)
	for _, op := range ops(c, "v") {
		start := time.Now()
		err := op.call(context.Background())
		elapsed := time.Since(start)
		if !errors.Is(err, cache.ErrUnavailable) {
			t.Errorf("%s against a paused server = %v; want error wrapping %v", op.name, err, cache.ErrUnavailable)
		}
		if elapsed > budget+budgetSlack {
			t.Errorf("%s against a paused server took %v; want about the budget %v", op.name, elapsed, budget)
		}
	}
	start := time.Now()
	_, err := client.Pipelined(context.Background(), func(p goredis.Pipeliner) error {
		p.Get(context.Background(), "k")
		p.Get(context.Background(), "k2")
		return nil
	})
	if elapsed := time.Since(start); err == nil || elapsed > budget+budgetSlack {
		t.Errorf("pipeline against a paused server = %v after %v; want an error after about %v", err, elapsed, budget)
	}

	srv.Resume()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(t.Context()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("Ping() 10s after the server resumed still fails")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCallerDeadlineWins: a caller's deadline shorter than the budget ends
// the operation, with the caller's error.
func TestCallerDeadlineWins(t *testing.T) {
	srv := redistest.Start(t)
	c := mustNew(t, redis.Options{Client: redis.NewClient(redis.ClientConfig{
		Addrs: []string{srv.Addr()}, OpTimeout: 20 * time.Second,
	})})
	if err := c.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	srv.Pause()
	t.Cleanup(srv.Resume)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Get(ctx, "k")
	if elapsed := time.Since(start); elapsed > 100*time.Millisecond+budgetSlack {
		t.Errorf("Get with a 100ms deadline took %v", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get past the caller's deadline = %v; want error wrapping %v", err, context.DeadlineExceeded)
	}
}

func TestNewClientDefaults(t *testing.T) {
	sc := redis.NewClient(redis.ClientConfig{Addrs: []string{"127.0.0.1:1"}})
	defer sc.Close()
	o := sc.(*goredis.Client).Options()
	if !o.ContextTimeoutEnabled || o.ReadTimeout != redis.SocketTimeout || o.WriteTimeout != redis.SocketTimeout || o.PoolTimeout > time.Second {
		t.Errorf("single-node options: ContextTimeoutEnabled %t, read/write %v/%v, pool %v; want true, %v, %v, at most 1s",
			o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout, redis.SocketTimeout, redis.SocketTimeout)
	}
	long := redis.NewClient(redis.ClientConfig{Addrs: []string{"127.0.0.1:1"}, OpTimeout: 3 * time.Second})
	defer long.Close()
	if got := long.(*goredis.Client).Options().ReadTimeout; got != 3*time.Second {
		t.Errorf("read timeout with OpTimeout 3s = %v; want 3s (never shorter than the budget)", got)
	}
	cc := redis.NewClient(redis.ClientConfig{Addrs: []string{"127.0.0.1:1"}, Cluster: true})
	defer cc.Close()
	co := cc.(*goredis.ClusterClient).Options()
	if !co.ContextTimeoutEnabled || co.ClusterStateReloadInterval > 5*time.Second || co.PoolTimeout > time.Second {
		t.Errorf("cluster options: ContextTimeoutEnabled %t, slot map reload every %v, pool %v; want true, at most 5s, at most 1s",
			co.ContextTimeoutEnabled, co.ClusterStateReloadInterval, co.PoolTimeout)
	}
}

// TestClusterPingEveryMaster: in a Cluster, Ping fails when any master is
// down, not only when the node it happens to ask is.
func TestClusterPingEveryMaster(t *testing.T) {
	rc := redistest.StartCluster(t, 3, 0)
	c := mustNew(t, redis.Options{Client: redis.NewClient(redis.ClientConfig{Addrs: rc.Addrs()[:1], Cluster: true})})
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("Ping() = %v; want nil", err)
	}
	rc.Nodes[2].Kill()
	for range 5 { // whichever node a single PING would pick
		if err := c.Ping(t.Context()); !errors.Is(err, cache.ErrUnavailable) {
			t.Fatalf("Ping() with one master down = %v; want error wrapping %v", err, cache.ErrUnavailable)
		}
	}
}

// TestClusterFollowsFailover: after a master dies and its replica is
// promoted, writes to its slots work again within seconds, not at the next
// 60 s slot map reload.
func TestClusterFollowsFailover(t *testing.T) {
	rc := redistest.StartCluster(t, 3, 1)
	c := mustNew(t, redis.Options{Client: redis.NewClient(redis.ClientConfig{Addrs: rc.Addrs(), Cluster: true})})
	const key = "failover-key"
	if err := c.Set(t.Context(), key, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	old, err := rc.MasterOf(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	old.Kill()
	// Keep writing, as a broker under load would, while the Cluster fails over.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				_ = c.Set(context.Background(), key, []byte("v"), 0)
			}
		}
	}()
	rc.WaitPromoted(key, old, 30*time.Second)
	promoted := time.Now()
	for {
		err := c.Set(t.Context(), key, []byte("w"), 0)
		if err == nil {
			break
		}
		if time.Since(promoted) > 5*time.Second {
			t.Fatalf("Set 5s after the promotion = %v; want the client to follow the new master", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("writes resumed %v after the promotion", time.Since(promoted).Round(time.Millisecond))
}
