// Package reqlog gives every gRPC call and every HTTP callback request a
// request id and puts it on every log line written with its context. A failed
// call gets one line saying what went wrong: method, code, reason,
// connection, scopes, the status message and the request id (as
// grpc-ecosystem's logging interceptor does).
package reqlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/incoming"
)

// Header is the metadata key a caller may set to choose the request id.
const Header = "x-request-id"

type ctxKey struct{}

// A Call is the context of one gRPC call or HTTP request: it carries the
// request id. It is the interceptor's only allocation per call: the id the
// interceptor assigns is kept as its counter value and formatted only when
// something asks for it (a log line), which a cached GetToken at info level
// never does.
type Call struct {
	context.Context
	id string // set by WithID or the caller; else n is formatted
	n  uint64 // 0: none
	// cause is what SetCause recorded: the detail behind an INTERNAL
	// answer, logged on the call's line instead of a line of its own.
	cause error
	// key and val are one more value the context carries (Attach).
	key, val any
}

func (c *Call) Value(key any) any {
	if key == (ctxKey{}) {
		return c
	}
	if c.key != nil && key == c.key {
		return c.val
	}
	return c.Context.Value(key)
}

// Attach makes the call's context carry val under key as well, as
// context.WithValue would, without another context. It may be called once,
// before the context is handed to anyone else; a nil key attaches nothing.
func (c *Call) Attach(key, val any) {
	c.key, c.val = key, val
}

func (c *Call) requestID() string {
	if c.id != "" || c.n == 0 {
		return c.id
	}
	return formatID(c.n)
}

// WithID returns ctx carrying request id id.
func WithID(ctx context.Context, id string) context.Context {
	return &Call{Context: ctx, id: id}
}

// ID returns the request id in ctx, or "".
func ID(ctx context.Context) string {
	if c, ok := ctx.Value(ctxKey{}).(*Call); ok {
		return c.requestID()
	}
	return ""
}

// SetCause records err as the cause of the call in ctx failing, for its log
// line (the answer says only "internal error"). It reports false when ctx
// carries no call of this package's interceptor: log err yourself then. err
// must not contain a secret.
func SetCause(ctx context.Context, err error) bool {
	c, ok := ctx.Value(ctxKey{}).(*Call)
	if !ok {
		return false
	}
	c.cause = err
	return true
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

// safeID returns v if it is a short token of safe characters, so it can be
// logged as it is, else "".
func safeID(v string) string {
	if len(v) == 0 || len(v) > 64 {
		return ""
	}
	for _, c := range []byte(v) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return ""
		}
	}
	return v
}

// callerID returns the caller's x-request-id if safeID accepts it.
func callerID(ctx context.Context) string {
	v := incoming.Get(ctx, Header)
	if len(v) != 1 {
		return ""
	}
	return safeID(v[0])
}

// newContext gives a call or request its id: the caller's, or a fresh one.
func newContext(ctx context.Context, id string) *Call {
	c := &Call{Context: ctx, id: id}
	if c.id == "" {
		c.n = counter.Add(1)
	}
	return c
}

// UnaryInterceptor assigns the request id and logs each call (see
// StartCall and Call.Log).
func UnaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c := StartCall(ctx)
		start := time.Now()
		resp, err := handler(c, req)
		c.Log(log, info.FullMethod, req, err, time.Since(start))
		return resp, err
	}
}

// StartCall returns the context of a gRPC call made with ctx, carrying its
// request id: the caller's x-request-id if it is a short token of safe
// characters, else a fresh one. It is UnaryInterceptor's first half, for an
// interceptor that does more than log.
func StartCall(ctx context.Context) *Call {
	return newContext(ctx, callerID(ctx))
}

