// Package tlsutil builds TLS configurations from files named in the broker's
// configuration: a server configuration whose certificate and client CA
// bundle are reloaded when their files change, so that a rotated
// certificate takes effect without a restart, and a client configuration
// for outgoing connections such as Redis.
//
// Errors and logs name files, never their contents.
package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// Client authentication modes of ServerConfig.ClientAuth.
const (
	// ClientAuthNone asks for no client certificate.
	ClientAuthNone = "none"
	// ClientAuthRequest asks for a client certificate and verifies it
	// against the client CAs when one is sent; a client may send none.
	ClientAuthRequest = "request"
	// ClientAuthRequireAndVerify refuses clients without a certificate
	// signed by one of the client CAs.
	ClientAuthRequireAndVerify = "require_and_verify"
)

// DefaultReloadInterval is how often a Reloader checks its files.
const DefaultReloadInterval = 10 * time.Second

// ServerConfig configures TLS on a listener. The zero value means no TLS.
type ServerConfig struct {
	// CertFile is the PEM certificate chain, leaf first.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of the leaf certificate.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of the CAs that sign client
	// certificates. Setting it turns on mutual TLS.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is none, request or require_and_verify. The default is
	// require_and_verify when ClientCAFile is set and none otherwise.
	ClientAuth string `yaml:"client_auth"`
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `yaml:"min_version"`
	// ReloadInterval is how often the files are checked for changes, as a
	// duration string such as "30s" (default 10s).
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// Enabled reports whether any TLS setting is present.
func (c ServerConfig) Enabled() bool {
	return c.CertFile != "" || c.KeyFile != "" || c.ClientCAFile != "" || c.ClientAuth != "" ||
		c.MinVersion != "" || c.ReloadInterval != 0
}

// Validate reports every problem at once, each prefixed with its key. The
// zero ServerConfig is valid (no TLS). It reads no file.
func (c ServerConfig) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	if c.CertFile == "" {
		errs = append(errs, errors.New("cert_file: required"))
	}
	if c.KeyFile == "" {
		errs = append(errs, errors.New("key_file: required"))
	}
	switch c.ClientAuth {
	case "":
	case ClientAuthNone:
		if c.ClientCAFile != "" {
			errs = append(errs, errors.New("client_ca_file: set, but client_auth is none"))
		}
	case ClientAuthRequest, ClientAuthRequireAndVerify:
		if c.ClientCAFile == "" {
			errs = append(errs, fmt.Errorf("client_ca_file: required when client_auth is %s", c.ClientAuth))
		}
	default:
		errs = append(errs, fmt.Errorf("client_auth: %q is not one of none, request, require_and_verify", c.ClientAuth))
	}
	if _, err := parseVersion(c.MinVersion); err != nil {
		errs = append(errs, fmt.Errorf("min_version: %w", err))
	}
	if c.ReloadInterval < 0 {
		errs = append(errs, errors.New("reload_interval: must not be negative"))
	}
	return errors.Join(errs...)
}

func (c ServerConfig) clientAuth() tls.ClientAuthType {
	switch c.ClientAuth {
	case ClientAuthRequest:
		// Verify whatever is sent: an unverified certificate is no identity.
		return tls.VerifyClientCertIfGiven
	case ClientAuthRequireAndVerify:
		return tls.RequireAndVerifyClientCert
	case "":
		if c.ClientCAFile != "" {
			return tls.RequireAndVerifyClientCert
		}
	}
	return tls.NoClientCert
}

func parseVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q is not one of 1.2, 1.3", s)
}

// ClientConfig configures TLS on an outgoing connection, such as to Redis.
type ClientConfig struct {
	// CAFile is a PEM bundle of the CAs that sign the server's
	// certificate. Empty uses the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate and key, for servers
	// that require one. Set both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the server's certificate
	// (default: the host dialed).
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any server certificate. For tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Validate reports every problem at once, each prefixed with its key. It
// reads no file.
func (c ClientConfig) Validate() error {
	var errs []error
	if c.CertFile != "" && c.KeyFile == "" {
		errs = append(errs, errors.New("key_file: required with cert_file"))
	}
	if c.KeyFile != "" && c.CertFile == "" {
		errs = append(errs, errors.New("cert_file: required with key_file"))
	}
	if c.InsecureSkipVerify && (c.CAFile != "" || c.ServerName != "") {
		errs = append(errs, errors.New("insecure_skip_verify: verification is off, so ca_file and server_name would be ignored"))
	}
	return errors.Join(errs...)
}

// TLSConfig reads the files and returns a client configuration (TLS 1.2 or
// later). The files are read once.
func (c ClientConfig) TLSConfig() (*tls.Config, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify,
	}
	if c.CAFile != "" {
		pool, _, err := readPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := readKeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// readPool reads a PEM bundle of CA certificates.
func readPool(name string) (*x509.CertPool, int, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, 0, err
	}
	return parsePool(name, b)
}

func parsePool(name string, b []byte) (*x509.CertPool, int, error) {
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, 0, fmt.Errorf("%s: unexpected PEM block %q", name, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: certificate %d: %w", name, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, 0, fmt.Errorf("%s: no PEM certificate found", name)
	}
	return pool, n, nil
}

func readKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key_file: %w", err)
	}
	return parseKeyPair(certFile, keyFile, certPEM, keyPEM)
}

// parseKeyPair wraps tls.X509KeyPair, whose errors describe the PEM
// structure and never include key bytes.
func parseKeyPair(certFile, keyFile string, certPEM, keyPEM []byte) (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cert_file %s, key_file %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}
