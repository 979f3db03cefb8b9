package providers

import (
	"errors"
	"fmt"
)

var (
	// ErrUnknownType: the configuration names a provider type the registry
	// does not have.
	ErrUnknownType = errors.New("unknown provider type")

	// ErrRejected: the upstream answered with an OAuth error (RFC 6749 §5.2).
	// The detail is an *OAuthError in the chain.
	ErrRejected = errors.New("upstream rejected the request")

	// ErrUnavailable: the upstream could not be reached, timed out, or
	// answered 5xx or 429. Retrying later may succeed.
	ErrUnavailable = errors.New("upstream unavailable")

	// ErrInvalidResponse: the upstream answered 2xx with a body that is not a
	// usable token (not JSON, no access_token, an impossible expiry, …).
	ErrInvalidResponse = errors.New("invalid upstream response")

	// ErrNeedsAuthorization: no grant exists yet; a person must authorize
	// the connection.
	ErrNeedsAuthorization = errors.New("connection needs authorization")

	// ErrRevoked: the upstream revoked the grant (invalid_grant on refresh);
	// a person must re-authorize.
	ErrRevoked = errors.New("grant revoked: re-authorize")

	// ErrNotSupported: the provider lacks the capability asked for, e.g.
	// StartAuthorization on a client_credentials connection.
	ErrNotSupported = errors.New("not supported by this provider")
)

// Terminal OAuth error codes: retrying the same request cannot succeed.
const (
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidClient        = "invalid_client"
	CodeInvalidGrant         = "invalid_grant"
	CodeUnauthorizedClient   = "unauthorized_client"
	CodeUnsupportedGrantType = "unsupported_grant_type"
	CodeInvalidScope         = "invalid_scope"
	CodeAccessDenied         = "access_denied"
)

// An OAuthError is an upstream's RFC 6749 §5.2 error response. Description
// is the upstream's text, truncated; it must not be trusted to be free of
// secrets only because upstreams rarely echo them, so it is scrubbed by the
// code that builds it.
type OAuthError struct {
	Code        string
	Description string
	HTTPStatus  int
}

func (e *OAuthError) Error() string {
	s := fmt.Sprintf("oauth error %q (HTTP %d)", e.Code, e.HTTPStatus)
	if e.Description != "" {
		s += ": " + e.Description
	}
	return s
}

// Unwrap makes errors.Is(err, ErrRejected) hold for every OAuthError.
func (e *OAuthError) Unwrap() error { return ErrRejected }

// OAuthCode returns the OAuth error code in err's chain, or "".
func OAuthCode(err error) string {
	var oe *OAuthError
	if errors.As(err, &oe) {
		return oe.Code
	}
	return ""
}