// Log logs the call to fullMethod once it is over, as UnaryInterceptor
// does: a failure with what went wrong, at the level CodeLevel gives; a
// success at debug level, checked before any work, so a cached GetToken
// logs nothing and allocates nothing for it at info. err is what the
// handler (or an interceptor inside this one) returned, took the time it
// took.
func (c *Call) Log(log *slog.Logger, fullMethod string, req any, err error, took time.Duration) {
	if err == nil {
		if log.Enabled(c, slog.LevelDebug) {
			log.LogAttrs(c, slog.LevelDebug, "rpc", slog.String("method", fullMethod),
				slog.String("code", codes.OK.String()), slog.Duration("took", took))
		}
		return
	}
	st := status.Convert(err)
	level := CodeLevel(st.Code())
	if !log.Enabled(c, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs, slog.String("method", fullMethod), slog.String("code", st.Code().String()))
	var ei *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if e, ok := d.(*errdetails.ErrorInfo); ok {
			ei = e
			break
		}
	}
	conn := ei.GetMetadata()["connection"]
	if r, ok := req.(interface{ GetConnection() string }); ok && conn == "" {
		conn = loggableName(r.GetConnection())
	}
	if ei != nil {
		attrs = append(attrs, slog.String("reason", ei.GetReason()))
	}
	if conn != "" {
		attrs = append(attrs, slog.String("connection", conn))
	}
	if caller := ei.GetMetadata()["caller"]; caller != "" {
		attrs = append(attrs, slog.String("caller", caller))
	}
	if oc := ei.GetMetadata()["oauth_error"]; oc != "" {
		attrs = append(attrs, slog.String("oauth_error", oc))
	}
	if r, ok := req.(interface{ GetScopes() []string }); ok {
		attrs = append(attrs, scopesAttr(r.GetScopes()))
	}
	attrs = append(attrs, slog.String("error", st.Message()))
	if c.cause != nil {
		attrs = append(attrs, slog.String("cause", c.cause.Error()))
	}
	attrs = append(attrs, slog.Duration("took", took))
	log.LogAttrs(c, level, "rpc", attrs...)
}

// CodeLevel is the level a failed call is logged at: info for the caller's
// own mistakes, warn for what an operator may need to act on (an upstream
// down, a grant to renew, a caller refused), error for the broker's faults.
// It follows grpc-ecosystem's DefaultServerCodeToLevel.
func CodeLevel(c codes.Code) slog.Level {
	switch c {
	case codes.OK, codes.Canceled, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.Unauthenticated:
		return slog.LevelInfo
	case codes.Unknown, codes.Unimplemented, codes.Internal, codes.DataLoss:
		return slog.LevelError
	}
	return slog.LevelWarn
}

// maxLoggedScopes bounds how many of a request's scopes its line lists.
const maxLoggedScopes = 16

func scopesAttr(scopes []string) slog.Attr {
	if len(scopes) > maxLoggedScopes {
		return slog.Group("scopes", slog.Any("first", scopes[:maxLoggedScopes]), slog.Int("count", len(scopes)))
	}
	if scopes == nil {
		scopes = []string{} // [] in JSON, not null
	}
	return slog.Any("scopes", scopes)
}

// loggableName returns a connection name as the caller sent it if it looks
// like one (a-z, 0-9, '.', '_', '-', at most 64 bytes), else "": whatever
// else a caller put there stays out of the log.
func loggableName(s string) string {
	if len(s) == 0 || len(s) > 64 {
		return ""
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return ""
		}
	}
	return s
}

// HTTPHandler gives every request to h a request id (the caller's
// X-Request-Id if safe, else a fresh one), put on every line logged with
// the request's context and answered in the X-Request-Id response header.
func HTTPHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := newContext(r.Context(), safeID(r.Header.Get("X-Request-Id")))
		w.Header().Set("X-Request-Id", c.requestID())
		h.ServeHTTP(w, r.WithContext(c))
	})
}

// ReplaceAttr is a slog.HandlerOptions.ReplaceAttr that writes durations as
// Go duration strings ("1.9ms", "3s") instead of integer nanoseconds, and a
// nil slice as [] instead of null.
func ReplaceAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindDuration:
		return slog.String(a.Key, a.Value.Duration().String())
	case slog.KindAny:
		v := a.Value.Any()
		if v == nil {
			return a
		}
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
			return slog.Any(a.Key, reflect.MakeSlice(rv.Type(), 0, 0).Interface())
		}
	}
	return a
}
