// Command benchrun measures a cached GetToken against a do-nothing gRPC
// server with the same message shape, side by side in one run, and prints
// one table plus the broker's Redis round trips per L1 hit, cold-miss
// overhead over the raw upstream call, and heap per cached token.
//
// It builds cmd/broker, bench/baseline and bench/loadgen, then starts:
//
//   - baseline: the do-nothing server;
//   - broker-memory: `broker -demo -config mem.yaml` (memory cache);
//   - broker-redis: `broker -demo -config redis.yaml` against a redis-server
//     it starts on a free loopback port, with an encryption key it generates;
//
// pinning the servers to one half of the CPUs and the load generator (and
// redis-server) to the other with taskset when there are at least two. The
// configs add connection bench-cc, pointing at a client_credentials emulator
// served by this process, for the cold-miss measurement; the load runs use
// demo-cc. For each concurrency it runs the baseline and then each broker
// for the same duration with the same load generator.
//
//	go run ./bench/cmd/benchrun                      # BENCH_DURATION=10s, c=16,64
//	BENCH_DURATION=1s go run ./bench/cmd/benchrun -smoke
//
// Settings come from flags or, for make, environment variables:
// BENCH_DURATION, BENCH_WARMUP, BENCH_CONCURRENCY, BENCH_CONNS, BENCH_ROUNDS,
// BENCH_COLD_N, BENCH_HEAP_KEYS, BENCH_PROFILE (a directory: the servers
// write CPU profiles there), BENCH_JSON (a file for the raw results).
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/config"
)

// baselineTuned names the do-nothing server run with the broker's default
// runtime settings, listen.grpc_stream_workers and GOGC: the ratios against
// it compare like with like.
const baselineTuned = "baseline+tuning"

type settings struct {
	duration, warmup time.Duration
	concurrency      []int
	conns            int
	rounds           int
	coldN            int
	heapKeys         int
	profileDir       string
	jsonOut          string
	workDir          string
	redis            bool
	interleave       bool
	slice            time.Duration
	pin              bool
	smoke            bool
	goCmd            string
	ghz              string
	variantConfig    string
	baselineTuned    bool
	compare          string
	variantEnv       string
}

func main() {
	s, err := parseSettings(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, s); err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		os.Exit(1)
	}
}

func env(name, def string) string { return cmp.Or(os.Getenv(name), def) }

