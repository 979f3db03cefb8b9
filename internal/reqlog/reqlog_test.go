package reqlog

import (
	"bytes"
	"context"
	"encoding/json"
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
