package brokerclient_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/api/brokerclient"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

// fakeBroker caches one token, like the broker does for a (connection,
// scopes) pair, and mints "tok-1", "tok-2", … when it has none. Tokens
// expire lifetime after minting, measured on the real clock: oauth2's reuse
// reads time.Now, so the tests pick lifetimes far on either side of the skew
// instead of moving a clock.
type fakeBroker struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer

	mu          sync.Mutex
	lifetime    time.Duration
	getErr      error // returned by GetToken when set
	invErr      error // returned by InvalidateToken when set
	keep        bool  // InvalidateToken succeeds but keeps the token
	minted      int
	cached      string
	cachedUntil time.Time
	gets        []*tokenbrokerv1.GetTokenRequest
	invalidates []*tokenbrokerv1.InvalidateTokenRequest
}

func (f *fakeBroker) GetToken(_ context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets = append(f.gets, req)
	if f.getErr != nil {
		return nil, f.getErr
	}
	if f.cached == "" || req.GetForceRefresh() {
		f.minted++
		f.cached = fmt.Sprintf("tok-%d", f.minted)
		f.cachedUntil = time.Now().Add(f.lifetime)
	}
	return &tokenbrokerv1.GetTokenResponse{
		AccessToken: f.cached,
		TokenType:   "bearer",
		ExpiresAt:   timestamppb.New(f.cachedUntil),
		Scopes:      req.GetScopes(),
	}, nil
}

func (f *fakeBroker) InvalidateToken(_ context.Context, req *tokenbrokerv1.InvalidateTokenRequest) (*tokenbrokerv1.InvalidateTokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.invalidates = append(f.invalidates, req)
	if f.invErr != nil {
		return nil, f.invErr
	}
	if f.keep || f.cached == "" || req.GetAccessToken() != "" && req.GetAccessToken() != f.cached {
		return &tokenbrokerv1.InvalidateTokenResponse{}, nil
	}
	f.cached = ""
	return &tokenbrokerv1.InvalidateTokenResponse{Invalidated: true}, nil
}

func (f *fakeBroker) getCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.gets)
}

func (f *fakeBroker) get(i int) *tokenbrokerv1.GetTokenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets[i]
}

func (f *fakeBroker) invalidate(i int) *tokenbrokerv1.InvalidateTokenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.invalidates[i]
}

func (f *fakeBroker) setInvErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.invErr = err
}

// invalidated returns the access tokens of the InvalidateToken calls so far.
func (f *fakeBroker) invalidated() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var toks []string
	for _, r := range f.invalidates {
		toks = append(toks, r.GetAccessToken())
	}
	return toks
}

// startFake serves f on a loopback port and returns a client connection to it.
func startFake(t *testing.T, f *fakeBroker) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestTokenSourceReusesUntilSkew(t *testing.T) {
	tests := []struct {
		name     string
		skew     time.Duration
		lifetime time.Duration
		wantGets int // after three Token calls
	}{
		{name: "default skew, long-lived token", lifetime: time.Hour, wantGets: 1},
		{name: "expired token", lifetime: -time.Minute, wantGets: 3},
		{name: "default skew beats oauth2's 10s", lifetime: 20 * time.Second, wantGets: 3},
		{name: "skew below lifetime", skew: time.Minute, lifetime: 5 * time.Minute, wantGets: 1},
		{name: "skew above lifetime", skew: 10 * time.Minute, lifetime: 5 * time.Minute, wantGets: 3},
		{name: "negative skew is the default", skew: -time.Hour, lifetime: 20 * time.Second, wantGets: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeBroker{lifetime: tt.lifetime}
			cc := startFake(t, f)
			cfg := &brokerclient.Config{Connection: "pay", Scopes: []string{"read", "write"}, Skew: tt.skew}
			ts := cfg.TokenSource(context.Background(), cc)
			var last *oauth2.Token
			for i := range 3 {
				tok, err := ts.Token()
				if err != nil {
					t.Fatalf("Token() #%d error = %v", i+1, err)
				}
				last = tok
			}
			if got := f.getCount(); got != tt.wantGets {
				t.Errorf("GetToken calls after three Token() = %d; want %d", got, tt.wantGets)
			}
			f.mu.Lock()
			wantExpiry := f.cachedUntil
			f.mu.Unlock()
			if !last.Expiry.Equal(wantExpiry) {
				t.Errorf("Token().Expiry = %v; want the broker's expires_at %v", last.Expiry, wantExpiry)
			}
		})
	}
}

