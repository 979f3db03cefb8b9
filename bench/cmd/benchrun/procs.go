package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/bench/internal/loadresult"
)

type targetKind int

const (
	kindBaseline targetKind = iota
	kindBroker
)

// A target is a server under load.
type target struct {
	name  string
	kind  targetKind
	addr  string // gRPC
	admin string // admin HTTP base URL (brokers)
	p     *proc
	redis *redisServer // broker-redis
}

func (t *target) stop() { t.p.stop() }

// A proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// startProc runs bin pinned to cpus (when set) and returns once a line of
// its stdout or stderr matches ready, with the first submatch.
func startProc(ctx context.Context, name, work, cpus string, extraEnv []string, ready *regexp.Regexp, bin string, args ...string) (*proc, string, error) {
	if cpus != "" {
		args = append([]string{"-c", cpus, bin}, args...)
		bin = "taskset"
	}
	logf, err := os.Create(filepath.Join(work, name+".log"))
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logf}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if m := ready.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(logf, pr)
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	select {
	case v := <-found:
		return p, v, nil
	case <-p.done:
		return nil, "", fmt.Errorf("%s exited before it was ready; see %s", name, logf.Name())
	case <-time.After(60 * time.Second):
		p.stop()
		return nil, "", fmt.Errorf("%s not ready after 60s; see %s", name, logf.Name())
	case <-ctx.Done():
		p.stop()
		return nil, "", ctx.Err()
	}
}

// stop sends SIGTERM and waits (SIGKILL after 10 s). Safe to call twice.
func (p *proc) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.log.Close()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

var (
	listeningRE = regexp.MustCompile(`^listening (\S+)$`)
	servingRE   = regexp.MustCompile(`"msg":"serving".*"grpc_addr":"([^"]+)".*"admin_addr":"([^"]+)"`)
	adminRE     = regexp.MustCompile(`"msg":"serving".*"admin_addr":"([^"]+)"`)
)

// startBaseline runs the do-nothing server as target name, with grpc-go's
// NumStreamWorkers(workers) when workers > 0, and env (NAME=VALUE) when set.
func startBaseline(ctx context.Context, bins *binaries, work, name, cpus, profileDir string, workers int, env string) (*target, error) {
	args := []string{"-addr", "127.0.0.1:0", "-stream-workers", strconv.Itoa(workers)}
	if profileDir != "" {
		args = append(args, "-cpuprofile", filepath.Join(profileDir, name+".pprof"))
	}
	var extraEnv []string
	if env != "" {
		extraEnv = []string{env}
	}
	p, addr, err := startProc(ctx, name, work, cpus, extraEnv, listeningRE, bins.baseline, args...)
	if err != nil {
		return nil, err
	}
	return &target{name: name, kind: kindBaseline, addr: addr, p: p}, nil
}

// startBroker runs `broker -demo -config NAME.yaml` with connection bench-cc
// (the emulator), with cache.type redis when rs is set, and with extraConfig
// (top-level YAML lines) appended.
func startBroker(ctx context.Context, bin, work, name, cpus, profileDir string, emu *emulator, rs *redisServer, extraEnv []string, extraConfig string) (*target, error) {
	cfg := fmt.Sprintf(`# written by bench/cmd/benchrun
log: {level: info}
connections:
  - name: bench-cc
    type: client_credentials
    token_url: %s
    client_id: %s
    client_secret: {env: BENCH_CC_SECRET}
    scopes: [read]
`, emu.tokenURL, emu.clientID)
	if rs != nil {
		keyFile := filepath.Join(work, name+".key")
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)), 0o600); err != nil {
			return nil, err
		}
		cfg += fmt.Sprintf(`cache:
  type: redis
  redis:
    addrs: [%q]
encryption:
  keys:
    - {id: bench, secret: {file: %q}}
  primary: bench
`, rs.addr, keyFile)
	}
	if extraConfig != "" {
		cfg += extraConfig + "\n"
	}
	cfgFile := filepath.Join(work, name+".yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	args := []string{"-demo", "-config", cfgFile, "-grpc-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-callback-addr", "127.0.0.1:0"}
	if profileDir != "" {
		args = append(args, "-cpuprofile", filepath.Join(profileDir, name+".pprof"))
	}
	p, addr, err := startProc(ctx, name, work, cpus, append([]string{"BENCH_CC_SECRET=" + emu.clientSecret}, extraEnv...), servingRE, bin, args...)
	if err != nil {
		return nil, err
	}
	// The same line holds the admin address.
	admin := ""
	if data, err := os.ReadFile(p.log.Name()); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if m := adminRE.FindStringSubmatch(line); m != nil {
				admin = "http://" + m[1]
			}
		}
	}
	return &target{name: name, kind: kindBroker, addr: addr, admin: admin, p: p, redis: rs}, nil
}

