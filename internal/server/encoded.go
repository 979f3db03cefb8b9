package server

import (
	"context"
	"slices"
	"unsafe"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// A GetToken answered from the broker's in-process cache is the same bytes
// on the wire every time until the token changes. So they are marshaled
// once, when the token enters that cache (EncodeToken, which cmd/broker
// gives the broker as broker.Options.Encode), GetToken's handler answers
// with the token itself (an encodedToken), and Codec sends those bytes as
// they are: a cached call neither allocates its response nor marshals it
// (issue 16; BENCHMARKS.md has the profile).

// EncodeToken returns the GetTokenResponse for t, marshaled: for
// broker.Options.Encode. It returns nil when t cannot be marshaled (an
// access token that is not UTF-8), so calls marshal it themselves and fail
// as they would without it.
func EncodeToken(t *broker.Token) []byte {
	b, err := proto.Marshal(response(t))
	if err != nil {
		return nil
	}
	return b
}

// encodedToken is a token whose Encoded holds its marshaled response.
// Codec sends those bytes; it is a proto.Message too (the response, built
// on demand), so another codec, a stats handler or a binary log sees the
// message GetToken would have returned.
type encodedToken broker.Token

func (t *encodedToken) ProtoReflect() protoreflect.Message {
	return response((*broker.Token)(t)).ProtoReflect()
}

// Codec is grpc-go's proto codec, except that it sends an encodedToken's
// bytes as they are. cmd/broker serves with it (grpc.ForceServerCodecV2).
func Codec() encoding.CodecV2 {
	return codec{encoding.GetCodecV2(grpcproto.Name)}
}

type codec struct{ encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if t, ok := v.(*encodedToken); ok {
		// The bytes of the encoded string, not a copy: grpc-go only reads
		// the buffers it is given, and a SliceBuffer's Free does nothing,
		// so they are never recycled or written to.
		enc := t.Encoded.Reveal()
		return mem.BufferSlice{mem.SliceBuffer(unsafe.Slice(unsafe.StringData(enc), len(enc)))}, nil
	}
	return c.CodecV2.Marshal(v)
}

// RegisterService registers svc on s. GetToken's handler is the generated
// one but for two things: it makes the interceptor's UnaryServerInfo and
// handler once, not on every call, and it answers a token that has its
// encoded response with the token (encodedToken), not a new message.
func RegisterService(s grpc.ServiceRegistrar, svc *Service) {
	desc := tokenbrokerv1.TokenBrokerService_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	i := slices.IndexFunc(desc.Methods, func(m grpc.MethodDesc) bool { return m.MethodName == "GetToken" })
	if i < 0 {
		panic("server: TokenBrokerService has no GetToken method")
	}
	desc.Methods[i].Handler = svc.getTokenHandler()
	s.RegisterService(&desc, svc)
}

// getTokenHandler is GetToken's grpc.MethodDesc handler.
func (s *Service) getTokenHandler() func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	info := &grpc.UnaryServerInfo{Server: s, FullMethod: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName}
	handler := func(ctx context.Context, req any) (any, error) {
		t, err := s.getToken(ctx, req.(*tokenbrokerv1.GetTokenRequest))
		switch {
		case err != nil:
			return nil, err
		case !t.Encoded.IsZero():
			return (*encodedToken)(t), nil
		}
		return response(t), nil
	}
	return func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := new(tokenbrokerv1.GetTokenRequest)
		if err := dec(in); err != nil {
			return nil, err
		}
		if interceptor == nil {
			return handler(ctx, in)
		}
		return interceptor(ctx, in, info, handler)
	}
}
