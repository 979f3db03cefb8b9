// Package tracing sets up OpenTelemetry tracing: spans for gRPC calls
// (otelgrpc) and upstream token requests (otelhttp), exported over OTLP/gRPC.
// It is off unless configured.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"google.golang.org/grpc"
)

// Config is the `tracing` section.
type Config struct {
	// Enabled turns tracing on (default off).
	Enabled bool `yaml:"enabled"`
	// OTLPEndpoint is the collector's OTLP/gRPC host:port, e.g. "otel-collector:4317".
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// Insecure sends spans without TLS (a collector sidecar on localhost).
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the fraction of new traces recorded (default 1); a
	// caller's sampled parent is always followed.
	SampleRatio *float64 `yaml:"sample_ratio"`
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	if _, _, err := net.SplitHostPort(c.OTLPEndpoint); err != nil {
		errs = append(errs, fmt.Errorf("otlp_endpoint: want host:port, got %q", c.OTLPEndpoint))
	}
	if r := c.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		errs = append(errs, fmt.Errorf("sample_ratio: must be between 0 and 1, got %v", *r))
	}
	return errors.Join(errs...)
}

// Tracing is the running setup. The zero value (tracing off) adds nothing.
type Tracing struct {
	tp *sdktrace.TracerProvider
}

// Start installs the global tracer provider and propagators when cfg is
// enabled. Nothing is dialled until the first export.
func Start(ctx context.Context, cfg Config, version string) (*Tracing, error) {
	if !cfg.Enabled {
		return &Tracing{}, nil
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint)}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = *cfg.SampleRatio
	}
	res := resource.NewSchemaless(semconv.ServiceName("tokenbroker"), semconv.ServiceVersion(version))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return &Tracing{tp: tp}, nil
}

// ServerOptions returns the gRPC server options that create spans.
func (t *Tracing) ServerOptions() []grpc.ServerOption {
	if t.tp == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(t.tp)))}
}

// Transport wraps an upstream transport so token requests get spans.
func (t *Tracing) Transport(base http.RoundTripper) http.RoundTripper {
	if t.tp == nil {
		return base
	}
	return otelhttp.NewTransport(base, otelhttp.WithTracerProvider(t.tp))
}

// Shutdown flushes and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.tp == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}
