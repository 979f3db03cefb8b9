package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/reqlog"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error.
const ErrorDomain = "tokenbroker.v1"

// ErrorInfo reasons.
const (
	ReasonUnknownConnection   = "UNKNOWN_CONNECTION"
	ReasonInvalidArgument     = "INVALID_ARGUMENT"
	ReasonUpstreamRejected    = "UPSTREAM_REJECTED"
	ReasonUpstreamUnavailable = "UPSTREAM_UNAVAILABLE"
	ReasonUpstreamInvalid     = "UPSTREAM_INVALID_RESPONSE"
	ReasonNeedsAuthorization  = "NEEDS_AUTHORIZATION"
	ReasonRevoked             = "GRANT_REVOKED"
	ReasonNotSupported        = "NOT_SUPPORTED"
	ReasonStore               = "STORE_FAILED"
	ReasonDeadline            = "DEADLINE_EXCEEDED"
	ReasonCanceled            = "CANCELED"
	ReasonInvalidState        = "INVALID_STATE"
	ReasonUnauthenticated     = "UNAUTHENTICATED"
	ReasonPermissionDenied    = "PERMISSION_DENIED"
)

// ReasonUpstreamUnavailble is the old, misspelt name of
// ReasonUpstreamUnavailable.
//
// Deprecated: use ReasonUpstreamUnavailable.
const ReasonUpstreamUnavailble = ReasonUpstreamUnavailable

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{broker.ErrInvalidArgument}, args...)...)
}

// toStatus maps an error from the broker to a gRPC status carrying a
// google.rpc.ErrorInfo (statusOf); anything unexpected is logged and
// answered as INTERNAL without detail.
func (s *Service) toStatus(ctx context.Context, method, connection string, err error) error {
	st := statusOf(connection, err)
	if st == nil {
		// The detail goes on the call's one log line (reqlog), else here.
		if !reqlog.SetCause(ctx, err) {
			s.log.ErrorContext(ctx, "request failed", "method", method, "connection", validConnection(connection), "err", err)
		}
		return status.Error(codes.Internal, "internal error")
	}
	return st.Err()
}

// RefusalStatus is the status of a call refused by auth's interceptors (a
// *auth.RefusalError), with the caller and connection in its ErrorInfo.
// The service passes it to auth.Authenticator.UnaryInterceptor and
// StreamInterceptor, so that statuses are made in this file only.
func RefusalStatus(err error) error {
	if st := statusOf("", err); st != nil {
		return st.Err()
	}
	return status.Error(codes.Internal, "internal error")
}

// validConnection is connection if it can name one, else "": only such a
// name is repeated in an ErrorInfo or a log line.
func validConnection(connection string) string {
	if connection != "" && len(connection) <= MaxConnectionName && config.NamePattern.MatchString(connection) {
		return connection
	}
	return ""
}

// statusOf is the gRPC status of err, with a google.rpc.ErrorInfo; nil when
// err is none of the errors the service expects. It is the only place that
// chooses status codes. connection is the one the request named, if any.
// Messages are built from errors that never contain secrets.
func statusOf(connection string, err error) *status.Status {
	meta := map[string]string{}
	if c := validConnection(connection); c != "" {
		meta["connection"] = c
	}
	var code codes.Code
	var reason string
	switch {
	case errors.Is(err, auth.ErrUnauthenticated):
		code, reason = codes.Unauthenticated, ReasonUnauthenticated
	case errors.Is(err, auth.ErrPermissionDenied):
		code, reason = codes.PermissionDenied, ReasonPermissionDenied
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
	case errors.Is(err, providers.ErrUnavailable):
		// Includes an upstream that timed out: the caller may retry.
		code, reason = codes.Unavailable, ReasonUpstreamUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		code, reason = codes.DeadlineExceeded, ReasonDeadline
	case errors.Is(err, context.Canceled):
		code, reason = codes.Canceled, ReasonCanceled
	case errors.Is(err, providers.ErrInvalidResponse):
		code, reason = codes.Unavailable, ReasonUpstreamInvalid
	case errors.Is(err, broker.ErrStore):
		code, reason = codes.Unavailable, ReasonStore
	default:
		return nil
	}
	var refusal *auth.RefusalError
	if errors.As(err, &refusal) {
		// Who was refused, and the connection as the request named it,
		// checked for length only: the refusal may be that it is unknown.
		if refusal.Caller != "" {
			meta["caller"] = refusal.Caller
		}
		if c := refusal.Connection; c != "" && len(c) <= MaxConnectionName {
			meta["connection"] = c
		}
	}
	// Every upstream rejection says which, whatever it led to: a revoked
	// grant (invalid_grant), a needed authorization, or the rejection itself.
	if oc := providers.OAuthCode(err); oc != "" {
		meta["oauth_error"] = oc
	}
	st := status.New(code, err.Error())
	if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: meta}); derr == nil {
		st = d
	}
	return st
}
