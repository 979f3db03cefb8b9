// Package cluster runs several broker processes against one Redis for
// multi-replica tests: real cmd/broker binaries, a real redis-server (or
// Sentinels), and upstream emulators that the test serves in its own
// process and passes in as connections.
//
//	up := httptest.NewServer(ccemu.New(ccemu.Options{ClientID: "svc", ClientSecret: "s"}))
//	t.Cleanup(up.Close)
//	c := cluster.Start(t, cluster.Options{
//		Replicas:    3,
//		Connections: []cluster.Connection{cluster.ClientCredentials("pay", up.URL+ccemu.TokenPath, "svc", "s")},
//	})
//	resp, err := c.RoundRobin().GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "pay"})
//
// The binary is built once per test binary (see Binary and Main), without
// the race detector unless Options.Race asks. Every process is started on
// 127.0.0.1 with free ports, its stderr (JSON logs) kept in memory, and
// killed when the test ends; every wait is bounded. A failed test logs the
// end of each replica's log.
//
// Run it by hand with `go run ./internal/testutil/cluster/cmd/cluster`.
package cluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/cache/sealed"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

// Bounds on waits.
const (
	// StartTimeout bounds one broker's start, until it logs "serving".
	StartTimeout = 30 * time.Second
	// ExitTimeout bounds the wait for a signalled broker to exit.
	ExitTimeout = 30 * time.Second
)

// ServiceName is the gRPC service the brokers serve.
const ServiceName = "tokenbroker.v1.TokenBrokerService"

// RoundRobinServiceConfig is the round-robin client's service config: it
// spreads calls over every replica and retries UNAVAILABLE on another.
const RoundRobinServiceConfig = `{"loadBalancingConfig":[{"round_robin":{}}],` +
	`"methodConfig":[{"name":[{"service":"` + ServiceName + `"}],` +
	`"retryPolicy":{"maxAttempts":4,"initialBackoff":"0.05s","maxBackoff":"0.5s",` +
	`"backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`

// DefaultKeyPrefix is the Redis key prefix Start uses when Options.KeyPrefix
// is empty.
const DefaultKeyPrefix = "tbtest:"

// Options say what to start.
type Options struct {
	// Replicas is the number of broker processes (0: 3).
	Replicas int
	// Connections are the brokers' connections, typically pointing at
	// emulators served by the test.
	Connections []Connection
	// ConnectionsYAML, when not empty, is a YAML list of further
	// connections, written into the file as it is.
	ConnectionsYAML string
	// Env is added to every broker's environment (for {env: NAME} secrets
	// in ConnectionsYAML).
	Env map[string]string
	// BrokerArgs are extra command-line arguments for every broker, such
	// as "-shutdown-delay", "1s".
	BrokerArgs []string

	// Redis is the server the brokers share. Nil: Start starts one with
	// RedisOptions (and stops it when the test ends).
	Redis        *redistest.Server
	RedisOptions []redistest.Option
	// Sentinel, when not nil, is used instead of Redis: the brokers reach
	// the primary through these Sentinels.
	Sentinel *Sentinel
	// RedisCluster, when not nil, is used instead of Redis: the brokers
	// run with cache.redis.cluster, seeded with every node.
	RedisCluster *redistest.Cluster
	// RedisAddr, when not empty, is the address the brokers dial for the
	// single Redis instead of its own, such as a Toxiproxy proxy's in front
	// of it. The test's own client (RedisClient) still dials Redis.
	RedisAddr string
	// RedisOpTimeout is cache.redis.op_timeout (0: the broker's default).
	RedisOpTimeout time.Duration
	// KeyPrefix is cache.redis.key_prefix (empty: DefaultKeyPrefix).
	KeyPrefix string
	// RedisDialTimeout is cache.redis.dial_timeout (0: the broker's
	// default).
	RedisDialTimeout time.Duration

	// Broker tuning; zero leaves the broker's default.
	LeaseTTL, L1MaxAge, FetchTimeout time.Duration
	DisableRefreshAhead              bool
	// LogLevel is log.level (empty: info).
	LogLevel string
	// Logs, when not nil, also gets every line the brokers log, each
	// prefixed with "[replica N] ".
	Logs io.Writer

	// InsecurePlaintext stores tokens and grants in Redis unencrypted.
	// Otherwise the brokers seal them with a random key (EncryptionKeyID)
	// made for this cluster; Cluster.Get opens them.
	InsecurePlaintext bool

	// Race builds the brokers with the race detector (slower).
	Race bool
}

