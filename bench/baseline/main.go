// Command baseline is the do-nothing gRPC server the broker is measured
// against: tokenbroker.v1.TokenBrokerService.GetToken answering a constant
// response of the broker's shape (a 43-character token as the demo
// emulator issues, "Bearer", a timestamp, one scope), with no interceptors,
// no logging and no metrics. It prints "listening ADDR" on stdout once it
// accepts connections. With -stream-workers N it serves calls from N
// long-lived goroutines (grpc.NumStreamWorkers), as the broker does by
// default (listen.grpc_stream_workers); benchrun runs it both ways.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

type service struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	resp *tokenbrokerv1.GetTokenResponse
}

func (s *service) GetToken(context.Context, *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	return s.resp, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen `address`")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile to `file` until SIGTERM")
	workers := flag.Uint("stream-workers", 0, "serve calls from `N` long-lived goroutines (grpc.NumStreamWorkers; 0: grpc-go's default, a goroutine per call)")
	flag.Parse()
	if err := run(*addr, *cpuprofile, uint32(*workers)); err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		os.Exit(1)
	}
}

func run(addr, cpuprofile string, workers uint32) error {
	tok := make([]byte, 32)
	_, _ = rand.Read(tok)
	svc := &service{resp: &tokenbrokerv1.GetTokenResponse{
		AccessToken: base64.RawURLEncoding.EncodeToString(tok),
		TokenType:   "Bearer",
		ExpiresAt:   timestamppb.New(time.Now().Add(10 * time.Hour)),
		Scopes:      []string{"read"},
	}}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	var opts []grpc.ServerOption
	if workers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(workers))
	}
	gs := grpc.NewServer(opts...)
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, svc)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); gs.Stop() }()
	fmt.Println("listening", lis.Addr())
	return gs.Serve(lis)
}
