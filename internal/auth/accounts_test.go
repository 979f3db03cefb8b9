package auth_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/auth"
)

// inCall runs f with the context the interceptor gives a handler, for an
// anonymous caller with policy p.
func inCall(t *testing.T, p auth.Policy, f func(ctx context.Context)) {
	t.Helper()
	p.RPCs = []string{auth.RoleOperator}
	a, err := auth.New(auth.Config{AllowAnonymous: auth.AnonymousConfig{Enabled: true, Policy: p}})
	if err != nil {
		t.Fatal(err)
	}
	info := &grpc.UnaryServerInfo{FullMethod: tokenbrokerv1.TokenBrokerService_ListConnections_FullMethodName}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}})
	_, err = a.UnaryInterceptor(nil)(ctx, &tokenbrokerv1.ListConnectionsRequest{}, info, func(ctx context.Context, _ any) (any, error) {
		f(ctx)
		return nil, nil
	})
	if err != nil {
		t.Fatalf("interceptor: %v", err)
	}
}

func TestMayUseAccount(t *testing.T) {
	type check struct {
		connection, account string
		want                bool
	}
	tests := []struct {
		name     string
		accounts []string
		checks   []check
	}{
		{"absent: every account, the default included", nil, []check{
			{"wax", "team-a-1", true}, {"wax", "team-b-1", true}, {"wax", "", true}, {"other", "team-a-1", false},
		}},
		{"team-a-*", []string{"team-a-*"}, []check{
			{"wax", "team-a-1", true}, {"wax", "team-b-1", false}, {"wax", "", false}, {"wax", "team-a", false},
			{"other", "team-a-1", false},
		}},
		{"team-a-* and the default account", []string{"team-a-*", ""}, []check{
			{"wax", "team-a-1", true}, {"wax", "team-b-1", false}, {"wax", "", true},
		}},
		{"*", []string{"*"}, []check{{"wax", "team-b-1", true}, {"wax", "", true}}},
		{"exact", []string{"alice@example.com"}, []check{{"wax", "alice@example.com", true}, {"wax", "bob@example.com", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inCall(t, auth.Policy{Connections: []string{"wax"}, Accounts: tt.accounts}, func(ctx context.Context) {
				for _, c := range tt.checks {
					if got := auth.MayUseAccount(ctx, c.connection, c.account); got != c.want {
						t.Errorf("MayUseAccount(%q, %q) = %v; want %v", c.connection, c.account, got, c.want)
					}
					err := auth.CheckAccount(ctx, c.connection, c.account)
					if (err == nil) != c.want || (err != nil && !errors.Is(err, auth.ErrPermissionDenied)) {
						t.Errorf("CheckAccount(%q, %q) = %v; want allowed = %v, else ErrPermissionDenied", c.connection, c.account, err, c.want)
					}
				}
			})
		})
	}
	inCall(t, auth.Policy{Connections: []string{"wax"}, Accounts: []string{"team-a-*"}}, func(ctx context.Context) {
		err := auth.CheckAccount(ctx, "wax", "team-b-1")
		var re *auth.RefusalError
		if !errors.As(err, &re) || re.Caller != auth.AnonymousName || re.Connection != "wax" || !strings.Contains(re.Message, `account "team-b-1"`) {
			t.Errorf("CheckAccount(wax, team-b-1) = %#v; want a RefusalError naming the caller, connection and account", err)
		}
		if err := auth.CheckAccount(ctx, "wax", ""); err == nil || !strings.Contains(err.Error(), "the default account") {
			t.Errorf("CheckAccount(wax, \"\") = %v; want a refusal naming the default account", err)
		}
	})
	if !auth.MayUseAccount(context.Background(), "wax", "x") || !auth.MayUseAccount(auth.NewContext(context.Background(), auth.Caller{Name: "x"}), "wax", "x") {
		t.Error("MayUseAccount without a policy in ctx = false; want true")
	}
}

func TestAccountsValidate(t *testing.T) {
	cfg := auth.Config{Callers: []auth.CallerConfig{
		{Name: "a", APIKeySHA256: []string{strings.Repeat("a", 64)}, Policy: auth.Policy{Connections: []string{"*"}, Accounts: []string{}}},
		{Name: "b", APIKeySHA256: []string{strings.Repeat("b", 64)}, Policy: auth.Policy{Connections: []string{"*"}, Accounts: []string{"team-[", "", "ok-*"}}},
	}}
	err := cfg.Validate()
	for _, want := range []string{"callers[0].policy.accounts: an empty list allows no account", `callers[1].policy.accounts[0]: "team-[" is not a valid glob`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to contain %q", err, want)
		}
	}
	if n := len(strings.Split(err.Error(), "\n")); n != 2 {
		t.Errorf("Validate() reported %d problems; want 2:\n%v", n, err)
	}
}
