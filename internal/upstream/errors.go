package upstream

import (
	"errors"
	"time"
)

// ErrBreakerOpen: the connection's circuit breaker refused the call without
// contacting the upstream, because recent calls failed. It always comes
// together with providers.ErrUnavailable in the chain, so a caller that only
// knows the provider sentinels still answers UNAVAILABLE.
var ErrBreakerOpen = errors.New("circuit breaker open")

// A RetryAfterer is an error that carries the delay an upstream asked for
// (HTTP Retry-After, RFC 9110 §10.2.3). Do looks for one anywhere in an
// error's chain; a delay of 0 or less means the upstream asked for none.
type RetryAfterer interface {
	RetryAfterDelay() time.Duration
}
