package cluster_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/testutil/cluster"
)

func TestMain(m *testing.M) { cluster.Main(m) }

// TestLifecycle starts two replicas and walks them through what the
// harness offers: per-replica and round-robin clients, SIGKILL, restart on
// the same address, SIGTERM.
func TestLifecycle(t *testing.T) {
	emu := ccemu.New(ccemu.Options{ClientID: "svc", ClientSecret: "harness-secret"})
	up := httptest.NewServer(emu)
	t.Cleanup(up.Close)
	c := cluster.Start(t, cluster.Options{
		Replicas:    2,
		Connections: []cluster.Connection{cluster.ClientCredentials("cc", up.URL+ccemu.TokenPath, "svc", "harness-secret")},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &tokenbrokerv1.GetTokenRequest{Connection: "cc"}

	var first string
	for i := range c.N() {
		resp, err := c.Client(i).GetToken(ctx, req)
		if err != nil {
			t.Fatalf("replica %d: GetToken: %v", i, err)
		}
		if first == "" {
			first = resp.GetAccessToken()
		} else if resp.GetAccessToken() != first {
			t.Errorf("replica %d served another token than replica 0: the replicas do not share the cache", i)
		}
	}
	if n := emu.Requests(); n != 1 {
		t.Errorf("upstream requests = %d; want 1", n)
	}
	// The token is stored sealed, and Get opens it.
	raw, err := c.RedisClient().Get(ctx, c.TokenKey("cc")).Bytes()
	if err != nil {
		t.Fatalf("GET %s: %v", c.TokenKey("cc"), err)
	}
	if json.Valid(raw) || strings.Contains(string(raw), first) {
		t.Errorf("the token is stored in plaintext")
	}
	plain, err := c.Get(ctx, "token:{cc}:")
	if err != nil || !strings.Contains(string(plain), first) {
		t.Errorf("Get(token:{cc}:) = %d bytes, %v; want the token record", len(plain), err)
	}
	code, body, err := c.Replica(0).Ready(ctx)
	if err != nil || code != 200 {
		t.Errorf("/readyz = %d %q, %v; want 200", code, body, err)
	}

	addr := c.Replica(0).Addr()
	c.Kill(0)
	if c.Replica(0).Running() {
		t.Fatal("replica 0 runs after Kill")
	}
	for range 4 { // some of these would go to the dead replica without the retry policy
		if _, err := c.RoundRobin().GetToken(ctx, req); err != nil {
			t.Fatalf("round robin with replica 0 dead: %v", err)
		}
	}
	c.Restart(0)
	if got := c.Replica(0).Addr(); got != addr {
		t.Errorf("restarted on %s; want the old address %s", got, addr)
	}
	if _, err := c.Client(0).GetToken(ctx, req); err != nil {
		t.Fatalf("replica 0 after restart: %v", err)
	}
	if err := c.Term(1); err != nil {
		t.Errorf("replica 1 exit after SIGTERM: %v; want status 0", err)
	}
	if !strings.Contains(c.Replica(1).Logs(), `"msg":"stopped"`) {
		t.Errorf("replica 1 did not log that it stopped")
	}
	if !strings.Contains(c.Replica(0).Logs(), "--- cluster: restart") {
		t.Errorf("replica 0 log lacks the restart marker")
	}
}
