package auth

import (
	"context"
	"net"
	"net/netip"
	"path"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// The interceptor's fast paths must decide exactly as the general code did.

// isLoopbackByString is isLoopback without the *net.TCPAddr fast path.
func isLoopbackByString(addr net.Addr) bool {
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func TestIsLoopbackFastPathAgrees(t *testing.T) {
	ips := []net.IP{nil, {}, {1, 2, 3}, {127, 0, 0, 1}, {127, 255, 255, 254}, {128, 0, 0, 1}, {0, 0, 0, 0},
		net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1), net.IPv6loopback, net.IPv6zero, net.IPv6unspecified,
		net.ParseIP("::ffff:127.0.0.1"), net.ParseIP("::ffff:10.1.2.3"), net.ParseIP("::2"), net.ParseIP("fe80::1"),
		net.ParseIP("2001:db8::1"), make(net.IP, 5), make(net.IP, 17)}
	for _, ip := range ips {
		for _, zone := range []string{"", "lo", "eth0"} {
			a := &net.TCPAddr{IP: ip, Port: 4321, Zone: zone}
			if got, want := isLoopback(a), isLoopbackByString(a); got != want {
				t.Errorf("isLoopback(%v) = %v; the string parse says %v", a, got, want)
			}
		}
	}
	var nilTCP *net.TCPAddr
	if isLoopback(nilTCP) {
		t.Error("isLoopback((*net.TCPAddr)(nil)) = true")
	}
}

func TestMatchAnyStarAgreesWithPathMatch(t *testing.T) {
	for _, s := range []string{"", "a", "demo-cc", "a/b", "/", "*", "a*b", "pay-1", "x.y_z", "\xff", "a\\b"} {
		want, _ := path.Match("*", s)
		if got := matchAny([]string{"*"}, s); got != want {
			t.Errorf("matchAny([*], %q) = %v; path.Match says %v", s, got, want)
		}
		want2, _ := path.Match("pay-*", s)
		if got := matchAny([]string{"*", "pay-*"}, s); got != (want || want2) {
			t.Errorf("matchAny([* pay-*], %q) = %v; want %v", s, got, want || want2)
		}
	}
}

// TestAnonymousCallAllocations: an allowed anonymous loopback call costs the
// interceptor one allocation (the context carrying the caller).
func TestAnonymousCallAllocations(t *testing.T) {
	a, err := New(Config{AllowAnonymous: AnonymousConfig{Enabled: true, LoopbackOnly: true,
		Policy: Policy{Connections: []string{"*"}, RPCs: []string{RoleOperator}}}})
	if err != nil {
		t.Fatal(err)
	}
	ic := a.UnaryInterceptor(nil)
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/GetToken"}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("user-agent", "grpc-go", "content-type", "application/grpc"))
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}})
	req := &struct{ getConnection }{getConnection{"demo-cc"}}
	handler := func(ctx context.Context, _ any) (any, error) {
		if c, ok := CallerFrom(ctx); !ok || c.Name != AnonymousName {
			t.Fatal("no anonymous caller in the handler's context")
		}
		return nil, nil
	}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := ic(ctx, req, info, handler); err != nil {
			t.Fatal(err)
		}
	}); n > 1 {
		t.Errorf("interceptor allocates %v times per allowed call; want at most 1", n)
	}
}

type getConnection struct{ name string }

func (g getConnection) GetConnection() string { return g.name }
