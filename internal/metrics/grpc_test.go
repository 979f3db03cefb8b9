package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"testing"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

// TestServerMetricsMatchGRPCEcosystem runs the same calls through
// ServerMetrics and through grpc-ecosystem's ServerMetrics (configured as
// this package used to) and requires the same exposition, timings aside.
func TestServerMetricsMatchGRPCEcosystem(t *testing.T) {
	gs := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, tokenbrokerv1.UnimplementedTokenBrokerServiceServer{})
	healthpb.RegisterHealthServer(gs, health.NewServer())

	ours := NewServerMetrics(GRPCHandlingBuckets)
	theirs := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(GRPCHandlingBuckets)))
	type impl struct {
		c      prometheus.Collector
		init   func()
		unary  grpc.UnaryServerInterceptor
		stream grpc.StreamServerInterceptor
	}
	impls := []impl{
		{ours, func() { ours.InitializeMetrics(gs) }, ours.UnaryServerInterceptor(), ours.StreamServerInterceptor()},
		{theirs, func() { theirs.InitializeMetrics(gs) }, theirs.UnaryServerInterceptor(), theirs.StreamServerInterceptor()},
	}
	var out [2]string
	for i, im := range impls {
		reg := prometheus.NewRegistry()
		reg.MustRegister(im.c)
		im.init()
		ctx := context.Background()
		unaryErrs := []error{nil, status.Error(codes.InvalidArgument, "x"), context.Canceled, context.DeadlineExceeded,
			fmt.Errorf("wrapped: %w", status.Error(codes.NotFound, "y")), errors.New("plain"),
			status.Error(codes.Code(42), "custom code"), nil}
		for _, method := range []string{tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName,
			tokenbrokerv1.TokenBrokerService_ListConnections_FullMethodName, "/x.Other/Do", "no-slash"} {
			for _, want := range unaryErrs {
				info := &grpc.UnaryServerInfo{FullMethod: method}
				_, err := im.unary(ctx, "req", info, func(context.Context, any) (any, error) { return "resp", want })
				if err != want {
					t.Fatalf("interceptor changed the error %v into %v", want, err)
				}
			}
		}
		streams := []struct {
			info *grpc.StreamServerInfo
			run  func(ss grpc.ServerStream) error
		}{
			{&grpc.StreamServerInfo{FullMethod: healthpb.Health_Watch_FullMethodName, IsServerStream: true}, func(ss grpc.ServerStream) error {
				_ = ss.RecvMsg(nil)
				_ = ss.SendMsg("a")
				_ = ss.SendMsg("b")
				_ = ss.SendMsg(errSend)
				return nil
			}},
			{&grpc.StreamServerInfo{FullMethod: healthpb.Health_Watch_FullMethodName, IsServerStream: true}, func(ss grpc.ServerStream) error {
				_ = ss.RecvMsg(nil)
				return status.Error(codes.Unavailable, "going away")
			}},
			{&grpc.StreamServerInfo{FullMethod: "/x.Other/Chat", IsClientStream: true, IsServerStream: true}, func(ss grpc.ServerStream) error {
				_ = ss.RecvMsg(nil)
				_ = ss.RecvMsg(errRecv)
				_ = ss.SendMsg("c")
				return io.ErrUnexpectedEOF
			}},
			{&grpc.StreamServerInfo{FullMethod: "/x.Other/Upload", IsClientStream: true}, func(ss grpc.ServerStream) error {
				_ = ss.RecvMsg(nil)
				return nil
			}},
		}
		for _, s := range streams {
			_ = im.stream(nil, fakeStream{}, s.info, func(_ any, ss grpc.ServerStream) error { return s.run(ss) })
		}
		out[i] = exposition(t, reg)
	}
	if out[0] != out[1] {
		t.Errorf("exposition differs\n--- ours:\n%s\n--- grpc-ecosystem:\n%s", out[0], out[1])
	}
}

var (
	errSend = errors.New("send fails")
	errRecv = errors.New("recv fails")
)

type fakeStream struct{}