// EncryptionKeyID is the id of the encryption key Start makes.
const EncryptionKeyID = "test1"

// encryptionKeyEnv carries the encryption key to the brokers.
const encryptionKeyEnv = "TOKENBROKER_TEST_CACHE_KEY"

// A Cluster is N running brokers sharing one Redis.
type Cluster struct {
	t         testing.TB
	bin       string
	dir       string
	cfgPath   string
	env       []string
	args      []string
	logs      io.Writer
	logsMu    sync.Mutex
	keyPrefix string
	redis     *redistest.Server
	sentinel  *Sentinel

	redisCluster *redistest.Cluster
	replicas     []*Replica

	rrOnce sync.Once
	rrConn *grpc.ClientConn
	rrErr  error

	rcOnce sync.Once
	rc     redis.UniversalClient

	keyring *sealed.Keyring // nil: plaintext

	startFailed bool // the failure message already holds the logs
}

// Start builds the broker (once), writes its configuration, starts
// o.Replicas brokers and waits until every one serves. It fails t if any
// step fails. Everything stops when t ends.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Replicas <= 0 {
		o.Replicas = 3
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	bin, err := Binary(o.Race)
	if err != nil {
		t.Fatalf("cluster: build broker: %v", err)
	}
	c := &Cluster{t: t, bin: bin, dir: t.TempDir(), keyPrefix: o.KeyPrefix, sentinel: o.Sentinel, logs: o.Logs}
	rc := redisConfig{KeyPrefix: o.KeyPrefix}
	if o.RedisDialTimeout > 0 {
		rc.DialTimeout = o.RedisDialTimeout.String()
	}
	if o.RedisOpTimeout > 0 {
		rc.OpTimeout = o.RedisOpTimeout.String()
	}
	switch {
	case o.Sentinel != nil:
		rc.Addrs, rc.MasterName = o.Sentinel.Addrs(), o.Sentinel.MasterName()
	case o.RedisCluster != nil:
		rc.Addrs, rc.Cluster = o.RedisCluster.Addrs(), true
		c.redisCluster = o.RedisCluster
	case o.Redis != nil:
		c.redis = o.Redis
		rc.Addrs = []string{o.Redis.Addr()}
	default:
		c.redis = redistest.Start(t, o.RedisOptions...)
		rc.Addrs = []string{c.redis.Addr()}
	}
	if o.RedisAddr != "" {
		rc.Addrs = []string{o.RedisAddr}
	}
	env := maps.Clone(o.Env)
	if env == nil {
		env = map[string]string{}
	}
	keyEnv := ""
	if !o.InsecurePlaintext {
		material := make([]byte, sealed.KeySize)
		_, _ = rand.Read(material)
		kr, err := sealed.NewKeyring([]sealed.Key{{ID: EncryptionKeyID, Material: secret.New(string(material))}}, "")
		if err != nil {
			t.Fatalf("cluster: keyring: %v", err)
		}
		c.keyring, keyEnv = kr, encryptionKeyEnv
		env[keyEnv] = base64.StdEncoding.EncodeToString(material)
	}
	cfg, err := configYAML(&o, rc, keyEnv)
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	c.cfgPath = filepath.Join(c.dir, "config.yaml")
	if err := os.WriteFile(c.cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, conn := range o.Connections {
		maps.Copy(env, conn.Secrets)
	}
	c.env = os.Environ()
	for _, k := range slices.Sorted(maps.Keys(env)) {
		c.env = append(c.env, k+"="+env[k])
	}
	c.args = slices.Clone(o.BrokerArgs)

	for i := range o.Replicas {
		c.replicas = append(c.replicas, &Replica{c: c, index: i, logs: &logtest.Buffer{}})
	}
	t.Cleanup(c.cleanup)
	errs := make([]error, len(c.replicas))
	var wg sync.WaitGroup
	for i, r := range c.replicas {
		wg.Go(func() { errs[i] = r.start("127.0.0.1:0", "127.0.0.1:0") })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.startFailed = true
		t.Fatalf("cluster: %v", err)
	}
	return c
}

