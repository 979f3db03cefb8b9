package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
	"github.com/tokenbroker/tokenbroker/internal/tlsutil/tlstest"
)

func TestServerConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  ServerConfig
		want []string // substrings of the error; none means valid
	}{
		{name: "zero is no TLS", cfg: ServerConfig{}},
		{name: "server only", cfg: ServerConfig{CertFile: "c", KeyFile: "k"}},
		{name: "mtls default", cfg: ServerConfig{CertFile: "c", KeyFile: "k", ClientCAFile: "ca"}},
		{name: "request", cfg: ServerConfig{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", ClientAuth: "request", MinVersion: "1.3"}},
		{name: "missing key and cert", cfg: ServerConfig{ClientCAFile: "ca"}, want: []string{"cert_file: required", "key_file: required"}},
		{
			name: "every problem at once",
			cfg:  ServerConfig{CertFile: "c", ClientAuth: "optional", MinVersion: "1.1", ReloadInterval: -time.Second},
			want: []string{"key_file: required", `client_auth: "optional" is not one of`, `min_version: "1.1"`, "reload_interval: must not be negative"},
		},
		{name: "verify without CAs", cfg: ServerConfig{CertFile: "c", KeyFile: "k", ClientAuth: "require_and_verify"}, want: []string{"client_ca_file: required when client_auth is require_and_verify"}},
		{name: "CAs with none", cfg: ServerConfig{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", ClientAuth: "none"}, want: []string{"client_ca_file: set, but client_auth is none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.cfg.Validate(), tt.want)
		})
	}
}

func TestClientConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  ClientConfig
		want []string
	}{
		{name: "zero uses system roots", cfg: ClientConfig{}},
		{name: "full", cfg: ClientConfig{CAFile: "ca", CertFile: "c", KeyFile: "k", ServerName: "redis"}},
		{name: "cert without key", cfg: ClientConfig{CertFile: "c"}, want: []string{"key_file: required with cert_file"}},
		{name: "key without cert", cfg: ClientConfig{KeyFile: "k"}, want: []string{"cert_file: required with key_file"}},
		{name: "insecure with CA", cfg: ClientConfig{CAFile: "ca", InsecureSkipVerify: true}, want: []string{"insecure_skip_verify:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.cfg.Validate(), tt.want)
		})
	}
}

func checkErr(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Errorf("Validate() = %v; want nil", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("Validate() = nil; want errors containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Validate() = %q; want it to contain %q", err, w)
		}
	}
}

// files is a set of certificate files in a temporary directory.
type testFiles struct {
	dir                string
	cert, key, clients string
}

func newFiles(t *testing.T) testFiles {
	d := t.TempDir()
	return testFiles{dir: d, cert: filepath.Join(d, "tls.crt"), key: filepath.Join(d, "tls.key"), clients: filepath.Join(d, "clients.pem")}
}

func (f testFiles) write(t *testing.T, l *tlstest.Leaf) {
	t.Helper()
	tlstest.WriteFile(t, f.cert, l.CertPEM)
	tlstest.WriteFile(t, f.key, l.KeyPEM)
}

// serve accepts TLS connections on 127.0.0.1 until the test ends. After a
// handshake it writes "ok" and closes, so a client learns whether the
// server accepted its certificate.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					_, _ = c.Write([]byte("ok"))
				}
			}()
		}
	}()
	return lis.Addr().String()
}

