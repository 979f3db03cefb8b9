package cache

import "errors"

var (
	// ErrNotFound: no value under the key, or it has expired.
	ErrNotFound = errors.New("cache: not found")
	// ErrUnavailable: the backend could not be reached.
	ErrUnavailable = errors.New("cache: unavailable")
	// ErrClosed: the cache was used after Close.
	ErrClosed = errors.New("cache: closed")
	// ErrInvalidTTL: Set was called with a negative TTL, or SetNX or
	// TryLock with a TTL that is not positive.
	ErrInvalidTTL = errors.New("cache: invalid ttl")
	// ErrLocked: TryLock found the lease held by another holder.
	ErrLocked = errors.New("cache: locked")
	// ErrLeaseLost: the lease lapsed; the holder must not write.
	ErrLeaseLost = errors.New("cache: lease lost")
)