// cleanup kills every broker and closes the clients.
func (c *Cluster) cleanup() {
	if c.rrConn != nil {
		_ = c.rrConn.Close()
	}
	if c.rc != nil {
		_ = c.rc.Close()
	}
	for _, r := range c.replicas {
		r.closeConn()
		_ = r.signal(syscall.SIGKILL)
		_, _ = r.wait(ExitTimeout)
	}
	if c.t.Failed() && !c.startFailed {
		for _, r := range c.replicas {
			c.t.Logf("replica %d log (last 40 lines):\n%s", r.index, tail(r.Logs(), 40))
		}
	}
}

// N returns the number of replicas.
func (c *Cluster) N() int { return len(c.replicas) }

// Replica returns replica i (0-based).
func (c *Cluster) Replica(i int) *Replica { return c.replicas[i] }

// Addrs returns every replica's gRPC address.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.replicas))
	for i, r := range c.replicas {
		out[i] = r.Addr()
	}
	return out
}

// ConfigPath is the brokers' configuration file.
func (c *Cluster) ConfigPath() string { return c.cfgPath }

// KeyPrefix is the brokers' Redis key prefix.
func (c *Cluster) KeyPrefix() string { return c.keyPrefix }

// GrantKey is the Redis key of a connection's grant.
func (c *Cluster) GrantKey(conn string) string { return c.keyPrefix + "grant:{" + conn + "}" }

// TokenKey is the Redis key of a connection's token for scopes (sorted,
// without duplicates, as the broker normalises them).
func (c *Cluster) TokenKey(conn string, scopes ...string) string {
	return c.keyPrefix + "token:{" + conn + "}:" + strings.Join(scopes, " ")
}

// Get reads the broker's key (such as "grant:{conn}", without the prefix)
// from Redis and returns its plaintext, opening it with the cluster's
// encryption key unless Options.InsecurePlaintext. A missing key is
// redis.Nil.
func (c *Cluster) Get(ctx context.Context, key string) ([]byte, error) {
	raw, err := c.RedisClient().Get(ctx, c.keyPrefix+key).Bytes()
	if err != nil || c.keyring == nil {
		return raw, err
	}
	return c.keyring.Open(key, raw)
}

// Grant returns the stored grant record of conn, decoded from JSON
// (fields such as "state" and "rt", the refresh token).
func (c *Cluster) Grant(ctx context.Context, conn string) (map[string]any, error) {
	raw, err := c.Get(ctx, "grant:{"+conn+"}")
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("grant of %s: %w", conn, err)
	}
	return m, nil
}

// Redis is the redis-server the brokers share (nil with Sentinel or a
// Redis Cluster).
func (c *Cluster) Redis() *redistest.Server { return c.redis }

// RedisClient is a client of the brokers' Redis (through the Sentinels
// with Options.Sentinel, of the Cluster with Options.RedisCluster), closed
// when the test ends.
func (c *Cluster) RedisClient() redis.UniversalClient {
	c.rcOnce.Do(func() {
		if c.redisCluster != nil {
			c.rc = redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.redisCluster.Addrs(), DialerRetries: 1})
			return
		}
		if c.sentinel != nil {
			c.rc = redis.NewFailoverClient(&redis.FailoverOptions{
				MasterName: c.sentinel.MasterName(), SentinelAddrs: c.sentinel.Addrs(), DialerRetries: 1,
			})
			return
		}
		c.rc = redis.NewClient(&redis.Options{Addr: c.redis.Addr(), DialerRetries: 1})
	})
	return c.rc
}

