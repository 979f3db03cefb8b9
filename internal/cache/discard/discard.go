// Package discard is a cache.Cache that keeps nothing: every read misses,
// every write and lease succeeds. It stands in for a store outside the
// process where a measurement (heap per token) or a test must see only what
// the broker itself holds.
package discard

import (
	"context"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// Cache keeps nothing. Its zero value is ready to use.
type Cache struct{}

var _ cache.Cache = Cache{}

func (Cache) Get(context.Context, string) ([]byte, error) {
	return nil, cache.ErrNotFound
}
func (Cache) Set(context.Context, string, []byte, time.Duration) error { return nil }
func (Cache) Delete(context.Context, string) error                     { return nil }
func (Cache) CompareAndDelete(context.Context, string, []byte) (bool, error) {
	return false, nil
}
func (Cache) SetNX(context.Context, string, []byte, time.Duration) (bool, error) {
	return true, nil
}
func (Cache) GetDel(context.Context, string) ([]byte, error) { return nil, cache.ErrNotFound }
func (Cache) Ping(context.Context) error                     { return nil }
func (Cache) Close() error                                   { return nil }

// TryLock always takes the lease and reads nothing.
func (Cache) TryLock(_ context.Context, _ string, _ time.Duration, keys ...string) (cache.Lease, [][]byte, error) {
	return lease{}, make([][]byte, len(keys)), nil
}

type lease struct{}

func (lease) Renew(context.Context, time.Duration) error   { return nil }
func (lease) Commit(context.Context, ...cache.Write) error { return nil }
func (lease) Release(context.Context) error                { return nil }

func (Cache) IndexAdd(context.Context, string, string, float64) error { return nil }
func (Cache) IndexRemove(context.Context, string, string) error       { return nil }
func (Cache) IndexRange(context.Context, string, string, int) ([]string, error) {
	return nil, nil
}
func (Cache) IndexDue(context.Context, string, float64, int) ([]string, error) { return nil, nil }
func (Cache) IndexLen(context.Context, string) (int64, error)                  { return 0, nil }
