package redistest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterNodeTimeout is cluster-node-timeout of the nodes StartCluster
// starts: short, so that a replica is promoted a few seconds after its
// master dies.
const ClusterNodeTimeout = 1000 * time.Millisecond

// clusterSetupTimeout bounds redis-cli --cluster create and the wait for
// every node to agree.
const clusterSetupTimeout = 60 * time.Second

// A Cluster is a Redis Cluster of redis-server processes on loopback.
type Cluster struct {
	t     testing.TB
	Nodes []*Server
}

// StartCluster starts masters*(1+replicas) redis-server nodes in cluster
// mode, joins them with `redis-cli --cluster create … --cluster-yes`, and
// waits until every node reports cluster_state:ok. Everything stops when t
// ends. Each node's cluster bus listens on a port of its own
// (--cluster-port), not port+10000.
func StartCluster(t testing.TB, masters, replicas int, opts ...Option) *Cluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal(`redis-cli not found: install it with "apt-get install -y redis-tools"`)
	}
	c := &Cluster{t: t}
	var addrs []string
	for range masters * (1 + replicas) {
		bus, err := freePort()
		if err != nil {
			t.Fatalf("redistest: pick a port: %v", err)
		}
		s := Start(t, append(opts, WithArgs(
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(ClusterNodeTimeout.Milliseconds(), 10),
			"--cluster-port", strconv.Itoa(bus),
			// Replicas sync at once rather than after 5 s: a replica
			// that never synced is not promoted.
			"--repl-diskless-sync-delay", "0",
		))...)
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterSetupTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.waitOK(ctx); err != nil {
		t.Fatalf("redistest: cluster not ready: %v", err)
	}
	return c
}

// Addrs are every node's address.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.Addr())
	}
	return out
}

// waitOK waits until checkOK(settled) passes.
func (c *Cluster) waitOK(ctx context.Context) error {
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 250*time.Millisecond) {
		err := c.checkOK(ctx, true)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// checkOK checks that every running node says cluster_state:ok and, with
// settled, that it knows every node and that every replica is in sync.
func (c *Cluster) checkOK(ctx context.Context, settled bool) error {
	for _, n := range c.Nodes {
		if n.PID() == 0 {
			continue
		}
		rc := redis.NewClient(&redis.Options{Addr: n.Addr(), DialerRetries: 1})
		info, err := rc.ClusterInfo(ctx).Result()
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", n.Addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster_state is not ok", n.Addr())
		}
		if !settled {
			continue
		}
		if !strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d\r", len(c.Nodes))) {
			return fmt.Errorf("%s: does not know every node yet", n.Addr())
		}
		rc = redis.NewClient(&redis.Options{Addr: n.Addr(), DialerRetries: 1})
		repl, err := rc.Info(ctx, "replication").Result()
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", n.Addr(), err)
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return fmt.Errorf("%s: replica not in sync yet", n.Addr())
		}
	}
	return nil
}

// MasterOf returns the node serving key's slot as a master, asking a
// running node.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	for _, n := range c.Nodes {
		if n.PID() == 0 {
			continue
		}
		rc := redis.NewClient(&redis.Options{Addr: n.Addr(), DialerRetries: 1})
		slot, err := rc.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			_ = rc.Close()
			continue
		}
		slots, err := rc.ClusterSlots(ctx).Result()
		_ = rc.Close()
		if err != nil {
			continue
		}
		for _, s := range slots {
			if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
				for _, cand := range c.Nodes {
					if cand.Addr() == s.Nodes[0].Addr {
						return cand, nil
					}
				}
			}
		}
	}
	return nil, errors.New("no running node knows the slot's master")
}

// WaitPromoted waits (at most timeout) until a node other than old serves
// key's slot as master and every running node says cluster_state:ok. It
// returns the new master.
func (c *Cluster) WaitPromoted(key string, old *Server, timeout time.Duration) *Server {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		m, err := c.MasterOf(ctx, key)
		if err == nil && m != old {
			if err = c.checkOK(ctx, false); err == nil {
				return m
			}
		} else if err == nil {
			err = fmt.Errorf("%s still serves the slot", old.Addr())
		}
		select {
		case <-ctx.Done():
			var logs strings.Builder
			for _, n := range c.Nodes {
				fmt.Fprintf(&logs, "\nnode %s:%s", n.Addr(), n.logTail())
			}
			c.t.Fatalf("redistest: no promotion within %v: %v%s", timeout, err, logs.String())
		case <-time.After(wait):
		}
	}
}
