package tlsutil

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A Reloader serves a certificate and client CA bundle read from files. It
// reads the files every ReloadInterval and on each call to Reload, and when
// their contents changed, the new set serves every later handshake. A new
// set that fails to load (a missing file, a key that does not match, an
// expired certificate) leaves the current one in service and is logged.
//
// A Reloader is safe for concurrent use.
type Reloader struct {
	cfg        ServerConfig
	log        *slog.Logger
	minVersion uint16
	clientAuth tls.ClientAuthType
	now        func() time.Time

	mu       sync.Mutex // serializes loads
	lastFail string     // what the last failed poll saw, to log it once
	cur      atomic.Pointer[material]

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type material struct {
	cert *tls.Certificate
	pool *x509.CertPool // nil without client CAs
	cas  int            // certificates in pool
	sum  [sha256.Size]byte
}

// files holds what was read from the configured files.
type files struct {
	cert, key, ca []byte
	sum           [sha256.Size]byte // of all three, to detect a change
}

// NewReloader loads the files cfg names and starts checking them for
// changes every cfg.ReloadInterval until Close. It fails if cfg is invalid,
// names no certificate, or the files do not load. log may be nil.
func NewReloader(cfg ServerConfig, log *slog.Logger) (*Reloader, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tlsutil: %w", err)
	}
	interval := cfg.ReloadInterval
	if interval == 0 {
		interval = DefaultReloadInterval
	}
	ticker := time.NewTicker(interval)
	r, err := newReloader(cfg, log, ticker.C)
	if err != nil {
		ticker.Stop()
		return nil, err
	}
	go func() {
		<-r.done
		ticker.Stop()
	}()
	return r, nil
}

// newReloader is NewReloader with the ticks injected.
func newReloader(cfg ServerConfig, log *slog.Logger, ticks <-chan time.Time) (*Reloader, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tlsutil: %w", err)
	}
	if cfg.CertFile == "" {
		return nil, errors.New("tlsutil: cert_file: required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	minVersion, _ := parseVersion(cfg.MinVersion)
	r := &Reloader{
		cfg:        cfg,
		log:        log.With("cert_file", cfg.CertFile),
		minVersion: minVersion,
		clientAuth: cfg.clientAuth(),
		now:        time.Now,
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	m, err := r.load()
	if err != nil {
		return nil, fmt.Errorf("tlsutil: %w", err)
	}
	r.cur.Store(m)
	r.logLoaded("tls certificate loaded", m)
	go r.poll(ticks)
	return r, nil
}

// Close stops checking the files. The TLS configuration keeps serving the
// last certificate loaded. Close always returns nil.
func (r *Reloader) Close() error {
	r.closeOnce.Do(func() { close(r.stop) })
	<-r.done
	return nil
}

func (r *Reloader) poll(ticks <-chan time.Time) {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-ticks:
			_ = r.reload(true)
		}
	}
}

// Reload reads the files now. If they changed and load, the new certificate
// and client CAs serve every later handshake. If they do not load, the
// current ones stay in service and the error is logged and returned.
func (r *Reloader) Reload() error {
	return r.reload(false)
}

func (r *Reloader) reload(quietRepeat bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := r.read()
	if err == nil && f.sum == r.cur.Load().sum {
		r.lastFail = ""
		return nil
	}
	var m *material
	if err == nil {
		m, err = r.parse(f)
	}
	if err != nil {
		// A rotation that writes the certificate and the key one after
		// the other may fail once in between: log each distinct failure
		// once per run of polls.
		seen := hex.EncodeToString(f.sum[:]) + " " + err.Error()
		if !quietRepeat || seen != r.lastFail {
			r.log.Error("tls certificate reload failed; keeping the current certificate", "err", err)
		}
		r.lastFail = seen
		return fmt.Errorf("tlsutil: reload: %w", err)
	}
	r.lastFail = ""
	r.cur.Store(m)
	r.logLoaded("tls certificate reloaded", m)
	return nil
}

func (r *Reloader) load() (*material, error) {
	f, err := r.read()
	if err != nil {
		return nil, err
	}
	return r.parse(f)
}

func (r *Reloader) read() (files, error) {
	var f files
	h := sha256.New()
	for _, x := range []struct {
		key, name string
		into      *[]byte
	}{
		{"cert_file", r.cfg.CertFile, &f.cert}, {"key_file", r.cfg.KeyFile, &f.key}, {"client_ca_file", r.cfg.ClientCAFile, &f.ca},
	} {
		if x.name == "" {
			continue
		}
		b, err := os.ReadFile(x.name)
		if err != nil {
			return files{}, fmt.Errorf("%s: %w", x.key, err)
		}
		*x.into = b
		fmt.Fprintf(h, "%s %d\n", x.key, len(b))
		h.Write(b)
	}
	h.Sum(f.sum[:0])
	return f, nil
}

func (r *Reloader) parse(f files) (*material, error) {
	cert, err := parseKeyPair(r.cfg.CertFile, r.cfg.KeyFile, f.cert, f.key)
	if err != nil {
		return nil, err
	}
	if now := r.now(); now.After(cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("cert_file %s: certificate expired at %s", r.cfg.CertFile, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	m := &material{cert: &cert, sum: f.sum}
	if r.cfg.ClientCAFile != "" {
		pool, n, err := parsePool(r.cfg.ClientCAFile, f.ca)
		if err != nil {
			return nil, fmt.Errorf("client_ca_file: %w", err)
		}
		m.pool, m.cas = pool, n
	}
	return m, nil
}

func (r *Reloader) logLoaded(msg string, m *material) {
	leaf := m.cert.Leaf
	uris := make([]string, len(leaf.URIs))
	for i, u := range leaf.URIs {
		uris[i] = u.String()
	}
	r.log.Info(msg,
		"subject", leaf.Subject.String(),
		"dns_names", leaf.DNSNames,
		"uris", uris,
		"serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter.UTC(),
		"client_auth", r.clientAuth.String(),
		"client_cas", m.cas)
}

// TLSConfig returns a server configuration that presents the current
// certificate and, with client authentication on, verifies clients against
// the current client CAs. It offers ALPN h2 and http/1.1, so it suits both
// the gRPC listener (credentials.NewTLS) and an HTTP server.
func (r *Reloader) TLSConfig() *tls.Config {
	cfg := r.handshakeConfig()
	if r.clientAuth != tls.NoClientCert {
		// The client CA pool is only read from the Config in use, so each
		// handshake gets one holding the current pool.
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := r.handshakeConfig()
			c.ClientAuth = r.clientAuth
			c.ClientCAs = r.cur.Load().pool
			// No resumption: a resumed session would skip verifying the
			// client against a CA bundle that may have changed since.
			c.SessionTicketsDisabled = true
			return c, nil
		}
	}
	return cfg
}

func (r *Reloader) handshakeConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     r.minVersion,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: r.getCertificate,
	}
}

func (r *Reloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load().cert, nil
}

// Certificate returns the leaf certificate now in service.
func (r *Reloader) Certificate() *x509.Certificate {
	return r.cur.Load().cert.Leaf
}