func TestTokenSourceToken(t *testing.T) {
	f := &fakeBroker{lifetime: time.Hour}
	cc := startFake(t, f)
	cfg := &brokerclient.Config{Connection: "pay", Scopes: []string{"read", "write"}, MinTTL: 5 * time.Minute}
	ts := cfg.TokenSource(context.Background(), cc)
	cfg.Scopes[0] = "changed-after" // the source copied the config
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Token() error = %v", err)
	}
	if tok.AccessToken != "tok-1" {
		t.Errorf("Token().AccessToken is not the broker's token")
	}
	if got, want := tok.Type(), "Bearer"; got != want {
		t.Errorf("Token().Type() = %q; want %q", got, want)
	}
	if got, want := tok.Extra("scope"), "read write"; got != want {
		t.Errorf(`Token().Extra("scope") = %v; want %q`, got, want)
	}
	if !tok.Valid() {
		t.Errorf("Token().Valid() = false for a token valid for an hour")
	}
	req := f.get(0)
	if req.GetConnection() != "pay" || !cmp.Equal(req.GetScopes(), []string{"read", "write"}) ||
		req.GetMinTtl().AsDuration() != 5*time.Minute || req.GetForceRefresh() {
		t.Errorf("GetToken request = {%q %q %v %v}; want {pay [read write] 5m0s false}",
			req.GetConnection(), req.GetScopes(), req.GetMinTtl().AsDuration(), req.GetForceRefresh())
	}
}

func TestTokenSourceShortForm(t *testing.T) {
	f := &fakeBroker{lifetime: time.Hour}
	cc := startFake(t, f)
	ts := brokerclient.TokenSource(cc, "demo-cc", "read")
	for range 2 {
		if _, err := ts.Token(); err != nil {
			t.Fatalf("Token() error = %v", err)
		}
	}
	if got := f.getCount(); got != 1 {
		t.Errorf("GetToken calls = %d; want 1", got)
	}
	req := f.get(0)
	if req.GetConnection() != "demo-cc" || !cmp.Equal(req.GetScopes(), []string{"read"}) || req.GetMinTtl() != nil {
		t.Errorf("GetToken request = {%q %q %v}; want {demo-cc [read] <nil>}", req.GetConnection(), req.GetScopes(), req.GetMinTtl())
	}
}

func TestTokenSourceErrorKeepsStatus(t *testing.T) {
	for _, code := range []codes.Code{codes.NotFound, codes.Unavailable, codes.FailedPrecondition} {
		t.Run(code.String(), func(t *testing.T) {
			f := &fakeBroker{getErr: status.Error(code, "upstream said no")}
			cc := startFake(t, f)
			_, err := brokerclient.TokenSource(cc, "pay").Token()
			if got := status.Code(err); got != code {
				t.Errorf("status.Code(Token() error) = %v; want %v (error %v)", got, code, err)
			}
			if want := `brokerclient: get token for "pay": `; err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Token() error = %v; want prefix %q", err, want)
			}
		})
	}
	t.Run("canceled context", func(t *testing.T) {
		cc := startFake(t, &fakeBroker{lifetime: time.Hour})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := (&brokerclient.Config{Connection: "pay"}).TokenSource(ctx, cc).Token()
		if got := status.Code(err); got != codes.Canceled {
			t.Errorf("status.Code(Token() error) = %v; want Canceled", got)
		}
	})
}

func TestInvalidate(t *testing.T) {
	f := &fakeBroker{lifetime: time.Hour}
	cc := startFake(t, f)
	ctx := context.Background()
	ts := brokerclient.TokenSource(cc, "pay", "read")
	first, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if err := brokerclient.Invalidate(ctx, cc, "pay", []string{"read"}, first.AccessToken); err != nil {
		t.Fatalf("Invalidate() error = %v", err)
	}
	req := f.invalidate(0)
	if req.GetConnection() != "pay" || !cmp.Equal(req.GetScopes(), []string{"read"}) || req.GetAccessToken() != first.AccessToken {
		t.Errorf("InvalidateToken request = {%q %q, token sent: %v}; want {pay [read], token sent: true}",
			req.GetConnection(), req.GetScopes(), req.GetAccessToken() == first.AccessToken)
	}
	second, err := brokerclient.TokenSource(cc, "pay", "read").Token()
	if err != nil {
		t.Fatal(err)
	}
	if second.AccessToken == first.AccessToken {
		t.Errorf("a new source after Invalidate got the invalidated token again")
	}

	f.setInvErr(status.Error(codes.PermissionDenied, "caller may not invalidate"))
	err = brokerclient.Invalidate(ctx, cc, "pay", nil, "")
	if status.Code(err) != codes.PermissionDenied || !strings.HasPrefix(err.Error(), `brokerclient: invalidate token for "pay": `) {
		t.Errorf("Invalidate() error = %v; want PermissionDenied with context", err)
	}
}

// A Config with an Account asks for, and invalidates, that account's tokens.
func TestAccount(t *testing.T) {
	f := &fakeBroker{lifetime: time.Hour}
	cc := startFake(t, f)
	cfg := &brokerclient.Config{Connection: "wax", Account: "user-42"}
	tok, err := cfg.TokenSource(context.Background(), cc).Token()
	if err != nil {
		t.Fatal(err)
	}
	if got := f.get(0).GetAccount(); got != "user-42" {
		t.Errorf("GetToken account = %q; want user-42", got)
	}
	if err := cfg.Invalidate(context.Background(), cc, tok.AccessToken); err != nil {
		t.Fatal(err)
	}
	if got := f.invalidate(0).GetAccount(); got != "user-42" {
		t.Errorf("InvalidateToken account = %q; want user-42", got)
	}
}
