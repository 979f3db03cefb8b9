package server

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"

	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// TestOAuthErrorInEveryRejection: whatever an upstream rejection led to, the
// ErrorInfo names its OAuth error code; errors without one carry none.
func TestOAuthErrorInEveryRejection(t *testing.T) {
	rejection := func(code string) error {
		return fmt.Errorf("wax: refresh: %w", &providers.OAuthError{Code: code, HTTPStatus: 400})
	}
	tests := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
		oauth  string
	}{
		{"revoked", fmt.Errorf("%w: %w", providers.ErrRevoked, rejection("invalid_grant")), codes.FailedPrecondition, ReasonRevoked, "invalid_grant"},
		{"needs authorization", fmt.Errorf("%w: %w", providers.ErrNeedsAuthorization, rejection("access_denied")), codes.FailedPrecondition, ReasonNeedsAuthorization, "access_denied"},
		{"rejected", rejection("invalid_scope"), codes.FailedPrecondition, ReasonUpstreamRejected, "invalid_scope"},
		{"revoked, code not kept", providers.ErrRevoked, codes.FailedPrecondition, ReasonRevoked, ""},
		{"rejected without a body", fmt.Errorf("%w: HTTP 403 with non-JSON body", providers.ErrRejected), codes.FailedPrecondition, ReasonUpstreamRejected, ""},
		{"unavailable", fmt.Errorf("%w: HTTP 503", providers.ErrUnavailable), codes.Unavailable, ReasonUpstreamUnavailable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := statusOf("demo", tt.err)
			if st == nil {
				t.Fatalf("statusOf(%v) = nil", tt.err)
			}
			var ei *errdetails.ErrorInfo
			for _, d := range st.Details() {
				if e, ok := d.(*errdetails.ErrorInfo); ok {
					ei = e
				}
			}
			if st.Code() != tt.code || ei.GetReason() != tt.reason {
				t.Errorf("statusOf() = %v %s; want %v %s", st.Code(), ei.GetReason(), tt.code, tt.reason)
			}
			got, ok := ei.GetMetadata()["oauth_error"]
			if got != tt.oauth || ok != (tt.oauth != "") {
				t.Errorf("ErrorInfo oauth_error = %q (present %t); want %q", got, ok, tt.oauth)
			}
			if c := ei.GetMetadata()["connection"]; c != "demo" {
				t.Errorf("ErrorInfo connection = %q; want demo", c)
			}
		})
	}
	if st := statusOf("demo", errors.New("something else")); st != nil {
		t.Errorf("statusOf(unexpected error) = %v; want nil (INTERNAL, logged)", st)
	}
}
