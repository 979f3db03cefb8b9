package server_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// TestConnectionNameCharset: every RPC that names a connection refuses a
// name outside config.NamePattern with INVALID_ARGUMENT before the broker
// sees it, and the message does not echo the name.
func TestConnectionNameCharset(t *testing.T) {
	e := start(t, backends[0])
	ctx := context.Background()
	bad := []string{
		"CC",                    // upper case
		"cc ",                   // trailing space
		" cc",                   // leading space
		"c c",                   // space
		"-cc",                   // must start with a letter or digit
		"cc.",                   // must end with a letter or digit
		"cc/../admin",           // path characters
		"cc\n",                  // control character
		"cc\x00",                // NUL
		"c\u00e7",               // non-ASCII
		"cc;drop",               // punctuation
		"{{.Name}}",             // template syntax
		"<script>",              // markup
		strings.Repeat("a", 65), // too long (the length check answers first)
	}
	for _, name := range bad {
		calls := map[string]func() error{
			"GetToken": func() error {
				_, err := e.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: name})
				return err
			},
			"InvalidateToken": func() error {
				_, err := e.client.InvalidateToken(ctx, &tokenbrokerv1.InvalidateTokenRequest{Connection: name, AccessToken: "x"})
				return err
			},
			"StartAuthorization": func() error {
				_, err := e.client.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Connection: name})
				return err
			},
			"CompleteAuthorization": func() error {
				_, err := e.client.CompleteAuthorization(ctx, &tokenbrokerv1.CompleteAuthorizationRequest{Connection: name, Code: "c", State: "s"})
				return err
			},
		}
		for method, call := range calls {
			err := call()
			c, r := reason(err)
			if c != codes.InvalidArgument || r != server.ReasonInvalidArgument {
				t.Errorf("%s(%q) = %v; want INVALID_ARGUMENT %s", method, name, err, server.ReasonInvalidArgument)
				continue
			}
			if msg := status.Convert(err).Message(); len(name) > 1 && strings.Contains(msg, name) {
				t.Errorf("%s(%q): message %q echoes the name", method, name, msg)
			}
		}
	}

	// Names that fit the pattern get past the check: an unknown one is
	// NOT_FOUND, a configured one gets its token.
	for _, name := range []string{"nope", "a", "a.b-c_d", strings.Repeat("a", 64)} {
		_, err := e.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: name})
		if c, r := reason(err); c != codes.NotFound || r != server.ReasonUnknownConnection {
			t.Errorf("GetToken(%q) = %v; want NOT_FOUND %s", name, err, server.ReasonUnknownConnection)
		}
	}
	e.getToken(t, &tokenbrokerv1.GetTokenRequest{Connection: "cc"})
}