func (fakeStream) SetHeader(metadata.MD) error  { return nil }
func (fakeStream) SendHeader(metadata.MD) error { return nil }
func (fakeStream) SetTrailer(metadata.MD)       {}
func (fakeStream) Context() context.Context     { return context.Background() }
func (fakeStream) SendMsg(m any) error {
	if m == errSend {
		return errSend
	}
	return nil
}
func (fakeStream) RecvMsg(m any) error {
	if m == errRecv {
		return errRecv
	}
	return nil
}

// exposition is reg's metric families as text, with histogram timings
// (sums and bucket counts) removed.
func exposition(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var s string
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			if h := m.Histogram; h != nil {
				h.SampleSum = nil
				h.CreatedTimestamp = nil
				for _, b := range h.Bucket {
					b.CumulativeCount = nil
				}
			}
			if c := m.Counter; c != nil {
				c.CreatedTimestamp = nil
			}
		}
		s += prototext.Format(mf) + "\n"
	}
	if s == "" {
		t.Fatal("no metrics")
	}
	return s
}

// TestUnaryCallAllocatesNothing: a call to an initialized method costs the
// metrics no allocation.
func TestUnaryCallAllocatesNothing(t *testing.T) {
	gs := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, tokenbrokerv1.UnimplementedTokenBrokerServiceServer{})
	m := NewServerMetrics(GRPCHandlingBuckets)
	m.InitializeMetrics(gs)
	ic := m.UnaryServerInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	if n := testing.AllocsPerRun(100, func() { _, _ = ic(context.Background(), nil, info, handler) }); n != 0 {
		t.Errorf("unary interceptor allocates %v times per call; want 0", n)
	}
}

// TestHandlingHistogramMatchesPrometheus: handling times land in the
// buckets, count and sum a Prometheus histogram with the same buckets
// gives them (the exposition test leaves timings out), bounds included.
func TestHandlingHistogramMatchesPrometheus(t *testing.T) {
	gs := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, tokenbrokerv1.UnimplementedTokenBrokerServiceServer{})
	ours := NewServerMetrics(GRPCHandlingBuckets)
	ours.InitializeMetrics(gs)
	theirs := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h", Buckets: GRPCHandlingBuckets})
	var took []time.Duration
	for _, b := range GRPCHandlingBuckets {
		d := time.Duration(b * float64(time.Second))
		took = append(took, d-1, d, d+1)
	}
	took = append(took, 0, 17*time.Second, 3*time.Hour, 1234567*time.Nanosecond)
	for _, d := range took {
		ours.StartUnary(tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName).End(nil, d)
		theirs.Observe(d.Seconds())
	}
	var want dto.Metric
	if err := theirs.Write(&want); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(ours)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got *dto.Histogram
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			if mf.GetName() == "grpc_server_handling_seconds" && labelValue(m, "grpc_method") == "GetToken" {
				got = m.Histogram
			}
		}
	}
	if got == nil {
		t.Fatal("no grpc_server_handling_seconds series for GetToken")
	}
	if got.GetSampleCount() != want.Histogram.GetSampleCount() || math.Abs(got.GetSampleSum()-want.Histogram.GetSampleSum()) > 1e-6 {
		t.Errorf("count %d, sum %v; want %d, %v", got.GetSampleCount(), got.GetSampleSum(), want.Histogram.GetSampleCount(), want.Histogram.GetSampleSum())
	}
	if len(got.Bucket) != len(want.Histogram.Bucket) {
		t.Fatalf("%d buckets; want %d", len(got.Bucket), len(want.Histogram.Bucket))
	}
	for i, b := range got.Bucket {
		w := want.Histogram.Bucket[i]
		if b.GetUpperBound() != w.GetUpperBound() || b.GetCumulativeCount() != w.GetCumulativeCount() {
			t.Errorf("bucket le=%v: %d; want le=%v: %d", b.GetUpperBound(), b.GetCumulativeCount(), w.GetUpperBound(), w.GetCumulativeCount())
		}
	}
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
