// Package reqlog gives every gRPC call a request id and puts it on every log
// line written with the call's context.
package reqlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Header is the metadata key a caller may set to choose the request id.
const Header = "x-request-id"

type ctxKey struct{}

// idContext carries a call's request id. It is the interceptor's only
// allocation per call: the id the interceptor assigns is kept as its counter
// value and formatted only when something asks for it (a log line), which a
// cached GetToken at info level never does.
type idContext struct {
	context.Context
	id string // set by WithID or the caller; else n is formatted
	n  uint64 // 0: none
}

func (c *idContext) Value(key any) any {
	if key == (ctxKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func (c *idContext) requestID() string {
	if c.id != "" || c.n == 0 {
		return c.id
	}
	return formatID(c.n)
}

// WithID returns ctx carrying request id id.
func WithID(ctx context.Context, id string) context.Context {
	return &idContext{Context: ctx, id: id}
}

// ID returns the request id in ctx, or "".
func ID(ctx context.Context) string {
	if c, ok := ctx.Value(ctxKey{}).(*idContext); ok {
		return c.requestID()
	}
	return ""
}

// Handler adds "request_id" to every record logged with a context that
// carries one.
type Handler struct{ slog.Handler }

// NewHandler wraps h.
func NewHandler(h slog.Handler) Handler { return Handler{h} }

func (h Handler) Handle(ctx context.Context, r slog.Record) error {
	if id := ID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h Handler) WithAttrs(as []slog.Attr) slog.Handler { return Handler{h.Handler.WithAttrs(as)} }
func (h Handler) WithGroup(name string) slog.Handler    { return Handler{h.Handler.WithGroup(name)} }

// ids are a random per-process prefix and a counter: unique, cheap, and
// nothing a caller could use to guess anything.
var (
	prefix = func() string {
		var b [4]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	counter atomic.Uint64
)

func formatID(n uint64) string { return prefix + "-" + strconv.FormatUint(n, 36) }

// callerID returns the caller's x-request-id if it is a short token of
// safe characters, so it can be logged as it is.
func callerID(ctx context.Context) string {
	// Not FromIncomingContext: that copies the whole metadata map.
	v := metadata.ValueFromIncomingContext(ctx, Header)
	if len(v) != 1 || len(v[0]) == 0 || len(v[0]) > 64 {
		return ""
	}
	for _, c := range []byte(v[0]) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return ""
		}
	}
	return v[0]
}

// UnaryInterceptor assigns the request id and logs each call: failures at
// info level, successes at debug level (checked before any work, so a
// cached GetToken logs nothing and allocates nothing for it at info).
func UnaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c := &idContext{Context: ctx, id: callerID(ctx)}
		if c.id == "" {
			c.n = counter.Add(1)
		}
		ctx = c
		start := time.Now()
		resp, err := handler(ctx, req)
		level := slog.LevelDebug
		if err != nil {
			level = slog.LevelInfo
		}
		if log.Enabled(ctx, level) {
			log.LogAttrs(ctx, level, "rpc", slog.String("method", info.FullMethod),
				slog.String("code", status.Code(err).String()), slog.Duration("took", time.Since(start)))
		}
		return resp, err
	}
}
