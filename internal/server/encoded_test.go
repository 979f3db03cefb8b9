package server_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// serve serves svc over loopback gRPC with opts and returns a client.
func serve(t *testing.T, svc *server.Service, opts ...grpc.ServerOption) tokenbrokerv1.TokenBrokerServiceClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	server.RegisterService(gs, svc)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return tokenbrokerv1.NewTokenBrokerServiceClient(cc)
}

// TestEncodedAnswer: a token from the in-process cache, answered with the
// response encoded when it entered the cache, reaches the client as the
// message a fetch answers with: through server.Codec, as cmd/broker
// serves, and through grpc-go's own codec (encodedToken is a message too).
func TestEncodedAnswer(t *testing.T) {
	for name, opts := range map[string][]grpc.ServerOption{
		"server.Codec":  {grpc.ForceServerCodecV2(server.Codec())},
		"grpc-go codec": nil,
	} {
		t.Run(name, func(t *testing.T) {
			s := newBenchSetup(t)
			client := serve(t, s.svc, append(opts, grpc.ChainUnaryInterceptor(s.chain...))...)
			req := &tokenbrokerv1.GetTokenRequest{Connection: "demo-cc", Scopes: []string{"read", "write"}}
			fetched, err := client.GetToken(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			if fetched.GetAccessToken() != benchToken || fetched.GetTokenType() != "Bearer" ||
				len(fetched.GetScopes()) != 2 || fetched.GetExpiresAt().AsTime().Before(time.Now().Add(9*time.Hour)) {
				t.Fatalf("fetched token: type %q, scopes %q, expires %v, access token as issued: %v",
					fetched.GetTokenType(), fetched.GetScopes(), fetched.GetExpiresAt().AsTime(), fetched.GetAccessToken() == benchToken)
			}
			for range 3 {
				cached, err := client.GetToken(t.Context(), req)
				if err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(cached, fetched) {
					t.Fatalf("a cached token's answer (type %q, scopes %q, expires %v) differs from the fetch's (type %q, scopes %q, expires %v)",
						cached.GetTokenType(), cached.GetScopes(), cached.GetExpiresAt().AsTime(),
						fetched.GetTokenType(), fetched.GetScopes(), fetched.GetExpiresAt().AsTime())
				}
			}
		})
	}
}

// TestEncodeTokenFailureIsTheCallsFailure: a token that cannot be marshaled
// (an access token that is not UTF-8) is not encoded, and every call for it
// fails as it would without EncodeToken, not with an empty answer.
func TestEncodeTokenFailureIsTheCallsFailure(t *testing.T) {
	bad := &broker.Token{AccessToken: secret.New("\xff\xfe"), TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}
	if b := server.EncodeToken(bad); b != nil {
		t.Fatalf("EncodeToken of an access token that is not UTF-8 returned %d bytes; want nil", len(b))
	}
	c, err := memory.New(memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b, err := broker.New(broker.Options{Cache: c, Encode: server.EncodeToken, Connections: []broker.Connection{
		{Name: "bad", Type: "client_credentials", Provider: notUTF8{}, Skew: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	client := serve(t, server.New(server.Config{Broker: b}), grpc.ForceServerCodecV2(server.Codec()))
	for i := range 3 {
		_, err := client.GetToken(t.Context(), &tokenbrokerv1.GetTokenRequest{Connection: "bad"})
		if status.Code(err) != codes.Internal {
			t.Fatalf("call %d: got %v; want Internal (the response cannot be marshaled)", i, status.Code(err))
		}
	}
}

type notUTF8 struct{}

func (notUTF8) Token(context.Context, providers.Request) (*providers.Token, error) {
	return &providers.Token{AccessToken: secret.New("\xff\xfe-not-utf-8"), TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}, nil
}
