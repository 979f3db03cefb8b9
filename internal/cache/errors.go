package cache

import "errors"

var (
	// ErrNotFound: no value under the key, or it has expired.
	ErrNotFound = errors.New("cache: not found")
	// ErrUnavailable: the backend could not be reached.
	ErrUnavailable = errors.New("cache: unavailable")
	// ErrClosed: the cache was used after Close.
	ErrClosed = errors.New("cache: closed")
	// ErrInvalidTTL: Set was called with a negative TTL.
	ErrInvalidTTL = errors.New("cache: negative ttl")
)
