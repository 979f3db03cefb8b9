// Command loadgen drives one unary gRPC method with a fixed request from N
// workers over K connections, for a fixed duration or request count, and
// prints one JSON line: rps, latency quantiles, max, errors.
//
// It is lean on purpose (the request is encoded once, responses are not
// decoded after each worker's first, latencies go into a per-worker
// log-linear histogram that does not allocate), so on a small machine it
// leaves the CPU to the server under test; ghz uses about two thirds of a
// 2-core machine by itself.
//
//	loadgen -addr 127.0.0.1:9090 -c 64 -duration 10s
//	loadgen -addr 127.0.0.1:9090 -c 1 -n 500 -force-refresh
//
// Given several comma-separated addresses (and as many labels and server
// pids), it interleaves them: the same workers load one target at a time
// for -slice, after -settle unmeasured, cycling through the targets until
// each has had -duration measured, and prints one JSON line per target.
// Whatever else the machine does then falls on every target alike, where
// back-to-back runs of 10 s each measured each target in a different
// moment (BENCHMARKS.md, issue 16).
//
//	loadgen -addr 127.0.0.1:9090,127.0.0.1:9091 -label empty,broker -c 16 -duration 10s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/bench/internal/hist"
	"github.com/tokenbroker/tokenbroker/bench/internal/loadresult"
)

// GetTokenMethod is the default method.
const GetTokenMethod = "/tokenbroker.v1.TokenBrokerService/GetToken"

type options struct {
	addrs, labels      []string
	serverPIDs         []int
	method             string
	connection, scopes string
	forceRefresh       bool
	workers, conns     int
	duration, warmup   time.Duration
	slice, settle      time.Duration
	requests           uint64
	timeout            time.Duration
	gcPercent          int
	authorization      string
	checkFirstResponse bool
}

func main() {
	var o options
	addrs := flag.String("addr", "", "server `host:port` (required); several, comma-separated, are interleaved")
	flag.StringVar(&o.method, "method", GetTokenMethod, "full method name")
	labels := flag.String("label", "", "label copied into the result (comma-separated, one per -addr)")
	flag.StringVar(&o.connection, "connection", "demo-cc", "GetTokenRequest.connection")
	flag.StringVar(&o.scopes, "scopes", "read", "GetTokenRequest.scopes, comma-separated")
	flag.BoolVar(&o.forceRefresh, "force-refresh", false, "set GetTokenRequest.force_refresh")
	flag.IntVar(&o.workers, "c", 16, "concurrent workers (requests in flight)")
	flag.IntVar(&o.conns, "conns", 4, "gRPC connections the workers share")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured duration (ignored with -n)")
	flag.Uint64Var(&o.requests, "n", 0, "measured request count (0: run for -duration)")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "load before measuring, not counted (each target's, when interleaved)")
	flag.DurationVar(&o.slice, "slice", 500*time.Millisecond, "when interleaving, measure one target this long before moving on")
	flag.DurationVar(&o.settle, "settle", 100*time.Millisecond, "when interleaving, load a target this long unmeasured before each slice")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-call deadline")
	flag.IntVar(&o.gcPercent, "gogc", 400, "GOGC for this process (less GC, more CPU left for the server)")
	flag.StringVar(&o.authorization, "authorization", "", "authorization metadata, e.g. \"Bearer KEY\"")
	flag.BoolVar(&o.checkFirstResponse, "check", true, "decode each worker's first response and require an access_token")
	pids := flag.String("server-pid", "", "also report the CPU time this local process used while measuring (comma-separated, one per -addr)")
	flag.Parse()
	if err := o.split(*addrs, *labels, *pids); err != nil || o.workers < 1 || o.conns < 1 || o.slice <= 0 || o.settle < 0 {
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
		}
		flag.Usage()
		os.Exit(2)
	}
	debug.SetGCPercent(o.gcPercent)
	res, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, r := range res {
		_ = enc.Encode(r)
	}
}

