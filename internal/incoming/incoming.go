// Package incoming reads a value of a gRPC call's incoming metadata
// without copying the metadata and without walking it.
//
// grpc-go offers metadata.FromIncomingContext, which copies the whole map
// (lower-casing every key and copying every value), and
// metadata.ValueFromIncomingContext, which copies the values it finds and,
// for a key that is absent, compares it case-insensitively with every key.
// On the hit path the broker asks for two headers that are usually absent
// (x-request-id and, from anonymous callers, authorization), so both cost
// a walk of every header on every call. Get is a single map lookup instead.
package incoming

import (
	"context"

	"google.golang.org/grpc/metadata"
)

// Get returns the values of key in ctx's incoming metadata, or nil. key
// must be lower case: Get matches it exactly. That is what a call through
// grpc-go's server carries: HTTP/2 header names are lower case on the wire
// (golang.org/x/net/http2 refuses a request with an upper-case name), the
// http.Handler transport lower-cases them, and metadata.New, Pairs and
// NewIncomingContext's usual sources lower-case theirs. Only a metadata.MD
// literal with an upper-case key, which no server call carries, reads
// differently from metadata.ValueFromIncomingContext.
//
// The slice is the metadata's own: the caller must not modify it.
func Get(ctx context.Context, key string) []string {
	if mdKey == nil {
		return metadata.ValueFromIncomingContext(ctx, key)
	}
	md, _ := ctx.Value(mdKey).(metadata.MD)
	return md[key]
}

// mdKey is the context key under which package metadata stores incoming
// metadata. The key's type is unexported, so it is learned by asking
// metadata.ValueFromIncomingContext to look in a context that remembers
// what it was asked for, and then checked: if grpc-go ever stores incoming
// metadata differently, mdKey is nil and Get does what grpc-go's lookup
// does (TestFastPath fails, so the slower path is not kept unnoticed).
var mdKey = learnKey()

func learnKey() any {
	spy := &keySpy{Context: context.Background()}
	_ = metadata.ValueFromIncomingContext(spy, "x")
	if spy.key == nil {
		return nil
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x", "y"))
	if md, ok := ctx.Value(spy.key).(metadata.MD); !ok || len(md["x"]) != 1 || md["x"][0] != "y" {
		return nil
	}
	return spy.key
}

// keySpy is a context that records the first key it is asked for.
type keySpy struct {
	context.Context
	key any
}

func (s *keySpy) Value(key any) any {
	if s.key == nil {
		s.key = key
	}
	return nil
}
