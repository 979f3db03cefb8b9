package server

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/reqlog"
)

// epoch times calls: time.Since of a time.Time that carries a monotonic
// clock reading reads only the monotonic clock, where time.Now reads the
// wall clock too (~55 ns against ~28 ns per reading on a KVM guest; the
// clock was 16 % of a cached call's CPU in BenchmarkGetToken/chain).
var epoch = time.Now()

// UnaryInterceptor is the broker's unary interceptor chain folded into one
// (issue 16): what reqlog.UnaryInterceptor(log),
// m.UnaryServerInterceptor() and authn.UnaryInterceptor(RefusalStatus),
// chained in that order, do, with one monotonic clock reading at each end
// instead of three clocks, one context per call
// instead of two (the caller rides in the request id's context) and no
// closure per layer:
//
//   - the call gets its request id first, so a refusal's log line has one;
//   - it is counted started before auth decides, and handled with the code
//     of whatever ends it, a refusal's included, as grpc_server_* count it;
//   - auth refuses it (RefusalStatus), or the handler runs with the caller
//     in its context;
//   - the failed call's log line comes last, with the final status.
//
// TestFoldedInterceptorMatchesChain holds it to the chain.
func UnaryInterceptor(log *slog.Logger, m *metrics.ServerMetrics, authn *auth.Authenticator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Since(epoch)
		call := reqlog.StartCall(ctx)
		counted := m.StartUnary(info.FullMethod)
		var resp any
		adm, err := authn.Admit(call, info.FullMethod, req)
		if err != nil {
			err = RefusalStatus(err)
		} else {
			call.Attach(adm.KeyValue())
			resp, err = handler(call, req)
		}
		took := time.Since(epoch) - start
		counted.End(err, took)
		call.Log(log, info.FullMethod, req, err, took)
		return resp, err
	}
}