// split reads the comma-separated -addr, -label and -server-pid lists.
func (o *options) split(addrs, labels, pids string) error {
	if addrs == "" {
		return errors.New("-addr is required")
	}
	o.addrs = strings.Split(addrs, ",")
	n := len(o.addrs)
	o.labels = make([]string, n)
	if labels != "" {
		l := strings.Split(labels, ",")
		if len(l) != n {
			return fmt.Errorf("-label: %d labels for %d addresses", len(l), n)
		}
		copy(o.labels, l)
	}
	o.serverPIDs = make([]int, n)
	if pids != "" {
		p := strings.Split(pids, ",")
		if len(p) != n {
			return fmt.Errorf("-server-pid: %d pids for %d addresses", len(p), n)
		}
		for i, f := range p {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return fmt.Errorf("-server-pid %q: %w", f, err)
			}
			o.serverPIDs[i] = pid
		}
	}
	if n > 1 && o.requests > 0 {
		return errors.New("-n takes one -addr; interleaved runs are timed (-duration)")
	}
	return nil
}

// rawCodec sends pre-encoded bytes and skips decoding responses, so both
// the baseline and the broker cost the client the same and as little as
// possible. A worker's first response is decoded and checked.
type rawCodec struct{}

type rawRequest struct{ buf mem.BufferSlice }

type rawResponse struct {
	n     int
	check bool
	err   error
}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(*rawRequest)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return r.buf, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*rawResponse)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	r.n = data.Len()
	if r.check {
		var m tokenbrokerv1.GetTokenResponse
		if err := proto.Unmarshal(data.Materialize(), &m); err != nil {
			r.err = err
		} else if m.GetAccessToken() == "" || m.GetExpiresAt() == nil {
			r.err = errors.New("response has no access_token or expires_at")
		}
	}
	return nil
}

// The workers read what to do from one atomic word: the target they load
// (the high bits) and the phase (the low byte), so a switch is seen whole.
const (
	phaseWarmup int64 = iota
	phaseMeasure
	phaseStop
)

func state(target int, phase int64) int64 { return int64(target)<<8 | phase }

// perTarget is one worker's measurements of one target.
type perTarget struct {
	h    hist.Histogram
	errs map[string]int
}

type worker struct {
	t      []perTarget
	failed error
}

// window is the measured time of one target, and the CPU the load
// generator and the target's server spent in it.
type window struct {
	elapsed, cpu, server time.Duration
}