// Client is a gRPC client of replica i only.
func (c *Cluster) Client(i int) tokenbrokerv1.TokenBrokerServiceClient { return c.replicas[i].Client() }

// Kill kills replica i with SIGKILL and waits for it to exit.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	r := c.replicas[i]
	if err := r.signal(syscall.SIGKILL); err != nil {
		c.t.Fatalf("cluster: kill replica %d: %v", i, err)
	}
	if exited, _ := r.wait(ExitTimeout); !exited {
		c.t.Fatalf("cluster: replica %d did not exit %v after SIGKILL", i, ExitTimeout)
	}
}

// Term sends SIGTERM to replica i and waits for it to exit (it drains
// first), returning its exit error: nil for status 0.
func (c *Cluster) Term(i int) error {
	c.t.Helper()
	r := c.replicas[i]
	if err := r.signal(syscall.SIGTERM); err != nil {
		c.t.Fatalf("cluster: SIGTERM replica %d: %v", i, err)
	}
	exited, err := r.wait(ExitTimeout)
	if !exited {
		c.t.Fatalf("cluster: replica %d did not exit %v after SIGTERM\n%s", i, ExitTimeout, tail(r.Logs(), 20))
	}
	return err
}

// Signal sends sig to replica i without waiting; see Wait.
func (c *Cluster) Signal(i int, sig syscall.Signal) {
	c.t.Helper()
	if err := c.replicas[i].signal(sig); err != nil {
		c.t.Fatalf("cluster: signal replica %d: %v", i, err)
	}
}

// Wait waits (at most ExitTimeout) for replica i to exit and returns its
// exit error: nil for status 0.
func (c *Cluster) Wait(i int) error {
	c.t.Helper()
	exited, err := c.replicas[i].wait(ExitTimeout)
	if !exited {
		c.t.Fatalf("cluster: replica %d did not exit within %v", i, ExitTimeout)
	}
	return err
}

// Restart starts replica i again on its old addresses, killing it first if
// it still runs, and waits until it serves. Clients keep working.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	r := c.replicas[i]
	if r.Running() {
		c.Kill(i)
	}
	r.logs.Write([]byte("--- cluster: restart\n"))
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		// The old listeners may linger for a moment.
		if err = r.start(r.Addr(), r.AdminAddr()); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("cluster: restart: %v", err)
	}
}

// RoundRobin is a client that spreads calls over every replica and retries
// UNAVAILABLE on the next one (RoundRobinServiceConfig).
func (c *Cluster) RoundRobin() tokenbrokerv1.TokenBrokerServiceClient {
	c.t.Helper()
	c.rrOnce.Do(func() {
		res := manual.NewBuilderWithScheme("tbcluster")
		var addrs []resolver.Address
		for _, a := range c.Addrs() {
			addrs = append(addrs, resolver.Address{Addr: a})
		}
		res.InitialState(resolver.State{Addresses: addrs})
		c.rrConn, c.rrErr = grpc.NewClient(res.Scheme()+":///brokers",
			grpc.WithResolvers(res),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(RoundRobinServiceConfig),
			grpc.WithConnectParams(connectParams))
	})
	if c.rrErr != nil {
		c.t.Fatalf("cluster: round-robin client: %v", c.rrErr)
	}
	return tokenbrokerv1.NewTokenBrokerServiceClient(c.rrConn)
}

// connectParams reconnect quickly to a replica that comes back.
var connectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
	MinConnectTimeout: 2 * time.Second,
}

// A Replica is one broker process (over its restarts).
type Replica struct {
	c     *Cluster
	index int
	logs  *logtest.Buffer

	mu        sync.Mutex
	cmd       *exec.Cmd
	done      chan struct{} // closed once the process exited and its log is read
	exitErr   error
	grpcAddr  string
	adminAddr string
	conn      *grpc.ClientConn
}

// Addr is the replica's gRPC address.
func (r *Replica) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.grpcAddr
}

// AdminAddr is the replica's admin HTTP address (/healthz, /readyz).
func (r *Replica) AdminAddr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.adminAddr
}