func parseSettings(args []string) (*settings, error) {
	var s settings
	var conc string
	fs := flag.NewFlagSet("benchrun", flag.ContinueOnError)
	fs.BoolVar(&s.smoke, "smoke", os.Getenv("BENCH_SMOKE") != "", "one very short pass (CI): 1s at c=16, fewer cold calls and keys; fails on errors and heap over budget, never on speed")
	dur := fs.String("duration", env("BENCH_DURATION", ""), "measured duration of each load run (default 10s; 1s with -smoke)")
	warm := fs.String("warmup", env("BENCH_WARMUP", ""), "load before each measured run (default 2s; 200ms with -smoke)")
	fs.StringVar(&conc, "concurrency", env("BENCH_CONCURRENCY", ""), "comma-separated concurrencies (default 16,64; 16 with -smoke)")
	fs.IntVar(&s.conns, "conns", atoi(env("BENCH_CONNS", "4")), "gRPC connections of the load generator")
	fs.IntVar(&s.rounds, "rounds", atoi(env("BENCH_ROUNDS", "1")), "repeat every run this often; the table shows medians")
	fs.IntVar(&s.coldN, "cold-n", atoi(env("BENCH_COLD_N", "0")), "cold-miss samples per target (default 300; 50 with -smoke)")
	fs.IntVar(&s.heapKeys, "heap-keys", atoi(env("BENCH_HEAP_KEYS", "0")), "distinct tokens for heap per token (default 100000; 20000 with -smoke)")
	fs.StringVar(&s.profileDir, "profile", env("BENCH_PROFILE", ""), "`dir`ectory for the servers' CPU profiles (none when empty)")
	fs.StringVar(&s.jsonOut, "json", env("BENCH_JSON", ""), "write the raw results as JSON to `file`")
	fs.StringVar(&s.workDir, "work", env("BENCH_WORK", ".cache/bench"), "`dir`ectory for binaries, configs and logs")
	fs.BoolVar(&s.redis, "redis", env("BENCH_REDIS", "1") != "0", "include the Redis-backed broker (needs redis-server)")
	fs.BoolVar(&s.interleave, "interleave", env("BENCH_INTERLEAVE", "1") != "0", "load the targets in turn from one load generator, a slice each, instead of one after the other")
	slice := fs.String("slice", env("BENCH_SLICE", "500ms"), "with -interleave, how long each target is measured before the next one's turn")
	fs.BoolVar(&s.pin, "pin", env("BENCH_PIN", "1") != "0", "pin servers and load generator to different CPUs with taskset")
	fs.StringVar(&s.goCmd, "go", env("GO", "go"), "go command used to build")
	fs.StringVar(&s.compare, "compare", env("BENCH_COMPARE", ""), "another broker `binary` (say, built from an older commit) to run as target broker-compare, memory cache")
	fs.StringVar(&s.variantEnv, "variant-env", env("BENCH_VARIANT_ENV", ""), "`NAME=VALUE`: also run broker-memory with this in its environment (say GOGC=400), as target broker-memory+NAME=VALUE")
	fs.StringVar(&s.variantConfig, "variant-config", env("BENCH_VARIANT_CONFIG", ""), "`YAML`: also run broker-memory with this top-level config line added (say 'listen: {grpc_stream_workers: 0}'), as target broker-memory+YAML")
	fs.BoolVar(&s.baselineTuned, "baseline-tuned", env("BENCH_BASELINE_TUNED", "1") != "0", "also run the baseline with the broker's default stream workers and GOGC, as target "+baselineTuned)
	fs.StringVar(&s.ghz, "ghz", env("BENCH_GHZ", ""), "ghz `binary`: also drive the baseline and broker-memory with it, as a cross-check")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	def := func(normal, smoke string) string {
		if s.smoke {
			return smoke
		}
		return normal
	}
	var err error
	if s.duration, err = time.ParseDuration(cmp.Or(*dur, def("10s", "1s"))); err != nil {
		return nil, fmt.Errorf("duration: %w", err)
	}
	if s.warmup, err = time.ParseDuration(cmp.Or(*warm, def("2s", "200ms"))); err != nil {
		return nil, fmt.Errorf("warmup: %w", err)
	}
	if s.slice, err = time.ParseDuration(*slice); err != nil || s.slice <= 0 {
		return nil, fmt.Errorf("slice %q: want a positive duration", *slice)
	}
	for _, f := range strings.Split(cmp.Or(conc, def("16,64", "16")), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("concurrency %q: want positive integers", f)
		}
		s.concurrency = append(s.concurrency, n)
	}
	s.coldN = cmp.Or(s.coldN, atoi(def("300", "50")))
	s.heapKeys = cmp.Or(s.heapKeys, atoi(def("100000", "20000")))
	s.rounds = max(s.rounds, 1)
	return &s, nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// cpuSets splits the CPUs: servers get the upper half, the load generator
// the lower half. Empty strings mean no pinning.
func cpuSets(pin bool) (server, client string) {
	n := runtime.NumCPU()
	if !pin || n < 2 {
		return "", ""
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return "", ""
	}
	half := n / 2
	cpus := func(from, to int) string {
		if from == to-1 {
			return strconv.Itoa(from)
		}
		return fmt.Sprintf("%d-%d", from, to-1)
	}
	return cpus(half, n), cpus(0, half)
}