func run(o options) ([]*loadresult.Result, error) {
	req := &tokenbrokerv1.GetTokenRequest{Connection: o.connection, ForceRefresh: o.forceRefresh}
	if o.scopes != "" {
		req.Scopes = strings.Split(o.scopes, ",")
	}
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	copts := []grpc.CallOption{grpc.ForceCodecV2(rawCodec{})}
	conns := make([][]*grpc.ClientConn, len(o.addrs)) // target → its connections
	for t, addr := range o.addrs {
		for range o.conns {
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(copts...))
			if err != nil {
				return nil, err
			}
			defer cc.Close()
			cc.Connect()
			conns[t] = append(conns[t], cc)
		}
	}
	baseCtx := context.Background()
	if o.authorization != "" {
		baseCtx = metadata.AppendToOutgoingContext(baseCtx, "authorization", o.authorization)
	}

	var st atomic.Int64       // state(target, phase)
	var tickets atomic.Uint64 // requests claimed in the measured phase (with -n)
	workers := make([]*worker, o.workers)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{t: make([]perTarget, len(o.addrs))}
		for t := range w.t {
			w.t[t].errs = map[string]int{}
		}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := &rawRequest{buf: mem.BufferSlice{mem.SliceBuffer(body)}}
			checked := make([]bool, len(o.addrs))
			out := &rawResponse{}
			for {
				s := st.Load()
				p, t := s&0xff, int(s>>8)
				if p == phaseStop {
					return
				}
				if p == phaseMeasure && o.requests > 0 && tickets.Add(1) > o.requests {
					st.Store(state(0, phaseStop))
					return
				}
				out.check = o.checkFirstResponse && !checked[t]
				ctx, cancel := context.WithTimeout(baseCtx, o.timeout)
				start := time.Now()
				err := conns[t][i%o.conns].Invoke(ctx, o.method, in, out)
				d := time.Since(start)
				cancel()
				if err == nil && out.err != nil {
					w.failed = fmt.Errorf("%s: %w", o.addrs[t], out.err)
					st.Store(state(0, phaseStop))
					return
				}
				if err == nil {
					checked[t] = true
				}
				if p != phaseMeasure {
					continue
				}
				if err != nil {
					w.t[t].errs[status.Code(err).String()]++
					continue
				}
				w.t[t].h.Record(int64(d))
			}
		}()
	}

	win := make([]window, len(o.addrs))
	// measure loads target t measured for d (or, with -n, until the
	// requests are done) and adds the window to win[t].
	measure := func(t int, d time.Duration) {
		cpu0, srv0 := cpuTime(), procCPU(o.serverPIDs[t])
		start := time.Now()
		st.Store(state(t, phaseMeasure))
		if o.requests > 0 {
			wg.Wait()
		} else {
			time.Sleep(d)
			st.Store(state(t, phaseWarmup))
		}
		win[t].elapsed += time.Since(start)
		win[t].cpu += cpuTime() - cpu0
		win[t].server += procCPU(o.serverPIDs[t]) - srv0
	}
	if len(o.addrs) == 1 {
		time.Sleep(o.warmup)
		measure(0, o.duration)
	} else {
		for t := range o.addrs {
			st.Store(state(t, phaseWarmup))
			time.Sleep(o.warmup)
		}
		for left := o.duration; left > 0 && st.Load()&0xff != phaseStop; left -= o.slice {
			for t := range o.addrs {
				st.Store(state(t, phaseWarmup))
				time.Sleep(o.settle)
				measure(t, min(o.slice, left))
			}
		}
	}
	st.Store(state(0, phaseStop))
	wg.Wait()

	var out []*loadresult.Result
	for t, addr := range o.addrs {
		var h hist.Histogram
		res := &loadresult.Result{Label: o.labels[t], Addr: addr, Method: o.method, Concurrency: o.workers, Conns: o.conns,
			Seconds: win[t].elapsed.Seconds(), CPUSeconds: win[t].cpu.Seconds(), ServerCPUSeconds: win[t].server.Seconds(),
			ErrorCodes: map[string]int{}}
		for _, w := range workers {
			if w.failed != nil {
				return nil, fmt.Errorf("bad response: %w", w.failed)
			}
			h.Merge(&w.t[t].h)
			for c, n := range w.t[t].errs {
				res.ErrorCodes[c] += n
				res.Errors += uint64(n)
			}
		}
		if len(res.ErrorCodes) == 0 {
			res.ErrorCodes = nil
		}
		us := func(ns int64) float64 { return float64(ns) / 1e3 }
		res.Requests = h.Count()
		res.RPS = float64(h.Count()) / win[t].elapsed.Seconds()
		res.MeanUS = h.Mean() / 1e3
		res.P50US, res.P90US, res.P99US = us(h.Quantile(0.5)), us(h.Quantile(0.9)), us(h.Quantile(0.99))
		res.P999US, res.MaxUS = us(h.Quantile(0.999)), us(h.Max())
		out = append(out, res)
	}
	return out, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the user+system CPU time of process pid from /proc (0 when
// pid is 0 or unreadable).
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:] // the command name may contain spaces
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // utime: field 14 of the line
	st, _ := strconv.ParseInt(f[12], 10, 64) // stime: field 15
	const userHZ = 100
	return time.Duration(ut+st) * time.Second / userHZ
}