// dial connects, reads the server's "ok", and returns the serial number of
// the certificate the server presented.
func dial(addr string, roots *x509.CertPool, client *tlstest.Leaf) (*big.Int, error) {
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if client != nil {
		// Send it even when the server asks for other CAs (Certificates
		// would then send none).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &client.TLS, nil }
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// With TLS 1.3 the server checks the client's certificate after the
	// client's handshake is done: a refusal shows up on the first read.
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

func wantServed(t *testing.T, addr string, roots *x509.CertPool, want *tlstest.Leaf, label string) {
	t.Helper()
	got, err := dial(addr, roots, nil)
	if err != nil {
		t.Fatalf("%s: dial: %v", label, err)
	}
	if got.Cmp(want.Cert.SerialNumber) != 0 {
		t.Errorf("%s: server presented serial %x; want %x", label, got, want.Cert.SerialNumber)
	}
}

// keyLine is a line of the key's base64 body: what a leak into a log would show.
func keyLine(l *tlstest.Leaf) string {
	return strings.Split(string(l.KeyPEM), "\n")[1]
}

func TestReloaderRotation(t *testing.T) {
	ca := tlstest.NewCA(t, "server CA")
	a, b, c := ca.Localhost(t), ca.Localhost(t), ca.Localhost(t)
	f := newFiles(t)
	f.write(t, a)
	log, logs := logtest.New()
	ticks := make(chan time.Time)
	r, err := newReloader(ServerConfig{CertFile: f.cert, KeyFile: f.key}, log, ticks)
	if err != nil {
		t.Fatalf("newReloader: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	addr := serve(t, r.TLSConfig())
	roots := ca.Pool()
	wantServed(t, addr, roots, a, "initial")

	// Reload on demand.
	f.write(t, b)
	if err := r.Reload(); err != nil {
		t.Fatalf("Reload() = %v; want nil", err)
	}
	wantServed(t, addr, roots, b, "after Reload")

	// A broken key: B stays in service, the error is logged and returned.
	tlstest.WriteFile(t, f.key, []byte("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"))
	if err := r.Reload(); err == nil {
		t.Errorf("Reload() with a broken key = nil; want an error")
	}
	wantServed(t, addr, roots, b, "after broken key")

	// A certificate with another certificate's key.
	tlstest.WriteFile(t, f.cert, c.CertPEM)
	tlstest.WriteFile(t, f.key, a.KeyPEM)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "private key does not match") {
		t.Errorf("Reload() with a mismatched key = %v; want a mismatch error", err)
	}
	wantServed(t, addr, roots, b, "after mismatched key")

	// A missing file.
	if err := os.Remove(f.cert); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Reload() with a missing file = %v; want not exist", err)
	}
	wantServed(t, addr, roots, b, "after missing file")

	// The poll picks up a change. The second tick is only received once
	// the first one's reload is done.
	f.write(t, c)
	ticks <- time.Time{}
	ticks <- time.Time{}
	wantServed(t, addr, roots, c, "after poll")

	// An expired certificate is refused.
	r.now = func() time.Time { return time.Now().Add(48 * time.Hour) }
	f.write(t, a)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Reload() with an expired certificate = %v; want an expiry error", err)
	}
	wantServed(t, addr, roots, c, "after expired")

	if n := strings.Count(logs.String(), "reload failed"); n != 4 {
		t.Errorf("logged %d reload failures; want 4", n)
	}
	logtest.AssertNoSecrets(t, logs.String(), logtest.Secrets{"key A": keyLine(a), "key B": keyLine(b), "key C": keyLine(c)})
}

func TestReloaderPollLogsARepeatedFailureOnce(t *testing.T) {
	ca := tlstest.NewCA(t, "server CA")
	a := ca.Localhost(t)
	f := newFiles(t)
	f.write(t, a)
	log, logs := logtest.New()
	ticks := make(chan time.Time)
	r, err := newReloader(ServerConfig{CertFile: f.cert, KeyFile: f.key}, log, ticks)
	if err != nil {
		t.Fatalf("newReloader: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	tlstest.WriteFile(t, f.key, []byte("garbage"))
	for range 4 {
		ticks <- time.Time{}
	}
	_ = r.Close() // waits for the last tick's reload
	if n := strings.Count(logs.String(), "reload failed"); n != 1 {
		t.Errorf("logged %d reload failures for one broken file; want 1", n)
	}
	if got := r.Certificate().SerialNumber; got.Cmp(a.Cert.SerialNumber) != 0 {
		t.Errorf("Certificate() serial = %x; want %x (A)", got, a.Cert.SerialNumber)
	}
}

func TestNewReloaderPolls(t *testing.T) {
	ca := tlstest.NewCA(t, "server CA")
	a, b := ca.Localhost(t), ca.Localhost(t)
	f := newFiles(t)
	f.write(t, a)
	r, err := NewReloader(ServerConfig{CertFile: f.cert, KeyFile: f.key, ReloadInterval: time.Millisecond}, nil)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	f.write(t, b)
	deadline := time.Now().Add(10 * time.Second)
	for r.Certificate().SerialNumber.Cmp(b.Cert.SerialNumber) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("certificate B not picked up by polling within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
}

func TestNewReloaderErrors(t *testing.T) {
	ca := tlstest.NewCA(t, "server CA")
	a := ca.Localhost(t)
	f := newFiles(t)
	f.write(t, a)
	tlstest.WriteFile(t, f.clients, []byte("not PEM"))
	tests := []struct {
		name string
		cfg  ServerConfig
		want string
	}{
		{"zero", ServerConfig{}, "cert_file: required"},
		{"invalid", ServerConfig{CertFile: f.cert}, "key_file: required"},
		{"missing file", ServerConfig{CertFile: f.cert, KeyFile: filepath.Join(f.dir, "nope")}, "key_file:"},
		{"bad client CAs", ServerConfig{CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.clients}, "no PEM certificate found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewReloader(tt.cfg, nil)
			if err == nil {
				_ = r.Close()
				t.Fatalf("NewReloader() = nil error; want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewReloader() = %q; want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestClientCAEnforcement(t *testing.T) {
	serverCA := tlstest.NewCA(t, "server CA")
	ca1, ca2 := tlstest.NewCA(t, "clients 1"), tlstest.NewCA(t, "clients 2")
	client1 := ca1.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/a"}})
	client2 := ca2.Issue(t, tlstest.Options{URIs: []string{"spiffe://example.org/svc/a"}})
	f := newFiles(t)
	f.write(t, serverCA.Localhost(t))
	tlstest.WriteFile(t, f.clients, ca1.CertPEM)
	roots := serverCA.Pool()

	t.Run("require_and_verify", func(t *testing.T) {
		ticks := make(chan time.Time)
		r, err := newReloader(ServerConfig{CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.clients}, nil, ticks)
		if err != nil {
			t.Fatalf("newReloader: %v", err)
		}
		t.Cleanup(func() { _ = r.Close() })
		addr := serve(t, r.TLSConfig())
		check := func(label string, client *tlstest.Leaf, wantOK bool) {
			t.Helper()
			_, err := dial(addr, roots, client)
			if gotOK := err == nil; gotOK != wantOK {
				t.Errorf("%s: dial error = %v; want success %v", label, err, wantOK)
			}
		}
		check("CA 1 client", client1, true)
		check("no certificate", nil, false)
		check("CA 2 client", client2, false)

		// Rotate the client CA bundle to CA 2.
		tlstest.WriteFile(t, f.clients, ca2.CertPEM)
		if err := r.Reload(); err != nil {
			t.Fatalf("Reload() = %v", err)
		}
		check("CA 2 client after rotation", client2, true)
		check("CA 1 client after rotation", client1, false)

		// Both, during an overlap.
		tlstest.WriteFile(t, f.clients, append(append([]byte{}, ca1.CertPEM...), ca2.CertPEM...))
		if err := r.Reload(); err != nil {
			t.Fatalf("Reload() = %v", err)
		}
		check("CA 1 client during overlap", client1, true)
		check("CA 2 client during overlap", client2, true)
		tlstest.WriteFile(t, f.clients, ca1.CertPEM)
	})

	t.Run("request", func(t *testing.T) {
		r, err := NewReloader(ServerConfig{CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.clients, ClientAuth: "request"}, nil)
		if err != nil {
			t.Fatalf("NewReloader: %v", err)
		}
		t.Cleanup(func() { _ = r.Close() })
		addr := serve(t, r.TLSConfig())
		if _, err := dial(addr, roots, nil); err != nil {
			t.Errorf("no certificate: dial error = %v; want success", err)
		}
		if _, err := dial(addr, roots, client1); err != nil {
			t.Errorf("CA 1 client: dial error = %v; want success", err)
		}
		if _, err := dial(addr, roots, client2); err == nil {
			t.Errorf("CA 2 client: dial succeeded; want the unverifiable certificate refused")
		}
	})

	t.Run("min_version 1.3", func(t *testing.T) {
		r, err := NewReloader(ServerConfig{CertFile: f.cert, KeyFile: f.key, MinVersion: "1.3"}, nil)
		if err != nil {
			t.Fatalf("NewReloader: %v", err)
		}
		t.Cleanup(func() { _ = r.Close() })
		addr := serve(t, r.TLSConfig())
		cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: tls.VersionTLS12}
		c, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			_ = c.Close()
			t.Errorf("TLS 1.2 client: dial succeeded; want refused")
		}
	})
}

func TestClientConfigTLSConfig(t *testing.T) {
	serverCA, clientCA := tlstest.NewCA(t, "server CA"), tlstest.NewCA(t, "client CA")
	f := newFiles(t)
	f.write(t, serverCA.Localhost(t))
	tlstest.WriteFile(t, f.clients, clientCA.CertPEM)
	r, err := NewReloader(ServerConfig{CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.clients}, nil)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	addr := serve(t, r.TLSConfig())

	client := clientCA.Issue(t, tlstest.Options{CommonName: "broker"})
	caFile, certFile, keyFile := filepath.Join(f.dir, "redis-ca.pem"), filepath.Join(f.dir, "client.crt"), filepath.Join(f.dir, "client.key")
	tlstest.WriteFile(t, caFile, serverCA.CertPEM)
	tlstest.WriteFile(t, certFile, client.CertPEM)
	tlstest.WriteFile(t, keyFile, client.KeyPEM)

	cc := ClientConfig{CAFile: caFile, CertFile: certFile, KeyFile: keyFile, ServerName: "localhost"}
	cfg, err := cc.TLSConfig()
	if err != nil {
		t.Fatalf("TLSConfig() = %v", err)
	}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial with the client config: %v", err)
	}
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Errorf("read after handshake: %v", err)
	}
	_ = c.Close()

	// Without the client certificate the server refuses.
	cfg, err = ClientConfig{CAFile: caFile, ServerName: "localhost"}.TLSConfig()
	if err != nil {
		t.Fatalf("TLSConfig() = %v", err)
	}
	c, err = tls.Dial("tcp", addr, cfg)
	if err == nil {
		_, err = io.ReadFull(c, b)
		_ = c.Close()
	}
	if err == nil {
		t.Errorf("dial without a client certificate succeeded; want refused")
	}

	// Errors.
	if _, err := (ClientConfig{CAFile: filepath.Join(f.dir, "missing")}).TLSConfig(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("TLSConfig() with a missing CA file = %v; want not exist", err)
	}
	if _, err := (ClientConfig{CertFile: certFile}).TLSConfig(); err == nil {
		t.Errorf("TLSConfig() with no key file = nil; want an error")
	}
}

func TestConfigYAML(t *testing.T) {
	const doc = `
server:
  cert_file: /etc/tokenbroker/tls/tls.crt
  key_file: /etc/tokenbroker/tls/tls.key
  client_ca_file: /etc/tokenbroker/tls/clients.pem
  client_auth: require_and_verify
  min_version: "1.3"
  reload_interval: 30s
client:
  ca_file: /etc/tokenbroker/redis/ca.pem
  cert_file: /etc/tokenbroker/redis/client.crt
  key_file: /etc/tokenbroker/redis/client.key
  server_name: redis.internal
`
	var got struct {
		Server ServerConfig `yaml:"server"`
		Client ClientConfig `yaml:"client"`
	}
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode: %v", err)
	}
	wantServer := ServerConfig{CertFile: "/etc/tokenbroker/tls/tls.crt", KeyFile: "/etc/tokenbroker/tls/tls.key",
		ClientCAFile: "/etc/tokenbroker/tls/clients.pem", ClientAuth: "require_and_verify", MinVersion: "1.3", ReloadInterval: 30 * time.Second}
	wantClient := ClientConfig{CAFile: "/etc/tokenbroker/redis/ca.pem", CertFile: "/etc/tokenbroker/redis/client.crt",
		KeyFile: "/etc/tokenbroker/redis/client.key", ServerName: "redis.internal"}
	if got.Server != wantServer {
		t.Errorf("server = %+v; want %+v", got.Server, wantServer)
	}
	if got.Client != wantClient {
		t.Errorf("client = %+v; want %+v", got.Client, wantClient)
	}
	if err := got.Server.Validate(); err != nil {
		t.Errorf("server Validate() = %v", err)
	}
	if err := got.Client.Validate(); err != nil {
		t.Errorf("client Validate() = %v", err)
	}
	// A bare number is not a duration.
	var bad ServerConfig
	if err := yaml.Unmarshal([]byte("reload_interval: 30"), &bad); err == nil {
		t.Errorf("reload_interval: 30 decoded as %v; want an error", bad.ReloadInterval)
	}
}
