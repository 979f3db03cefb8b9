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
	addr, method, label string
	connection, scopes  string
	forceRefresh        bool
	workers, conns      int
	duration, warmup    time.Duration
	requests            uint64
	timeout             time.Duration
	gcPercent           int
	authorization       string
	checkFirstResponse  bool
	serverPID           int
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "", "server `host:port` (required)")
	flag.StringVar(&o.method, "method", GetTokenMethod, "full method name")
	flag.StringVar(&o.label, "label", "", "label copied into the result")
	flag.StringVar(&o.connection, "connection", "demo-cc", "GetTokenRequest.connection")
	flag.StringVar(&o.scopes, "scopes", "read", "GetTokenRequest.scopes, comma-separated")
	flag.BoolVar(&o.forceRefresh, "force-refresh", false, "set GetTokenRequest.force_refresh")
	flag.IntVar(&o.workers, "c", 16, "concurrent workers (requests in flight)")
	flag.IntVar(&o.conns, "conns", 4, "gRPC connections the workers share")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured duration (ignored with -n)")
	flag.Uint64Var(&o.requests, "n", 0, "measured request count (0: run for -duration)")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "load before measuring, not counted")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-call deadline")
	flag.IntVar(&o.gcPercent, "gogc", 400, "GOGC for this process (less GC, more CPU left for the server)")
	flag.StringVar(&o.authorization, "authorization", "", "authorization metadata, e.g. \"Bearer KEY\"")
	flag.BoolVar(&o.checkFirstResponse, "check", true, "decode each worker's first response and require an access_token")
	flag.IntVar(&o.serverPID, "server-pid", 0, "also report the CPU time this local process used while measuring")
	flag.Parse()
	if o.addr == "" || o.workers < 1 || o.conns < 1 {
		flag.Usage()
		os.Exit(2)
	}
	debug.SetGCPercent(o.gcPercent)
	res, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
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

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

type worker struct {
	h      hist.Histogram
	n      uint64
	errs   map[string]int
	failed error
}

func run(o options) (*loadresult.Result, error) {
	req := &tokenbrokerv1.GetTokenRequest{Connection: o.connection, ForceRefresh: o.forceRefresh}
	if o.scopes != "" {
		req.Scopes = strings.Split(o.scopes, ",")
	}
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	copts := []grpc.CallOption{grpc.ForceCodecV2(rawCodec{})}
	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		cc, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(copts...))
		if err != nil {
			return nil, err
		}
		defer cc.Close()
		cc.Connect()
		conns[i] = cc
	}
	baseCtx := context.Background()
	if o.authorization != "" {
		baseCtx = metadata.AppendToOutgoingContext(baseCtx, "authorization", o.authorization)
	}

	var phase atomic.Int32
	var tickets atomic.Uint64 // requests claimed in the measured phase (with -n)
	workers := make([]*worker, o.workers)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{errs: map[string]int{}}
		workers[i] = w
		cc := conns[i%len(conns)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := &rawRequest{buf: mem.BufferSlice{mem.SliceBuffer(body)}}
			out := &rawResponse{check: o.checkFirstResponse}
			for {
				p := phase.Load()
				if p == phaseStop {
					return
				}
				if p == phaseMeasure && o.requests > 0 && tickets.Add(1) > o.requests {
					phase.Store(phaseStop)
					return
				}
				ctx, cancel := context.WithTimeout(baseCtx, o.timeout)
				start := time.Now()
				err := cc.Invoke(ctx, o.method, in, out)
				d := time.Since(start)
				cancel()
				if err == nil && out.err != nil {
					w.failed = out.err
					phase.Store(phaseStop)
					return
				}
				out.check = false
				if p != phaseMeasure {
					continue
				}
				if err != nil {
					w.errs[status.Code(err).String()]++
					continue
				}
				w.h.Record(int64(d))
			}
		}()
	}
	time.Sleep(o.warmup)
	cpu0, srv0 := cpuTime(), procCPU(o.serverPID)
	start := time.Now()
	phase.Store(phaseMeasure)
	if o.requests == 0 {
		time.Sleep(o.duration)
		phase.Store(phaseStop)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu, srv := cpuTime()-cpu0, procCPU(o.serverPID)-srv0

	var h hist.Histogram
	res := &loadresult.Result{Label: o.label, Addr: o.addr, Method: o.method, Concurrency: o.workers, Conns: o.conns,
		Seconds: elapsed.Seconds(), CPUSeconds: cpu.Seconds(), ServerCPUSeconds: srv.Seconds(), ErrorCodes: map[string]int{}}
	for _, w := range workers {
		if w.failed != nil {
			return nil, fmt.Errorf("bad response: %w", w.failed)
		}
		h.Merge(&w.h)
		for c, n := range w.errs {
			res.ErrorCodes[c] += n
			res.Errors += uint64(n)
		}
	}
	if len(res.ErrorCodes) == 0 {
		res.ErrorCodes = nil
	}
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	res.Requests = h.Count()
	res.RPS = float64(h.Count()) / elapsed.Seconds()
	res.MeanUS = h.Mean() / 1e3
	res.P50US, res.P90US, res.P99US = us(h.Quantile(0.5)), us(h.Quantile(0.9)), us(h.Quantile(0.99))
	res.P999US, res.MaxUS = us(h.Quantile(0.999)), us(h.Max())
	return res, nil
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
