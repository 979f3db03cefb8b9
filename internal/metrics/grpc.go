package metrics

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// ServerMetrics are the gRPC server metrics of
// github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus (with
// the handling-time histogram on): the same names, help texts, types,
// labels, values and buckets, so dashboards and alerts built for it keep
// working; TestServerMetricsMatchGRPCEcosystem runs the same calls through
// both and compares what a scrape returns. The difference is the cost per
// call (issue 16): grpc-ecosystem allocates a reporter and label slices and
// hashes and looks up five label sets on every call (~1 µs). Here each
// method's series are one struct of atomic counters, found once per call
// with a map read: counting a call is a few atomic adds, and the counters
// hold no pointers, so the series (the broker's ~300: 13 methods × 17
// codes) cost the garbage collector nothing to scan. A scrape reads them into
// constant metrics. The series of a method the server did not have at
// InitializeMetrics are created when first counted, as grpc-ecosystem does.
type ServerMetrics struct {
	started, handled, received, sent, handling *prometheus.Desc
	buckets                                    []float64

	// methods maps full method names to their series. It is replaced,
	// never modified, so a call reads it without a lock: a plain map's
	// string lookup costs half of a sync.Map's.
	methods atomic.Pointer[map[string]*methodMetrics]
	mu      sync.Mutex // held while replacing methods
}

// grpcCodes is grpc-ecosystem's interceptors.AllCodes: the codes whose
// handled counters InitializeMetrics creates, in its order.
var grpcCodes = []codes.Code{
	codes.OK, codes.Canceled, codes.Unknown, codes.InvalidArgument, codes.DeadlineExceeded, codes.NotFound,
	codes.AlreadyExists, codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted,
	codes.FailedPrecondition, codes.Aborted, codes.OutOfRange, codes.Unimplemented, codes.Internal,
	codes.Unavailable, codes.DataLoss,
}

// Method types, as grpc-ecosystem labels them (grpc_type).
const (
	typeUnary        = "unary"
	typeClientStream = "client_stream"
	typeServerStream = "server_stream"
	typeBidiStream   = "bidi_stream"
)

// methodMetrics are one method's series.
type methodMetrics struct {
	typ, service, method    string
	started, received, sent atomic.Uint64
	// handled counts by code.
	handled [codes.Unauthenticated + 1]atomic.Uint64
	// The has* flags say which series exist: all of them once
	// InitializeMetrics saw the method, else each once it counted.
	hasStarted, hasReceived, hasSent atomic.Bool
	hasHandled                       [codes.Unauthenticated + 1]atomic.Bool
	handling                         histogram

	mu    sync.Mutex
	other map[codes.Code]*atomic.Uint64 // codes above 16, rare
}

// histogram is grpc_server_handling_seconds of one method: a count per
// bucket (the last one +Inf) and the sum in nanoseconds.
type histogram struct {
	bounds []float64 // the upper bounds, ServerMetrics' buckets
	counts []atomic.Uint64
	sum    atomic.Int64
	used   atomic.Bool // a series exists: observed once, or initialized
}

// NewServerMetrics returns the metrics with the handling-time histogram
// using buckets (ascending).
func NewServerMetrics(buckets []float64) *ServerMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &ServerMetrics{
		started: prometheus.NewDesc("grpc_server_started_total",
			"Total number of RPCs started on the server.", labels, nil),
		handled: prometheus.NewDesc("grpc_server_handled_total",
			"Total number of RPCs completed on the server, regardless of success or failure.",
			[]string{"grpc_type", "grpc_service", "grpc_method", "grpc_code"}, nil),
		received: prometheus.NewDesc("grpc_server_msg_received_total",
			"Total number of RPC stream messages received on the server.", labels, nil),
		sent: prometheus.NewDesc("grpc_server_msg_sent_total",
			"Total number of gRPC stream messages sent by the server.", labels, nil),
		handling: prometheus.NewDesc("grpc_server_handling_seconds",
			"Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.", labels, nil),
		buckets: slices.Clone(buckets),
	}
}

