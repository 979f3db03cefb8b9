package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

// healthCheckOptions are the flags of `broker -health-check ADDR`: the
// image checks a running broker through grpc.health.v1 (the chart's helm
// test), so no other probe image is needed.
type healthCheckOptions struct {
	addr, service             string
	useTLS                    bool
	caFile, certFile, keyFile string
	serverName                string
	timeout                   time.Duration
}

func (h *healthCheckOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&h.addr, "health-check", "", "call grpc.health.v1 Check on the broker at `address` (host:port), exit 0 if SERVING, and exit")
	fs.StringVar(&h.service, "health-check-service", tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName, "with -health-check: the health service `name` to check")
	fs.BoolVar(&h.useTLS, "health-check-tls", false, "with -health-check: connect over TLS")
	fs.StringVar(&h.caFile, "health-check-ca", "", "with -health-check-tls: verify the server against this CA `file` (default: the system roots)")
	fs.StringVar(&h.certFile, "health-check-cert", "", "with -health-check-tls: client certificate `file` (mutual TLS)")
	fs.StringVar(&h.keyFile, "health-check-key", "", "with -health-check-tls: client key `file` (mutual TLS)")
	fs.StringVar(&h.serverName, "health-check-server-name", "", "with -health-check-tls: the server `name` to verify (default: the address's host)")
	fs.DurationVar(&h.timeout, "health-check-timeout", 10*time.Second, "with -health-check: give up after this long")
}

func (h *healthCheckOptions) run(ctx context.Context, stderr io.Writer) error {
	creds := insecure.NewCredentials()
	if h.useTLS {
		tc, err := h.tlsConfig()
		if err != nil {
			return fmt.Errorf("health check: %w", err)
		}
		creds = credentials.NewTLS(tc)
	}
	cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: h.service})
	if err != nil {
		return fmt.Errorf("health check %s: %w", h.addr, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health check %s: %s is %v", h.addr, h.service, resp.GetStatus())
	}
	fmt.Fprintf(stderr, "%s at %s: SERVING\n", h.service, h.addr)
	return nil
}

func (h *healthCheckOptions) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: h.serverName}
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(h.addr)
		if err != nil {
			return nil, err
		}
		tc.ServerName = host
	}
	if h.caFile != "" {
		pem, err := os.ReadFile(h.caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", h.caFile)
		}
	}
	if (h.certFile == "") != (h.keyFile == "") {
		return nil, errors.New("-health-check-cert and -health-check-key go together")
	}
	if h.certFile != "" {
		cert, err := tls.LoadX509KeyPair(h.certFile, h.keyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