// cpuSeconds is a process's user+system CPU time so far.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line.
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

type redisServer struct {
	addr   string
	p      *proc
	client *goredis.Client
}

func (r *redisServer) stop() {
	if r.client != nil {
		r.client.Close()
	}
	r.p.stop()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startRedis(ctx context.Context, work, cpus string) (*redisServer, error) {
	var lastErr error
	for range 5 { // a free port can be taken before redis binds it
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		p, _, err := startProc(ctx, "redis", work, cpus, nil, regexp.MustCompile(`(Ready to accept connections)`),
			"redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", work, "--protected-mode", "yes")
		if err != nil {
			lastErr = err
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		rs := &redisServer{addr: addr, p: p, client: goredis.NewClient(&goredis.Options{Addr: addr})}
		if err := rs.client.Ping(ctx).Err(); err != nil {
			rs.stop()
			lastErr = err
			continue
		}
		return rs, nil
	}
	return nil, fmt.Errorf("redis-server: %w", lastErr)
}

// commandStats returns the calls per command from INFO commandstats.
func (r *redisServer) commandStats(ctx context.Context) (map[string]int64, error) {
	info, err := r.client.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		if !ok || !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[name] = n
			}
		}
	}
	return out, nil
}

// loadSpec is one load generator run.
type loadSpec struct {
	workers, conns   int
	duration, warmup time.Duration
	requests         int
	forceRefresh     bool
	// slice is how long loadgen measures one target at a time when it
	// interleaves several (0: loadgen's default).
	slice time.Duration
}

// LoadResult is loadgen's JSON line plus what benchrun measured around it.
type LoadResult struct {
	loadresult.Result
	Target string `json:"target"`
	Round  int    `json:"round"`

	// Broker-redis: what the whole loadgen run (warm-up included) cost.
	Redis *RedisUse `json:"redis,omitempty"`
}

// RedisUse is the Redis commands a load run caused and the GetToken outcomes
// the broker counted in the same window.
type RedisUse struct {
	Commands   map[string]int64 `json:"commands"`
	L1Hits     int64            `json:"l1_hits"`
	SharedHits int64            `json:"shared_hits"`
	Fetched    int64            `json:"fetched"`
}

// loadRun runs loadgen against ts: one after the other's slices when there
// are several (loadgen interleaves them), one result per target, in order.
func loadRun(ctx context.Context, bins *binaries, cpus string, ts []*target, l loadSpec) ([]*LoadResult, error) {
	var addrs, labels, pids []string
	for _, t := range ts {
		addrs = append(addrs, t.addr)
		labels = append(labels, t.name)
		pids = append(pids, strconv.Itoa(t.p.pid()))
	}
	args := []string{"-addr", strings.Join(addrs, ","), "-label", strings.Join(labels, ","), "-c", strconv.Itoa(l.workers),
		"-conns", strconv.Itoa(max(l.conns, 1)), "-warmup", l.warmup.String(), "-server-pid", strings.Join(pids, ",")}
	if l.requests > 0 {
		args = append(args, "-n", strconv.Itoa(l.requests))
	} else {
		args = append(args, "-duration", l.duration.String())
	}
	if l.slice > 0 {
		args = append(args, "-slice", l.slice.String())
	}
	if l.forceRefresh {
		args = append(args, "-force-refresh")
	}
	bin := bins.loadgen
	if cpus != "" {
		args = append([]string{"-c", cpus, bin}, args...)
		bin = "taskset"
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var rs []*LoadResult
	dec := json.NewDecoder(bytes.NewReader(out))
	for i := range ts {
		var r LoadResult
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("loadgen output %q: %w", out, err)
		}
		r.Target = ts[i].name
		rs = append(rs, &r)
	}
	return rs, nil
}
