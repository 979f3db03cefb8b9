package redis_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
	"github.com/tokenbroker/tokenbroker/internal/tlsutil"
	"github.com/tokenbroker/tokenbroker/internal/tlsutil/tlstest"
)

// TestACLUserOverTLS talks to a real redis-server that accepts only TLS on
// the port we use and only an ACL user with a password.
func TestACLUserOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "redis test CA")
	leaf := ca.Localhost(t)
	caFile, certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	tlstest.WriteFile(t, caFile, ca.CertPEM)
	tlstest.WriteFile(t, certFile, leaf.CertPEM)
	tlstest.WriteFile(t, keyFile, leaf.KeyPEM)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	const user, password = "broker", "acl-pass-!^+ word"
	redistest.Start(t, redistest.WithArgs(
		"--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile, "--tls-key-file", keyFile,
		"--tls-ca-cert-file", caFile, "--tls-auth-clients", "no",
		"--user", user, "on", ">"+password, "~*", "&*", "+@all", "--user", "default", "off"))
	clientTLS, err := tlsutil.ClientConfig{CAFile: caFile, ServerName: "localhost"}.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))
	open := func(pw string) *rediscache.Cache {
		c, err := rediscache.New(rediscache.Options{Prefix: "t:", Client: rediscache.NewClient(rediscache.ClientConfig{
			Addrs: []string{addr}, Username: user, Password: pw, TLS: clientTLS, DialTimeout: 2 * time.Second})})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := open(password)
	if err := c.Set(ctx, "k", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Set over TLS as the ACL user: %v", err)
	}
	if got, err := c.Get(ctx, "k"); err != nil || string(got) != "v" {
		t.Fatalf("Get = %q, %v; want v", got, err)
	}
	if err := open("wrong").Ping(ctx); !errors.Is(err, cache.ErrUnavailable) {
		t.Errorf("Ping with a wrong password = %v; want an error wrapping ErrUnavailable", err)
	}
}