func run(ctx context.Context, s *settings) error {
	start := time.Now()
	res := &Results{Settings: s.describe(), Machine: machine()}
	res.LoadAvg[0] = loadAvg()
	fmt.Fprintf(os.Stderr, "machine: %s\n", res.Machine)

	// Heap first, before this process serves anything.
	for _, shared := range heapTargets {
		h, err := measureHeap(ctx, s.heapKeys, shared)
		if err != nil {
			return fmt.Errorf("heap per token: %w", err)
		}
		res.Heap = append(res.Heap, h)
	}

	if err := os.MkdirAll(s.workDir, 0o755); err != nil {
		return err
	}
	work, err := filepath.Abs(s.workDir)
	if err != nil {
		return err
	}
	phase("heap per token")
	if s.profileDir != "" {
		if err := os.MkdirAll(s.profileDir, 0o755); err != nil {
			return err
		}
	}
	bins, err := build(ctx, s.goCmd, work)
	if err != nil {
		return err
	}
	phase("build")
	serverCPUs, clientCPUs := cpuSets(s.pin)
	res.ServerCPUs, res.ClientCPUs = serverCPUs, clientCPUs

	emu, err := startEmulator()
	if err != nil {
		return err
	}
	defer emu.Close()

	var targets []*target
	defer func() {
		for _, t := range targets {
			t.stop()
		}
	}()
	base, err := startBaseline(ctx, bins, work, "baseline", serverCPUs, s.profileDir, 0, "")
	if err != nil {
		return err
	}
	targets = append(targets, base)
	if s.baselineTuned {
		bw, err := startBaseline(ctx, bins, work, baselineTuned, serverCPUs, s.profileDir, config.DefaultGRPCStreamWorkers,
			"GOGC="+strconv.Itoa(config.DefaultGCPercent))
		if err != nil {
			return err
		}
		targets = append(targets, bw)
	}
	mem, err := startBroker(ctx, bins.broker, work, "broker-memory", serverCPUs, s.profileDir, emu, nil, nil, "")
	if err != nil {
		return err
	}
	targets = append(targets, mem)
	if s.variantEnv != "" {
		if !strings.Contains(s.variantEnv, "=") {
			return fmt.Errorf("variant-env %q: want NAME=VALUE", s.variantEnv)
		}
		v, err := startBroker(ctx, bins.broker, work, "broker-memory+"+s.variantEnv, serverCPUs, s.profileDir, emu, nil, []string{s.variantEnv}, "")
		if err != nil {
			return err
		}
		targets = append(targets, v)
	}
	if s.variantConfig != "" {
		v, err := startBroker(ctx, bins.broker, work, "broker-memory+"+s.variantConfig, serverCPUs, s.profileDir, emu, nil, nil, s.variantConfig)
		if err != nil {
			return err
		}
		targets = append(targets, v)
	}
	if s.compare != "" {
		cmpb, err := startBroker(ctx, s.compare, work, "broker-compare", serverCPUs, s.profileDir, emu, nil, nil, "")
		if err != nil {
			return err
		}
		targets = append(targets, cmpb)
	}
	if s.redis {
		if _, err := exec.LookPath("redis-server"); err != nil {
			res.Notes = append(res.Notes, "broker-redis skipped: redis-server not installed (make deps)")
			s.redis = false
		}
	}
	if s.redis {
		rs, err := startRedis(ctx, work, clientCPUs)
		if err != nil {
			return err
		}
		defer rs.stop()
		rb, err := startBroker(ctx, bins.broker, work, "broker-redis", serverCPUs, s.profileDir, emu, rs, nil, "")
		if err != nil {
			return err
		}
		targets = append(targets, rb)
	}

	phase("start servers")
	// One call each: a wrong setup fails here, and the brokers fetch the
	// demo-cc token (the warm-up then runs on L1 hits).
	for _, t := range targets {
		if _, err := loadRun(ctx, bins, clientCPUs, []*target{t}, loadSpec{workers: 1, conns: 1, requests: 1}); err != nil {
			return fmt.Errorf("%s: first call: %w", t.name, err)
		}
	}

	for round := range s.rounds {
		for _, c := range s.concurrency {
			spec := loadSpec{workers: c, conns: s.conns, duration: s.duration, warmup: s.warmup, slice: s.slice}
			var rs []*LoadResult
			if s.interleave {
				// One loadgen takes the targets in turn, a slice each, so
				// whatever else the machine does falls on all of them
				// alike; the order rotates from round to round.
				r, err := measureLoad(ctx, bins, clientCPUs, rotate(targets, round), spec)
				if err != nil {
					return fmt.Errorf("c=%d: %w", c, err)
				}
				rs = r
			} else {
				// The baseline runs first; the brokers' order rotates from
				// round to round, because the last run of a round measured
				// consistently slower whatever it was (an order effect, not
				// the server: see BENCHMARKS.md).
				for _, t := range append([]*target{targets[0]}, rotate(targets[1:], round)...) {
					if err := ctx.Err(); err != nil {
						return err
					}
					r, err := measureLoad(ctx, bins, clientCPUs, []*target{t}, spec)
					if err != nil {
						return fmt.Errorf("%s c=%d: %w", t.name, c, err)
					}
					rs = append(rs, r...)
				}
			}
			for _, r := range rs {
				r.Round = round
				res.Load = append(res.Load, r)
				fmt.Fprintf(os.Stderr, "  %-14s c=%-3d rps %8.0f  p50 %7.0fµs  p99 %7.0fµs  errors %d\n",
					r.Target, c, r.RPS, r.P50US, r.P99US, r.Errors)
			}
		}
	}

	phase("load runs")
	if s.ghz != "" {
		for _, c := range s.concurrency {
			for _, t := range targets {
				if t.name != "baseline" && t.name != "broker-memory" {
					continue
				}
				g, err := runGhz(ctx, s.ghz, clientCPUs, t, c, s.conns, s.duration)
				if err != nil {
					return fmt.Errorf("%s c=%d: %w", t.name, c, err)
				}
				res.Ghz = append(res.Ghz, g)
			}
		}
		phase("ghz")
	}
	for _, t := range targets {
		if t.kind != kindBroker {
			continue
		}
		cm, err := measureColdMiss(ctx, t, emu, s.coldN)
		if err != nil {
			return fmt.Errorf("%s: cold miss: %w", t.name, err)
		}
		res.Cold = append(res.Cold, cm)
	}

	phase("cold miss")
	for _, t := range targets {
		t.stop() // flushes CPU profiles
	}
	phase("stop")
	res.Seconds = time.Since(start).Seconds()
	res.LoadAvg[1] = loadAvg()
	res.summarize()
	res.print(os.Stdout)
	if s.jsonOut != "" {
		if err := res.writeJSON(s.jsonOut); err != nil {
			return err
		}
	}
	if s.smoke {
		return res.smokeCheck()
	}
	return nil
}

// build compiles the three programs into work/bin.
func build(ctx context.Context, goCmd, work string) (*binaries, error) {
	b := &binaries{
		broker:   filepath.Join(work, "bin", "broker"),
		baseline: filepath.Join(work, "bin", "baseline"),
		loadgen:  filepath.Join(work, "bin", "loadgen"),
	}
	for out, pkg := range map[string]string{b.broker: "./cmd/broker", b.baseline: "./bench/baseline", b.loadgen: "./bench/loadgen"} {
		cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go build %s: %w", pkg, err)
		}
	}
	return b, nil
}

type binaries struct{ broker, baseline, loadgen string }

var phaseStart = time.Now()

// phase reports on stderr how long the step that just ended took.
func phase(name string) {
	fmt.Fprintf(os.Stderr, "  [%s: %.1fs]\n", name, time.Since(phaseStart).Seconds())
	phaseStart = time.Now()
}

var errSmoke = errors.New("smoke pass failed")

// rotate returns ts rotated left by n.
func rotate(ts []*target, n int) []*target {
	if len(ts) == 0 {
		return nil
	}
	n %= len(ts)
	return append(append([]*target{}, ts[n:]...), ts[:n]...)
}
