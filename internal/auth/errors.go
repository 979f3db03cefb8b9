package auth

import "errors"

var (
	// ErrUnauthenticated: the caller could not be identified (no
	// credentials where anonymous callers are refused, an unknown API key,
	// a certificate naming no caller or two).
	ErrUnauthenticated = errors.New("unauthenticated")

	// ErrPermissionDenied: the caller is known, but its policy does not
	// allow the method, the connection or a scope it asked for.
	ErrPermissionDenied = errors.New("permission denied")
)

// A RefusalError is a call the interceptors refused. It unwraps to Kind,
// ErrUnauthenticated or ErrPermissionDenied, and names who was refused and
// for which connection, for the status's ErrorInfo. Its message never holds
// a credential; it quotes caller-supplied strings clipped.
type RefusalError struct {
	Kind error
	// Caller is the caller's configured name; "" when it is unidentified.
	Caller string
	// Connection is the connection the request named, as sent; "" for none.
	Connection string
	// Message says what was refused, for the caller.
	Message string
}

func (e *RefusalError) Error() string { return e.Message }

// Unwrap makes errors.Is(err, e.Kind) hold.
func (e *RefusalError) Unwrap() error { return e.Kind }