// Describe implements prometheus.Collector.
func (m *ServerMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.started, m.handled, m.received, m.sent, m.handling} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Each counter is read once; a
// histogram's count is the sum of its buckets as read, so it is always
// consistent with them, while its sum may already include, or still lack,
// a call being observed at that moment.
func (m *ServerMetrics) Collect(ch chan<- prometheus.Metric) {
	methods := m.methods.Load()
	if methods == nil {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, mm := range *methods {
		labels := []string{mm.typ, mm.service, mm.method}
		if mm.hasStarted.Load() {
			counter(m.started, mm.started.Load(), labels...)
		}
		if mm.hasReceived.Load() {
			counter(m.received, mm.received.Load(), labels...)
		}
		if mm.hasSent.Load() {
			counter(m.sent, mm.sent.Load(), labels...)
		}
		for c := range mm.handled {
			if mm.hasHandled[c].Load() {
				counter(m.handled, mm.handled[c].Load(), mm.typ, mm.service, mm.method, codes.Code(c).String())
			}
		}
		mm.mu.Lock()
		for c, n := range mm.other {
			counter(m.handled, n.Load(), mm.typ, mm.service, mm.method, c.String())
		}
		mm.mu.Unlock()
		if h := &mm.handling; h.used.Load() {
			cumulative := make(map[float64]uint64, len(m.buckets))
			var count uint64
			for i, b := range m.buckets {
				count += h.counts[i].Load()
				cumulative[b] = count
			}
			count += h.counts[len(m.buckets)].Load()
			ch <- prometheus.MustNewConstHistogram(m.handling, count, float64(h.sum.Load())/1e9, cumulative, labels...)
		}
	}
}

// InitializeMetrics creates every series of every method registered on
// server, at zero, as grpc-ecosystem's does. Call it after registering the
// services and before serving.
func (m *ServerMetrics) InitializeMetrics(server reflection.ServiceInfoProvider) {
	for service, info := range server.GetServiceInfo() {
		for _, mi := range info.Methods {
			mm := m.method("/"+service+"/"+mi.Name, methodType(mi.IsClientStream, mi.IsServerStream))
			mm.hasStarted.Store(true)
			mm.hasReceived.Store(true)
			mm.hasSent.Store(true)
			mm.handling.used.Store(true)
			for _, c := range grpcCodes {
				mm.hasHandled[c].Store(true)
			}
		}
	}
}

// method returns fullMethod's series, creating them (without any series
// yet) the first time. A method name grpc-go reports under two types (it
// does not) would get the first one's.
func (m *ServerMetrics) method(fullMethod, typ string) *methodMetrics {
	if methods := m.methods.Load(); methods != nil {
		if mm := (*methods)[fullMethod]; mm != nil {
			return mm
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	methods := map[string]*methodMetrics{}
	if old := m.methods.Load(); old != nil {
		if mm := (*old)[fullMethod]; mm != nil {
			return mm
		}
		maps.Copy(methods, *old)
	}
	service, method := splitMethod(fullMethod)
	mm := &methodMetrics{typ: typ, service: service, method: method}
	mm.handling.bounds, mm.handling.counts = m.buckets, make([]atomic.Uint64, len(m.buckets)+1)
	methods[fullMethod] = mm
	m.methods.Store(&methods)
	return mm
}

func methodType(clientStream, serverStream bool) string {
	switch {
	case !clientStream && !serverStream:
		return typeUnary
	case clientStream && !serverStream:
		return typeClientStream
	case !clientStream && serverStream:
		return typeServerStream
	}
	return typeBidiStream
}

// UnaryServerInterceptor counts unary calls: started, one message
// received, one sent when the handler succeeds, handled by code, and the
// handling time.
func (m *ServerMetrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		c := m.StartUnary(info.FullMethod)
		resp, err := handler(ctx, req)
		c.End(err, time.Since(start))
		return resp, err
	}
}

// A UnaryCall counts one unary call, for an interceptor that does more than
// count: StartUnary counts it started with its one message received, End
// counts the rest. Counting a call allocates nothing.
type UnaryCall struct{ mm *methodMetrics }

// StartUnary counts a unary call to fullMethod as started, as
// UnaryServerInterceptor does before calling the handler.
func (m *ServerMetrics) StartUnary(fullMethod string) UnaryCall {
	mm := m.method(fullMethod, typeUnary)
	mm.started.Add(1)
	mark(&mm.hasStarted)
	mm.received.Add(1)
	mark(&mm.hasReceived)
	return UnaryCall{mm}
}

// End counts the call's outcome, err as the handler (or an interceptor
// inside this one) returned it, and its handling time.
func (c UnaryCall) End(err error, took time.Duration) {
	if err == nil {
		c.mm.sent.Add(1)
		mark(&c.mm.hasSent)
	}
	c.mm.count(code(err))
	c.mm.observe(took)
}

// count counts a call handled with code c.
func (mm *methodMetrics) count(c codes.Code) {
	if int(c) < len(mm.handled) {
		mm.handled[c].Add(1)
		mark(&mm.hasHandled[c])
		return
	}
	mm.mu.Lock()
	defer mm.mu.Unlock()
	n := mm.other[c]
	if n == nil {
		if mm.other == nil {
			mm.other = map[codes.Code]*atomic.Uint64{}
		}
		n = new(atomic.Uint64)
		mm.other[c] = n
	}
	n.Add(1)
}

// observe records a handling time in the bucket Prometheus would: the
// first whose upper bound is at least took, in seconds.
func (mm *methodMetrics) observe(took time.Duration) {
	h := &mm.handling
	v := took.Seconds()
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(took))
	mark(&h.used)
}

// mark sets b, writing only the first time: a hot path's flag stays a
// read of a shared cache line.
func mark(b *atomic.Bool) {
	if !b.Load() {
		b.Store(true)
	}
}

// StreamServerInterceptor counts streaming calls: started, each message
// received and sent, handled by code, and the handling time.
func (m *ServerMetrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		mm := m.method(info.FullMethod, methodType(info.IsClientStream, info.IsServerStream))
		mm.started.Add(1)
		mark(&mm.hasStarted)
		err := handler(srv, &countedStream{ServerStream: ss, mm: mm})
		mm.count(code(err))
		mm.observe(time.Since(start))
		return err
	}
}

// countedStream counts the messages a stream receives and sends.
type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err == nil {
		s.mm.sent.Add(1)
		mark(&s.mm.hasSent)
	}
	return err
}

func (s *countedStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if err == nil {
		s.mm.received.Add(1)
		mark(&s.mm.hasReceived)
	}
	return err
}

// code is the status code grpc-ecosystem reports for err: the gRPC status,
// else the context error's, else Unknown.
func code(err error) codes.Code {
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err)
	}
	return s.Code()
}

// splitMethod splits "/service/method" as grpc-ecosystem does.
func splitMethod(fullMethod string) (service, method string) {
	fullMethod = strings.TrimPrefix(fullMethod, "/")
	if i := strings.Index(fullMethod, "/"); i >= 0 {
		return fullMethod[:i], fullMethod[i+1:]
	}
	return "unknown", "unknown"
}
