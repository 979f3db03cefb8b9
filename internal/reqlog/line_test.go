package reqlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

// newLogger logs JSON as the broker does (ReplaceAttr included) into buf.
func newLogger(buf *bytes.Buffer, level slog.Level) *slog.Logger {
	return slog.New(NewHandler(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: level, ReplaceAttr: ReplaceAttr})))
}

func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line is not JSON: %v\n%s", err, l)
		}
		out = append(out, rec)
	}
	return out
}

func withInfo(code codes.Code, msg, reason string, meta map[string]string) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "tokenbroker.v1", Metadata: meta})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// TestFailedCallSaysWhatWentWrong: a failed call is one line with method,
// code, reason, connection, scopes ([] when none), the status message, the
// request id and the duration as a Go duration string (issue 15, finding 3).
func TestFailedCallSaysWhatWentWrong(t *testing.T) {
	const method = "/tokenbroker.v1.TokenBrokerService/GetToken"
	info := &grpc.UnaryServerInfo{FullMethod: method}
	for _, tc := range []struct {
		name  string
		req   *tokenbrokerv1.GetTokenRequest
		err   error
		level string
		want  map[string]any
	}{{
		name:  "unknown connection, no scopes",
		req:   &tokenbrokerv1.GetTokenRequest{Connection: "nope"},
		err:   withInfo(codes.NotFound, `broker: unknown connection: "nope"`, "UNKNOWN_CONNECTION", map[string]string{"connection": "nope"}),
		level: "INFO",
		want: map[string]any{"code": "NotFound", "reason": "UNKNOWN_CONNECTION", "connection": "nope", "scopes": []any{},
			"error": `broker: unknown connection: "nope"`},
	}, {
		name:  "bad argument, the connection from the request",
		req:   &tokenbrokerv1.GetTokenRequest{Connection: "pay", Scopes: []string{"read", "bad scope"}},
		err:   withInfo(codes.InvalidArgument, "broker: invalid argument: scopes[1]: malformed", "INVALID_ARGUMENT", nil),
		level: "INFO",
		want: map[string]any{"code": "InvalidArgument", "reason": "INVALID_ARGUMENT", "connection": "pay",
			"scopes": []any{"read", "bad scope"}, "error": "broker: invalid argument: scopes[1]: malformed"},
	}, {
		name:  "upstream rejection",
		req:   &tokenbrokerv1.GetTokenRequest{Connection: "pay"},
		err:   withInfo(codes.FailedPrecondition, "rejected: invalid_client", "UPSTREAM_REJECTED", map[string]string{"connection": "pay", "oauth_error": "invalid_client"}),
		level: "WARN",
		want: map[string]any{"code": "FailedPrecondition", "reason": "UPSTREAM_REJECTED", "connection": "pay", "oauth_error": "invalid_client",
			"scopes": []any{}, "error": "rejected: invalid_client"},
	}, {
		name:  "a name that is no name stays out",
		req:   &tokenbrokerv1.GetTokenRequest{Connection: "Bearer abc\n"},
		err:   withInfo(codes.InvalidArgument, "connection: must match", "INVALID_ARGUMENT", nil),
		level: "INFO",
		want:  map[string]any{"code": "InvalidArgument", "reason": "INVALID_ARGUMENT", "scopes": []any{}, "error": "connection: must match"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			ic := UnaryInterceptor(newLogger(&buf, slog.LevelInfo))
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(Header, "req-1"))
			_, _ = ic(ctx, tc.req, info, func(context.Context, any) (any, error) { return nil, tc.err })
			recs := records(t, &buf)
			if len(recs) != 1 {
				t.Fatalf("got %d lines; want 1:\n%s", len(recs), buf.String())
			}
			got := recs[0]
			if got["level"] != tc.level {
				t.Errorf("level = %v; want %s", got["level"], tc.level)
			}
			if d, err := time.ParseDuration(got["took"].(string)); err != nil || d < 0 {
				t.Errorf("took = %v; want a Go duration string", got["took"])
			}
			for _, k := range []string{"time", "level", "took"} {
				delete(got, k)
			}
			want := map[string]any{"msg": "rpc", "method": method, "request_id": "req-1"}
			for k, v := range tc.want {
				want[k] = v
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("log line (-want +got):\n%s", d)
			}
		})
	}
}

// TestInternalCause: the detail behind INTERNAL goes on the call's line, at
// error level, and SetCause says so; outside a call it reports false.
func TestInternalCause(t *testing.T) {
	var buf bytes.Buffer
	ic := UnaryInterceptor(newLogger(&buf, slog.LevelInfo))
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/ListConnections"}
	_, _ = ic(context.Background(), &tokenbrokerv1.ListConnectionsRequest{}, info, func(ctx context.Context, _ any) (any, error) {
		if !SetCause(ctx, errors.New("cache: decode: bad value")) {
			t.Error("SetCause inside a call = false")
		}
		return nil, status.Error(codes.Internal, "internal error")
	})
	recs := records(t, &buf)
	if len(recs) != 1 || recs[0]["level"] != "ERROR" || recs[0]["cause"] != "cache: decode: bad value" || recs[0]["error"] != "internal error" {
		t.Errorf("log = %s; want one ERROR line with the cause", buf.String())
	}
	if _, ok := recs[0]["scopes"]; ok {
		t.Errorf("a request without scopes logged scopes: %s", buf.String())
	}
	if SetCause(context.Background(), errors.New("x")) {
		t.Error("SetCause outside a call = true")
	}
}

// TestReplaceAttr: durations as Go duration strings, nil slices as [].
func TestReplaceAttr(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(&buf, slog.LevelInfo)
	log.Info("shutting down", "shutdown_delay", 3*time.Second, "scopes", []string(nil), "keys", []string{"k1"},
		slog.Group("g", "took", 1500*time.Millisecond), "none", nil)
	want := `"shutdown_delay":"3s","scopes":[],"keys":["k1"],"g":{"took":"1.5s"},"none":null`
	if !strings.Contains(buf.String(), want) {
		t.Errorf("log = %s; want it to contain %s", buf.String(), want)
	}
}

// TestHTTPHandlerGivesRequestIDs: callback lines carry a request id, the
// caller's X-Request-Id when safe, and the response names it.
func TestHTTPHandlerGivesRequestIDs(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(&buf, slog.LevelInfo)
	h := HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.InfoContext(r.Context(), "authorization callback refused")
	}))
	for _, hdr := range []string{"cb-1", "bad id\n", ""} {
		r := httptest.NewRequest("GET", "/oauth2/callback", nil)
		if hdr != "" {
			r.Header.Set("X-Request-Id", hdr)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		got := w.Header().Get("X-Request-Id")
		if hdr == "cb-1" && got != "cb-1" || hdr != "cb-1" && !strings.HasPrefix(got, prefix+"-") {
			t.Errorf("X-Request-Id %q: answered %q", hdr, got)
		}
	}
	recs := records(t, &buf)
	if len(recs) != 3 {
		t.Fatalf("got %d lines; want 3", len(recs))
	}
	if recs[0]["request_id"] != "cb-1" || recs[1]["request_id"] == recs[2]["request_id"] || recs[1]["request_id"] == nil {
		t.Errorf("request ids = %v, %v, %v; want cb-1 then two fresh ones", recs[0]["request_id"], recs[1]["request_id"], recs[2]["request_id"])
	}
}
