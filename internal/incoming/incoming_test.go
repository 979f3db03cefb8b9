package incoming

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/metadata"
)

// TestFastPath: the key was learned, so Get is a map lookup. If a grpc-go
// upgrade changes how incoming metadata is stored, this fails rather than
// letting every call quietly walk the headers again.
func TestFastPath(t *testing.T) {
	if mdKey == nil {
		t.Fatal("the incoming metadata's context key was not learned: Get falls back to metadata.ValueFromIncomingContext")
	}
}

// TestAgreesWithGRPC: for the metadata a server call carries (lower-case
// keys), Get finds what metadata.ValueFromIncomingContext finds.
func TestAgreesWithGRPC(t *testing.T) {
	md := metadata.Pairs(":authority", "127.0.0.1:9090", "content-type", "application/grpc",
		"user-agent", "grpc-go/1.85.0", "X-Request-Id", "abc", "authorization", "Bearer k", "multi", "1", "multi", "2", "empty", "")
	ctxs := map[string]context.Context{
		"metadata":      metadata.NewIncomingContext(context.Background(), md),
		"none":          context.Background(),
		"outgoing only": metadata.NewOutgoingContext(context.Background(), md),
		"wrapped":       context.WithValue(metadata.NewIncomingContext(context.Background(), md), struct{}{}, 1),
	}
	for name, ctx := range ctxs {
		for _, key := range []string{"x-request-id", "authorization", "multi", "empty", "absent", ":authority", ""} {
			got, want := Get(ctx, key), metadata.ValueFromIncomingContext(ctx, key)
			if !slices.Equal(got, want) || (got == nil) != (want == nil) {
				t.Errorf("%s: Get(%q) = %q; metadata.ValueFromIncomingContext says %q", name, key, got, want)
			}
		}
	}
}

func TestGetAllocatesNothing(t *testing.T) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("user-agent", "grpc-go", "x-request-id", "abc"))
	if n := testing.AllocsPerRun(100, func() { _, _ = Get(ctx, "x-request-id"), Get(ctx, "authorization") }); n != 0 {
		t.Errorf("Get allocates %v times; want 0", n)
	}
}

func BenchmarkGet(b *testing.B) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(":authority", "127.0.0.1:9090",
		"content-type", "application/grpc", "user-agent", "grpc-go/1.85.0"))
	b.Run("incoming.Get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = Get(ctx, "x-request-id")
		}
	})
	b.Run("metadata.ValueFromIncomingContext", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = metadata.ValueFromIncomingContext(ctx, "x-request-id")
		}
	})
	b.Run("metadata.FromIncomingContext", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			md, _ := metadata.FromIncomingContext(ctx)
			_ = md["x-request-id"]
		}
	})
}
