package redis_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

func TestConformance(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	var (
		mu       sync.Mutex
		prefixes = map[cache.Cache]string{}
		n        atomic.Int64
	)
	newCache := func(t *testing.T) cache.Cache {
		// Each subtest gets its own namespace on the shared server.
		prefix := fmt.Sprintf("conformance:%d:", n.Add(1))
		c := mustNew(t, redis.Options{Client: redis.NewClient(redis.ClientConfig{Addrs: []string{srv.Addr()}}), Prefix: prefix})
		mu.Lock()
		prefixes[c] = prefix
		mu.Unlock()
		return c
	}
	advance := func(t *testing.T, c cache.Cache, d time.Duration) {
		mu.Lock()
		prefix, ok := prefixes[c]
		mu.Unlock()
		if !ok {
			t.Fatal("advance: unknown cache")
		}
		redistest.AdvanceTTLs(t, raw, prefix, d)
	}
	cachetest.Run(t, newCache, advance)
}

func TestPrefix(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	ctx := t.Context()
	const prefix = "tokenbroker:v1:"
	c := mustNew(t, redis.Options{Client: srv.Client(t), Prefix: prefix})

	if err := c.Set(ctx, "durable", []byte("d"), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "token", []byte("t"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.SetNX(ctx, "marker", []byte("m"), time.Minute); !ok || err != nil {
		t.Fatalf("SetNX(marker) = %v, %v; want true, nil", ok, err)
	}
	for _, tt := range []struct {
		key      string
		want     string
		wantPTTL func(time.Duration) bool
		pttlDesc string
	}{
		{"durable", "d", func(d time.Duration) bool { return d == -1 }, "-1 (no expiry)"},
		{"token", "t", func(d time.Duration) bool { return d > 59*time.Minute && d <= time.Hour }, "about 1h"},
		{"marker", "m", func(d time.Duration) bool { return d > 59*time.Second && d <= time.Minute }, "about 1m"},
	} {
		got, err := raw.Get(ctx, prefix+tt.key).Result()
		if err != nil || got != tt.want {
			t.Errorf("raw GET %s%s = <%d bytes>, %v; want <%d bytes>", prefix, tt.key, len(got), err, len(tt.want))
		}
		if n := raw.Exists(ctx, tt.key).Val(); n != 0 {
			t.Errorf("raw EXISTS %s = %d; want 0 (unprefixed key written)", tt.key, n)
		}
		pttl, err := raw.PTTL(ctx, prefix+tt.key).Result()
		if err != nil || !tt.wantPTTL(pttl) {
			t.Errorf("raw PTTL %s%s = %v, %v; want %s", prefix, tt.key, pttl, err, tt.pttlDesc)
		}
	}

	// The other direction: operations find prefixed keys.
	for _, k := range []string{"get", "cad", "getdel", "nx", "del"} {
		if err := raw.Set(ctx, prefix+k, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := raw.Set(ctx, k, "unprefixed", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := c.Get(ctx, "get"); err != nil || string(got) != "x" {
		t.Errorf("Get(get) = <%d bytes>, %v; want the prefixed key's value", len(got), err)
	}
	if ok, err := c.CompareAndDelete(ctx, "cad", []byte("x")); !ok || err != nil {
		t.Errorf("CompareAndDelete(cad) = %v, %v; want true, nil", ok, err)
	}
	if got, err := c.GetDel(ctx, "getdel"); err != nil || string(got) != "x" {
		t.Errorf("GetDel(getdel) = <%d bytes>, %v; want the prefixed key's value", len(got), err)
	}
	if ok, err := c.SetNX(ctx, "nx", []byte("y"), time.Minute); ok || err != nil {
		t.Errorf("SetNX(nx) = %v, %v; want false, nil (the prefixed key exists)", ok, err)
	}
	if err := c.Delete(ctx, "del"); err != nil {
		t.Errorf("Delete(del) = %v", err)
	}
	for _, tt := range []struct {
		key  string
		want int64
	}{
		{prefix + "cad", 0}, {prefix + "getdel", 0}, {prefix + "del", 0},
		{"get", 1}, {"cad", 1}, {"getdel", 1}, {"nx", 1}, {"del", 1},
	} {
		if got := raw.Exists(ctx, tt.key).Val(); got != tt.want {
			t.Errorf("raw EXISTS %s = %d; want %d", tt.key, got, tt.want)
		}
	}
}

// TestUnavailable: with the server gone, every operation fails soon with
// ErrUnavailable, never quoting a value; once it is back, the cache
// reconnects by itself.
func TestUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	c := mustNew(t, redis.Options{Client: redis.NewClient(redis.ClientConfig{
		Addrs:        []string{srv.Addr()},
		DialTimeout:  200 * time.Millisecond,
		ReadTimeout:  200 * time.Millisecond,
		WriteTimeout: 200 * time.Millisecond,
	})})
	const value = "secret-value-must-not-leak"
	if err := c.Set(t.Context(), "k", []byte(value), 0); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	for _, op := range ops(c, value) {
		start := time.Now()
		err := op.call(t.Context())
		elapsed := time.Since(start)
		t.Logf("%s failed after %v", op.name, elapsed)
		if !errors.Is(err, cache.ErrUnavailable) {
			t.Errorf("%s with the server stopped = %v; want error wrapping %v", op.name, err, cache.ErrUnavailable)
		} else if strings.Contains(err.Error(), value) {
			t.Errorf("%s error contains the value", op.name)
		}
		// About 0.1 s each; the bound is loose for -race on a busy machine.
		if elapsed > 3*time.Second {
			t.Errorf("%s took %v to fail; want it to fail fast", op.name, elapsed)
		}
	}

	srv.Restart(t)
	// go-redis remembers a failed dial for a moment before trying again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Ping(t.Context())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ping() 10s after the server came back = %v; want nil", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUnresponsive: a server that accepts connections and never answers is
// unavailable once the read timeout passes.
func TestUnresponsive(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})

	c := mustNew(t, redis.Options{Client: redis.NewClient(redis.ClientConfig{
		Addrs:        []string{l.Addr().String()},
		DialTimeout:  100 * time.Millisecond,
		ReadTimeout:  100 * time.Millisecond,
		WriteTimeout: 100 * time.Millisecond,
	})})
	for _, op := range ops(c, "v")[:2] { // Get and Set; the rest take the same path
		if err := op.call(t.Context()); !errors.Is(err, cache.ErrUnavailable) {
			t.Errorf("%s against an unresponsive server = %v; want error wrapping %v", op.name, err, cache.ErrUnavailable)
		}
	}
}

func TestContextCanceled(t *testing.T) {
	srv := redistest.Start(t)
	c := mustNew(t, redis.Options{Client: srv.Client(t)})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, op := range ops(c, "v") {
		err := op.call(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v; want error wrapping %v", op.name, err, context.Canceled)
		}
		if errors.Is(err, cache.ErrUnavailable) {
			t.Errorf("%s with a canceled context = %v; want no %v: the caller gave up, not Redis", op.name, err, cache.ErrUnavailable)
		}
	}
}

func TestErrorKinds(t *testing.T) {
	srv := redistest.Start(t, redistest.WithArgs(
		"--user", "default", "off",
		"--user", "broker", "on", ">broker-password", "~*", "+@all",
		"--user", "reader", "on", ">reader-password", "~*", "+@read", "+ping", "+hello", "+client",
	))
	admin := redis.NewClient(redis.ClientConfig{Addrs: []string{srv.Addr()}, Username: "broker", Password: "broker-password"})
	if err := admin.RPush(t.Context(), "list", "x").Err(); err != nil {
		t.Fatal(err)
	}
	admin.Close()

	for _, tt := range []struct {
		name            string
		cfg             redis.ClientConfig
		key             string
		op              string // "get" or "set"
		wantUnavailable bool
		wantNotFound    bool
	}{
		{name: "authenticated", cfg: redis.ClientConfig{Username: "broker", Password: "broker-password"}, key: "missing", op: "get", wantNotFound: true},
		{name: "wrong password", cfg: redis.ClientConfig{Username: "broker", Password: "not-the-password"}, key: "k", op: "get", wantUnavailable: true},
		{name: "no credentials", key: "k", op: "get", wantUnavailable: true},
		{name: "not permitted", cfg: redis.ClientConfig{Username: "reader", Password: "reader-password"}, key: "k", op: "set", wantUnavailable: true},
		{name: "wrong type", cfg: redis.ClientConfig{Username: "broker", Password: "broker-password"}, key: "list", op: "get"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Addrs = []string{srv.Addr()}
			c := mustNew(t, redis.Options{Client: redis.NewClient(cfg)})
			var err error
			if tt.op == "get" {
				_, err = c.Get(t.Context(), tt.key)
			} else {
				err = c.Set(t.Context(), tt.key, []byte("v"), 0)
			}
			if err == nil {
				t.Fatalf("%s(%s) = nil error; want one", tt.op, tt.key)
			}
			if got := errors.Is(err, cache.ErrUnavailable); got != tt.wantUnavailable {
				t.Errorf("%s(%s) = %v; errors.Is(ErrUnavailable) = %v, want %v", tt.op, tt.key, err, got, tt.wantUnavailable)
			}
			if got := errors.Is(err, cache.ErrNotFound); got != tt.wantNotFound {
				t.Errorf("%s(%s) = %v; errors.Is(ErrNotFound) = %v, want %v", tt.op, tt.key, err, got, tt.wantNotFound)
			}
			if cfg.Password != "" && strings.Contains(err.Error(), cfg.Password) {
				t.Errorf("%s(%s) error contains the password", tt.op, tt.key)
			}
		})
	}
}

// TestScriptFlushed: CompareAndDelete works when the server has forgotten
// the script (a restart, SCRIPT FLUSH, a failover to a replica).
func TestScriptFlushed(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	c := mustNew(t, redis.Options{Client: srv.Client(t)})
	ctx := t.Context()
	for i := range 2 {
		if err := raw.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, "k", []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.CompareAndDelete(ctx, "k", []byte("v")); !ok || err != nil {
			t.Errorf("CompareAndDelete #%d after SCRIPT FLUSH = %v, %v; want true, nil", i+1, ok, err)
		}
	}
}

func TestSubMillisecondTTL(t *testing.T) {
	srv := redistest.Start(t)
	c := mustNew(t, redis.Options{Client: srv.Client(t)})
	for _, d := range []time.Duration{time.Nanosecond, 1500 * time.Microsecond} {
		if err := c.Set(t.Context(), "k", []byte("v"), d); err != nil {
			t.Errorf("Set(k, ttl %v) = %v; want nil", d, err)
		}
		if _, err := c.SetNX(t.Context(), "nx", []byte("v"), d); err != nil {
			t.Errorf("SetNX(nx, ttl %v) = %v; want nil", d, err)
		}
	}
}

func TestNewNilClient(t *testing.T) {
	if _, err := redis.New(redis.Options{}); err == nil {
		t.Error("New(Options{}) = nil error; want one")
	}
}

func TestNewClientKinds(t *testing.T) {
	tlsConf := &tls.Config{ServerName: "redis.internal"}
	base := redis.ClientConfig{
		Username: "u", Password: "p", DB: 2, TLS: tlsConf,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 3 * time.Second,
	}

	single := base
	single.Addrs = []string{"10.0.0.1:6379"}
	sc := redis.NewClient(single)
	defer sc.Close()
	c, ok := sc.(*goredis.Client)
	if !ok {
		t.Fatalf("NewClient(single) = %T; want *redis.Client", sc)
	}
	o := c.Options()
	if o.Addr != "10.0.0.1:6379" || o.Username != "u" || o.Password != "p" || o.DB != 2 || o.TLSConfig != tlsConf ||
		o.DialTimeout != time.Second || o.ReadTimeout != 2*time.Second || o.WriteTimeout != 3*time.Second {
		t.Errorf("NewClient(single) options: addr %s, username %q, password set %t, db %d, tls %t, timeouts %v/%v/%v; want the config's",
			o.Addr, o.Username, o.Password != "", o.DB, o.TLSConfig == tlsConf, o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
	}

	sentinel := base
	sentinel.Addrs = []string{"10.0.0.1:26379", "10.0.0.2:26379"}
	sentinel.MasterName = "primary"
	fc := redis.NewClient(sentinel)
	defer fc.Close()
	if c, ok := fc.(*goredis.Client); !ok || c.Options().Addr != "FailoverClient" {
		t.Errorf("NewClient(sentinel) = %T; want a Sentinel failover client", fc)
	}

	// Two addresses alone are not a Cluster, and one address with Cluster is.
	cluster := base
	cluster.DB = 0
	cluster.Addrs = []string{"10.0.0.1:7000"}
	cluster.Cluster = true
	cc := redis.NewClient(cluster)
	defer cc.Close()
	if c, ok := cc.(*goredis.ClusterClient); !ok {
		t.Errorf("NewClient(cluster, one address) = %T; want *redis.ClusterClient", cc)
	} else if o := c.Options(); len(o.Addrs) != 1 || o.Username != "u" || o.TLSConfig != tlsConf || o.ReadTimeout != 2*time.Second {
		t.Errorf("NewClient(cluster) options: addrs %v, username %q, tls %t, read timeout %v; want the config's",
			o.Addrs, o.Username, o.TLSConfig == tlsConf, o.ReadTimeout)
	}
}

func TestClientConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		cfg     redis.ClientConfig
		wantErr []string // substrings; none means valid
	}{
		{name: "single", cfg: redis.ClientConfig{Addrs: []string{"a:6379"}}},
		{name: "sentinel", cfg: redis.ClientConfig{Addrs: []string{"a:26379", "b:26379"}, MasterName: "m", SentinelPassword: "p"}},
		{name: "cluster", cfg: redis.ClientConfig{Addrs: []string{"a:7000", "b:7000"}, Cluster: true}},
		{name: "no addrs", cfg: redis.ClientConfig{}, wantErr: []string{"at least one address"}},
		{name: "empty addr", cfg: redis.ClientConfig{Addrs: []string{""}}, wantErr: []string{"addrs[0]"}},
		{name: "several addrs, no mode", cfg: redis.ClientConfig{Addrs: []string{"a:1", "b:1"}}, wantErr: []string{"masterName"}},
		{name: "cluster and sentinel", cfg: redis.ClientConfig{Addrs: []string{"a:1"}, Cluster: true, MasterName: "m"}, wantErr: []string{"exclusive"}},
		{name: "cluster db", cfg: redis.ClientConfig{Addrs: []string{"a:1"}, Cluster: true, DB: 1}, wantErr: []string{"database 0"}},
		{name: "sentinel password without sentinel", cfg: redis.ClientConfig{Addrs: []string{"a:1"}, SentinelPassword: "p"}, wantErr: []string{"sentinel credentials"}},
		{
			name:    "every problem at once",
			cfg:     redis.ClientConfig{DB: -1, DialTimeout: -1, ReadTimeout: -1, WriteTimeout: -1},
			wantErr: []string{"at least one address", "db: must not be negative", "dialTimeout", "readTimeout", "writeTimeout"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Errorf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want errors containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v; want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestClientConfigFormatRedacts(t *testing.T) {
	cfg := redis.ClientConfig{Addrs: []string{"a:1"}, Username: "u", Password: "hunter2-pw", SentinelPassword: "sentinel-pw"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		got := fmt.Sprintf(verb, cfg)
		if strings.Contains(got, "hunter2-pw") || strings.Contains(got, "sentinel-pw") {
			t.Errorf("Sprintf(%s, cfg) shows a password", verb)
		}
		if !strings.Contains(got, "a:1") {
			t.Errorf("Sprintf(%s, cfg) = %s; want the address shown", verb, got)
		}
	}
}

type op struct {
	name string
	call func(ctx context.Context) error
}

// ops calls every operation of c once.
func ops(c *redis.Cache, value string) []op {
	v := []byte(value)
	return []op{
		{"Get", func(ctx context.Context) error { _, err := c.Get(ctx, "k"); return err }},
		{"Set", func(ctx context.Context) error { return c.Set(ctx, "k", v, time.Minute) }},
		{"Delete", func(ctx context.Context) error { return c.Delete(ctx, "k") }},
		{"CompareAndDelete", func(ctx context.Context) error { _, err := c.CompareAndDelete(ctx, "k", v); return err }},
		{"SetNX", func(ctx context.Context) error { _, err := c.SetNX(ctx, "k", v, time.Minute); return err }},
		{"GetDel", func(ctx context.Context) error { _, err := c.GetDel(ctx, "k"); return err }},
		{"Ping", func(ctx context.Context) error { return c.Ping(ctx) }},
	}
}

func mustNew(t *testing.T, o redis.Options) *redis.Cache {
	t.Helper()
	c, err := redis.New(o)
	if err != nil {
		t.Fatalf("redis.New() = %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