// Logs returns everything the replica logged, over all its runs.
func (r *Replica) Logs() string { return r.logs.String() }

// Running reports whether the process is running.
func (r *Replica) Running() bool {
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// PID is the process id of the current run (0 if never started).
func (r *Replica) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Client is a gRPC client of this replica only, without retries.
func (r *Replica) Client() tokenbrokerv1.TokenBrokerServiceClient {
	return tokenbrokerv1.NewTokenBrokerServiceClient(r.Conn())
}

// Health is the replica's grpc.health.v1 client.
func (r *Replica) Health() healthpb.HealthClient { return healthpb.NewHealthClient(r.Conn()) }

// Conn is the replica's client connection; it survives restarts.
func (r *Replica) Conn() *grpc.ClientConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		cc, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(connectParams))
		if err != nil {
			r.c.t.Fatalf("cluster: client of replica %d: %v", r.index, err)
		}
		r.conn = cc
	}
	return r.conn
}

func (r *Replica) closeConn() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn != nil {
		_ = r.conn.Close()
	}
}

// Ready fetches the replica's /readyz: status code and body.
func (r *Replica) Ready(ctx context.Context) (int, string, error) { return r.admin(ctx, "/readyz") }

// Healthz fetches the replica's /healthz.
func (r *Replica) Healthz(ctx context.Context) (int, string, error) { return r.admin(ctx, "/healthz") }

func (r *Replica) admin(ctx context.Context, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.AdminAddr()+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), err
}

// start runs the broker on the given addresses and waits until it serves.
func (r *Replica) start(grpcAddr, adminAddr string) error {
	c := r.c
	args := append([]string{"-config", c.cfgPath, "-grpc-addr", grpcAddr, "-admin-addr", adminAddr}, c.args...)
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	cmd.Dir = c.dir
	cmd.SysProcAttr = sysProcAttr()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = r.logs
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("replica %d: %w", r.index, err)
	}
	done := make(chan struct{})
	type addrs struct{ grpc, admin string }
	serving := make(chan addrs, 1)
	r.mu.Lock()
	r.cmd, r.done, r.exitErr = cmd, done, nil
	r.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			r.logs.Write(append(slices.Clip(line), '\n')) // Clip: never write into the scanner's buffer
			if c.logs != nil {
				c.logsMu.Lock()
				fmt.Fprintf(c.logs, "[replica %d] %s\n", r.index, line)
				c.logsMu.Unlock()
			}
			if !strings.Contains(string(line), `"serving"`) {
				continue
			}
			var m struct {
				Msg       string `json:"msg"`
				GRPCAddr  string `json:"grpc_addr"`
				AdminAddr string `json:"admin_addr"`
			}
			if json.Unmarshal(line, &m) == nil && m.Msg == "serving" {
				select {
				case serving <- addrs{m.GRPCAddr, m.AdminAddr}:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		err := cmd.Wait()
		r.mu.Lock()
		r.exitErr = err
		r.mu.Unlock()
		close(done)
	}()
	select {
	case a := <-serving:
		r.mu.Lock()
		r.grpcAddr, r.adminAddr = a.grpc, a.admin
		r.mu.Unlock()
		return nil
	case <-done:
		return fmt.Errorf("replica %d exited before serving (%v):\n%s", r.index, r.exitError(), tail(r.Logs(), 30))
	case <-time.After(StartTimeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("replica %d did not serve within %v:\n%s", r.index, StartTimeout, tail(r.Logs(), 30))
	}
}

func (r *Replica) exitError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exitErr
}

func (r *Replica) signal(sig syscall.Signal) error {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if cmd == nil {
		return errors.New("never started")
	}
	select {
	case <-done:
		return nil // already gone
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// wait waits at most d for the current run to end; exited is false on
// timeout.
func (r *Replica) wait(d time.Duration) (exited bool, err error) {
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	if done == nil {
		return true, nil
	}
	select {
	case <-done:
		return true, r.exitError()
	case <-time.After(d):
		return false, nil
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\t" + strings.Join(lines, "\n\t")
}
