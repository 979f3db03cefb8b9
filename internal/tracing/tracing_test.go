package tracing

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// collector is a fake OTLP/gRPC trace collector that records span names.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	names []string
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.names = append(c.names, s.GetName())
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func TestSpansReachTheCollector(t *testing.T) {
	col := &collector{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cs := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(cs, col)
	go cs.Serve(lis)
	defer cs.Stop()

	tr, err := Start(context.Background(), Config{Enabled: true, OTLPEndpoint: lis.Addr().String(), Insecure: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	// A traced gRPC server.
	slis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(tr.ServerOptions()...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(slis)
	defer s.Stop()
	cc, err := grpc.NewClient(slis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	// A traced upstream request.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	resp, err := (&http.Client{Transport: tr.Transport(http.DefaultTransport)}).Post(up.URL+"/o/token/", "application/x-www-form-urlencoded", strings.NewReader("grant_type=client_credentials"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// The server span ends after the answer is sent: wait for the handler
	// to finish before flushing.
	s.GracefulStop()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	got := strings.Join(col.names, ",")
	if !strings.Contains(got, "grpc.health.v1.Health/Check") || !strings.Contains(got, "POST") {
		t.Errorf("collector received spans %q; want the gRPC call and the upstream POST", got)
	}
}

func TestOffAddsNothing(t *testing.T) {
	tr, err := Start(context.Background(), Config{}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.ServerOptions()) != 0 || tr.Transport(http.DefaultTransport) != http.DefaultTransport {
		t.Errorf("tracing off still wraps the server or transport")
	}
}

func TestValidate(t *testing.T) {
	bad := 2.0
	err := Config{Enabled: true, OTLPEndpoint: "nohost", SampleRatio: &bad}.Validate()
	if err == nil || !strings.Contains(err.Error(), "otlp_endpoint") || !strings.Contains(err.Error(), "sample_ratio") {
		t.Errorf("Validate() = %v; want both problems", err)
	}
}
