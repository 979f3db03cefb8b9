package main

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

// countingServer answers GetToken with a token (or, when empty, without
// one) and counts the calls.
type countingServer struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	calls atomic.Int64
	token string
}

func (s *countingServer) GetToken(context.Context, *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	s.calls.Add(1)
	return &tokenbrokerv1.GetTokenResponse{AccessToken: s.token, ExpiresAt: timestamppb.New(time.Unix(2e9, 0))}, nil
}

func serve(t *testing.T, s *countingServer) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, s)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	return l.Addr().String()
}

func testOptions(addrs ...string) options {
	return options{addrs: addrs, labels: make([]string, len(addrs)), serverPIDs: make([]int, len(addrs)),
		method: GetTokenMethod, connection: "demo-cc", workers: 4, conns: 2, duration: 300 * time.Millisecond,
		warmup: 20 * time.Millisecond, slice: 50 * time.Millisecond, settle: 10 * time.Millisecond,
		timeout: 5 * time.Second, checkFirstResponse: true}
}

// TestInterleaved loads two servers in turn: one result each, in the order
// given, each counting only calls its own server answered.
func TestInterleaved(t *testing.T) {
	a, b := &countingServer{token: "a"}, &countingServer{token: "b"}
	o := testOptions(serve(t, a), serve(t, b))
	o.labels = []string{"first", "second"}
	res, err := run(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 {
		t.Fatalf("%d results; want 2", len(res))
	}
	for i, s := range []*countingServer{a, b} {
		r := res[i]
		if r.Label != o.labels[i] || r.Addr != o.addrs[i] {
			t.Errorf("result %d is %s at %s; want %s at %s", i, r.Label, r.Addr, o.labels[i], o.addrs[i])
		}
		if r.Requests == 0 || r.Errors != 0 || r.RPS <= 0 {
			t.Errorf("%s: %d requests, %d errors, %v rps; want some, none, > 0", r.Label, r.Requests, r.Errors, r.RPS)
		}
		if got := s.calls.Load(); int64(r.Requests) > got {
			t.Errorf("%s: %d measured calls but the server answered %d", r.Label, r.Requests, got)
		}
	}
}

// TestInterleavedChecksEveryTarget: a response without a token from any
// target fails the run, not only from the first.
func TestInterleavedChecksEveryTarget(t *testing.T) {
	o := testOptions(serve(t, &countingServer{token: "a"}), serve(t, &countingServer{}))
	_, err := run(o)
	if err == nil || !strings.Contains(err.Error(), o.addrs[1]) || !strings.Contains(err.Error(), "no access_token") {
		t.Fatalf("run: %v; want the second server's response refused", err)
	}
}

func TestSplit(t *testing.T) {
	var o options
	if err := o.split("h:1,h:2", "a,b", "10,11"); err != nil || o.serverPIDs[1] != 11 || o.labels[0] != "a" {
		t.Fatalf("split: %v, %+v", err, o)
	}
	for _, c := range []struct{ addrs, labels, pids, want string }{
		{"", "", "", "-addr is required"},
		{"h:1,h:2", "a", "", "1 labels for 2 addresses"},
		{"h:1,h:2", "", "1", "1 pids for 2 addresses"},
		{"h:1", "", "x", `-server-pid "x"`},
	} {
		var o options
		if err := o.split(c.addrs, c.labels, c.pids); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("split(%q, %q, %q): %v; want %q", c.addrs, c.labels, c.pids, err, c.want)
		}
	}
	o = options{requests: 5}
	if err := o.split("h:1,h:2", "", ""); err == nil {
		t.Error("-n with two addresses accepted")
	}
}
