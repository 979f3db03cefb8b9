package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/reqlog"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// A cached GetToken through the service, the interceptor chain cmd/broker
// installs, and real gRPC on loopback, next to a do-nothing server. Run with
//
//	go test -run '^$' -bench . -benchmem ./internal/server

const benchToken = "0123456789abcdefghijABCDEFGHIJ-_0123456789a" // 43 characters, as the demo emulator's

type benchProvider struct{}

func (benchProvider) Token(_ context.Context, req providers.Request) (*providers.Token, error) {
	return &providers.Token{AccessToken: secret.New(benchToken), TokenType: "Bearer",
		Expiry: time.Now().Add(10 * time.Hour), Scopes: req.Scopes}, nil
}

// benchSetup is the broker's gRPC stack as cmd/broker assembles it for -demo:
// JSON logs at info level through reqlog, the gRPC server metrics, and auth
// admitting anonymous loopback callers.
type benchSetup struct {
	svc *server.Service
	m   *metrics.Metrics
	// chain is what cmd/broker installs: server.UnaryInterceptor, the
	// three below folded into one.
	chain []grpc.UnaryServerInterceptor
	// layers are reqlog, metrics and auth as separate interceptors, in the
	// order the fold keeps.
	layers []grpc.UnaryServerInterceptor
}

func newBenchSetup(b testing.TB) *benchSetup {
	b.Helper()
	c, err := memory.New(memory.Options{})
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(reqlog.NewHandler(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})))
	m := metrics.New()
	br, err := broker.New(broker.Options{Cache: c, Logger: log, Metrics: m, Connections: []broker.Connection{
		{Name: "demo-cc", Type: "client_credentials", Provider: benchProvider{}, Skew: time.Minute}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close(); c.Close() })
	authn, err := auth.New(auth.Config{AllowAnonymous: auth.AnonymousConfig{Enabled: true, LoopbackOnly: true,
		Policy: auth.Policy{Connections: []string{"*"}, RPCs: []string{auth.RoleOperator}}}})
	if err != nil {
		b.Fatal(err)
	}
	s := &benchSetup{
		svc:    server.New(server.Config{Broker: br, Logger: log, Metrics: m}),
		m:      m,
		chain:  []grpc.UnaryServerInterceptor{server.UnaryInterceptor(log, m.GRPC, authn)},
		layers: []grpc.UnaryServerInterceptor{reqlog.UnaryInterceptor(log), m.GRPC.UnaryServerInterceptor(), authn.UnaryInterceptor(server.RefusalStatus)},
	}
	// As cmd/broker does once the services are registered.
	gs := grpc.NewServer()
	server.RegisterService(gs, s.svc)
	m.GRPC.InitializeMetrics(gs)
	return s
}

var benchRequest = &tokenbrokerv1.GetTokenRequest{Connection: "demo-cc", Scopes: []string{"read"}}

// incomingContext is what grpc-go hands a handler for a call from a
// grpc-go client on loopback.
func incomingContext() context.Context {
	md := metadata.Pairs(":authority", "127.0.0.1:9090", "content-type", "application/grpc", "user-agent", "grpc-go/1.85.0")
	ctx := metadata.NewIncomingContext(context.Background(), md)
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50123}, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090}})
}

func BenchmarkGetToken(b *testing.B) {
	s := newBenchSetup(b)
	ctx := incomingContext()
	if _, err := s.svc.GetToken(ctx, benchRequest); err != nil {
		b.Fatal(err)
	}
	b.Run("handler", func(b *testing.B) {
		b.ReportAllocs()
		stop := cpuMeter(b)
		for b.Loop() {
			if _, err := s.svc.GetToken(ctx, benchRequest); err != nil {
				b.Fatal(err)
			}
		}
		stop()
	})
	// chain: the interceptor cmd/broker installs around the handler, as
	// grpc-go calls it, without the transport; layers: the same work as
	// three interceptors.
	info := &grpc.UnaryServerInfo{Server: s.svc, FullMethod: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName}
	handler := func(ctx context.Context, req any) (any, error) {
		return s.svc.GetToken(ctx, req.(*tokenbrokerv1.GetTokenRequest))
	}
	for _, c := range []struct {
		name  string
		chain []grpc.UnaryServerInterceptor
	}{{"chain", s.chain}, {"layers", s.layers}} {
		call := chainUnary(c.chain, info, handler)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			stop := cpuMeter(b)
			for b.Loop() {
				if _, err := call(ctx, benchRequest); err != nil {
					b.Fatal(err)
				}
			}
			stop()
		})
	}
	for i, name := range []string{"reqlog", "metrics", "auth"} {
		one := chainUnary(s.layers[i:i+1], info, handler)
		b.Run("only="+name, func(b *testing.B) {
			b.ReportAllocs()
			stop := cpuMeter(b)
			for b.Loop() {
				if _, err := one(ctx, benchRequest); err != nil {
					b.Fatal(err)
				}
			}
			stop()
		})
	}
}

func chainUnary(chain []grpc.UnaryServerInterceptor, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) grpc.UnaryHandler {
	for i := len(chain) - 1; i >= 0; i-- {
		next, ic := h, chain[i]
		h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
	}
	return h
}

// emptyService is the do-nothing baseline: a constant response of the same shape.
type emptyService struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	resp *tokenbrokerv1.GetTokenResponse
}

func (s *emptyService) GetToken(context.Context, *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	return s.resp, nil
}

// BenchmarkGRPC is the whole round trip over loopback TCP, client included,
// one call at a time: the difference between the two is what the broker adds.
func BenchmarkGRPC(b *testing.B) {
	s := newBenchSetup(b)
	servers := map[string]func() *grpc.Server{
		"baseline": func() *grpc.Server {
			gs := grpc.NewServer()
			tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, &emptyService{resp: &tokenbrokerv1.GetTokenResponse{
				AccessToken: benchToken, TokenType: "Bearer", ExpiresAt: timestamppb.Now(), Scopes: []string{"read"}}})
			return gs
		},
		"broker": func() *grpc.Server {
			gs := grpc.NewServer(grpc.MaxRecvMsgSize(64<<10), grpc.ChainUnaryInterceptor(s.chain...))
			server.RegisterService(gs, s.svc)
			s.m.GRPC.InitializeMetrics(gs)
			return gs
		},
	}
	for _, name := range []string{"baseline", "broker"} {
		b.Run(name, func(b *testing.B) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			gs := servers[name]()
			go gs.Serve(lis)
			defer gs.Stop()
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			client := tokenbrokerv1.NewTokenBrokerServiceClient(cc)
			ctx := context.Background()
			if _, err := client.GetToken(ctx, benchRequest); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			stop := cpuMeter(b)
			for b.Loop() {
				if _, err := client.GetToken(ctx, benchRequest); err != nil {
					b.Fatal(err)
				}
			}
			stop()
		})
	}
}

// cpuMeter reports the process's CPU time per operation as cpu-ns/op next
// to ns/op: on a shared machine wall time per op swings with other work,
// CPU time much less. Start it right before the loop; call the function it
// returns right after.
func cpuMeter(b *testing.B) func() {
	start := processCPU()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
