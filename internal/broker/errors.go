package broker

import "errors"

var (
	// ErrUnknownConnection: no connection has the requested name.
	ErrUnknownConnection = errors.New("unknown connection")
	// ErrInvalidArgument: the request is malformed (the message says how).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrStore: the durable store failed, so no token was handed out.
	ErrStore = errors.New("state store failed")
	// ErrInvalidState: an authorization state is unknown, expired, already
	// used or bound to another connection. Nothing was sent upstream.
	ErrInvalidState = errors.New("authorization state not accepted")
)
