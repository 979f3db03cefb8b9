package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error.
const ErrorDomain = "tokenbroker.v1"

// ErrorInfo reasons.
const (
	ReasonUnknownConnection  = "UNKNOWN_CONNECTION"
	ReasonInvalidArgument    = "INVALID_ARGUMENT"
	ReasonUpstreamRejected   = "UPSTREAM_REJECTED"
	ReasonUpstreamUnavailble = "UPSTREAM_UNAVAILABLE"
	ReasonUpstreamInvalid    = "UPSTREAM_INVALID_RESPONSE"
	ReasonNeedsAuthorization = "NEEDS_AUTHORIZATION"
	ReasonRevoked            = "GRANT_REVOKED"
	ReasonNotSupported       = "NOT_SUPPORTED"
	ReasonStore              = "STORE_FAILED"
	ReasonDeadline           = "DEADLINE_EXCEEDED"
	ReasonCanceled           = "CANCELED"
	ReasonInvalidState       = "INVALID_STATE"
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{broker.ErrInvalidArgument}, args...)...)
}

// toStatus maps an error from the broker to a gRPC status carrying a
// google.rpc.ErrorInfo. It is the only place that chooses status codes.
// Messages are built from errors that never contain secrets; anything
// unexpected is logged and answered as INTERNAL without detail.
func (s *Service) toStatus(ctx context.Context, method, connection string, err error) error {
	meta := map[string]string{}
	if connection != "" && len(connection) <= MaxConnectionName && config.NamePattern.MatchString(connection) {
		meta["connection"] = connection
	}
	var code codes.Code
	var reason string
	switch {
	case errors.Is(err, broker.ErrInvalidArgument):
		code, reason = codes.InvalidArgument, ReasonInvalidArgument
	case errors.Is(err, broker.ErrInvalidState):
		code, reason = codes.InvalidArgument, ReasonInvalidState
	case errors.Is(err, broker.ErrUnknownConnection):
		code, reason = codes.NotFound, ReasonUnknownConnection
	case errors.Is(err, providers.ErrRevoked):
		code, reason = codes.FailedPrecondition, ReasonRevoked
	case errors.Is(err, providers.ErrNeedsAuthorization):
		code, reason = codes.FailedPrecondition, ReasonNeedsAuthorization
	case errors.Is(err, providers.ErrNotSupported):
		code, reason = codes.FailedPrecondition, ReasonNotSupported
	case errors.Is(err, providers.ErrRejected):
		code, reason = codes.FailedPrecondition, ReasonUpstreamRejected
		if oc := providers.OAuthCode(err); oc != "" {
			meta["oauth_error"] = oc
		}
	case errors.Is(err, providers.ErrUnavailable):
		// Includes an upstream that timed out: the caller may retry.
		code, reason = codes.Unavailable, ReasonUpstreamUnavailble
	case errors.Is(err, context.DeadlineExceeded):
		code, reason = codes.DeadlineExceeded, ReasonDeadline
	case errors.Is(err, context.Canceled):
		code, reason = codes.Canceled, ReasonCanceled
	case errors.Is(err, providers.ErrInvalidResponse):
		code, reason = codes.Unavailable, ReasonUpstreamInvalid
	case errors.Is(err, broker.ErrStore):
		code, reason = codes.Unavailable, ReasonStore
	default:
		s.log.ErrorContext(ctx, "request failed", "method", method, "connection", meta["connection"], "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	st := status.New(code, err.Error())
	if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: meta}); derr == nil {
		st = d
	}
	return st.Err()
}
