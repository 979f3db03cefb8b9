package reqlog

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestEveryLineCarriesTheRequestID(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ic := UnaryInterceptor(log)
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/GetToken"}
	handler := func(ctx context.Context, _ any) (any, error) {
		log.With("component", "broker").InfoContext(ctx, "inside")
		return nil, status.Error(codes.NotFound, "nope")
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(Header, "abc-123"))
	if _, err := ic(ctx, nil, info, handler); status.Code(err) != codes.NotFound {
		t.Fatalf("interceptor changed the error: %v", err)
	}
	// A caller id with unsafe characters is replaced by our own.
	ctx = metadata.NewIncomingContext(context.Background(), metadata.Pairs(Header, "bad id\n"))
	_, _ = ic(ctx, nil, info, handler)

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d log lines; want 4:\n%s", len(lines), buf.String())
	}
	var ids []string
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		id, _ := rec["request_id"].(string)
		if id == "" {
			t.Errorf("line without request_id: %s", l)
		}
		ids = append(ids, id)
	}
	if ids[0] != "abc-123" || ids[1] != "abc-123" {
		t.Errorf("request ids = %v; want the caller's abc-123 on the first call", ids)
	}
	if ids[2] == "abc-123" || strings.ContainsAny(ids[2], " \n") || ids[2] != ids[3] {
		t.Errorf("request ids = %v; want one fresh safe id for the second call", ids)
	}
}

func TestIDsAreStableAndUnique(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ic := UnaryInterceptor(log)
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/GetToken"}
	seen := map[string]bool{}
	for range 100 {
		var first, second string
		_, _ = ic(context.Background(), nil, info, func(ctx context.Context, _ any) (any, error) {
			first, second = ID(ctx), ID(ctx)
			return nil, nil
		})
		if first == "" || first != second || !strings.HasPrefix(first, prefix+"-") {
			t.Fatalf("ID = %q then %q; want one non-empty id with the process prefix", first, second)
		}
		if seen[first] {
			t.Fatalf("id %q handed out twice", first)
		}
		seen[first] = true
	}
	if got := ID(WithID(context.Background(), "given")); got != "given" {
		t.Errorf("ID(WithID(given)) = %q", got)
	}
	if got := ID(context.Background()); got != "" {
		t.Errorf("ID(no id) = %q; want empty", got)
	}
	if got := ID(WithID(context.Background(), "")); got != "" {
		t.Errorf("ID(WithID(\"\")) = %q; want empty", got)
	}
}

// TestContextStillCarriesEverything: the id context passes other values,
// deadlines and cancellation through.
func TestContextStillCarriesEverything(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	ic := UnaryInterceptor(slog.New(slog.DiscardHandler))
	info := &grpc.UnaryServerInfo{FullMethod: "/x/Y"}
	_, _ = ic(parent, nil, info, func(ctx context.Context, _ any) (any, error) {
		if ctx.Value(key{}) != "v" {
			t.Error("value of the parent context lost")
		}
		child, stop := context.WithCancel(ctx)
		defer stop()
		cancel()
		<-child.Done()
		if ctx.Err() != context.Canceled {
			t.Errorf("Err() = %v; want canceled", ctx.Err())
		}
		return nil, nil
	})
}

// TestAttach: a value attached to a call is found like one put there by
// context.WithValue, next to the request id and the parent's values.
func TestAttach(t *testing.T) {
	type key struct{}
	type other struct{}
	parent := context.WithValue(context.Background(), other{}, "parent")
	c := StartCall(parent)
	if c.Value(key{}) != nil {
		t.Fatal("Value(key) before Attach is not nil")
	}
	c.Attach(key{}, "attached")
	if got := c.Value(key{}); got != "attached" {
		t.Errorf("Value(key) = %v; want attached", got)
	}
	if got := c.Value(other{}); got != "parent" {
		t.Errorf("Value(other) = %v; want the parent's", got)
	}
	if ID(c) == "" {
		t.Error("no request id after Attach")
	}
	if ID(context.WithValue(c, other{}, "child")) != ID(c) {
		t.Error("a child context lost the request id")
	}
}

// TestSuccessAllocatesOnce: at info level a successful call costs the
// interceptor one allocation (the context carrying the id), and nothing
// for logging.
func TestSuccessAllocatesOnce(t *testing.T) {
	log := slog.New(NewHandler(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ic := UnaryInterceptor(log)
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/GetToken"}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("user-agent", "grpc-go", "content-type", "application/grpc"))
	handler := func(context.Context, any) (any, error) { return nil, nil }
	if n := testing.AllocsPerRun(100, func() { _, _ = ic(ctx, nil, info, handler) }); n > 1 {
		t.Errorf("interceptor allocates %v times per successful call; want at most 1", n)
	}
}
