// Package heapcheck measures the live heap a broker holds per cached token:
// it fills a broker with n distinct keys (one scope set each) from an
// in-process provider that issues tokens the size the demo emulator does,
// and compares runtime.MemStats.HeapAlloc after a GC before and after.
package heapcheck

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"runtime"
	"strconv"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/discard"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// TokenLength is the access token length used: the demo emulator's
// (32 random bytes, base64url).
const TokenLength = 43

// Shared says where the shared cache lives.
type Shared string

const (
	// InProcess: the memory cache, so each token is held twice (L1 and
	// the shared store, encoded), as in the default single-replica mode.
	InProcess Shared = "memory"
	// Remote: a shared cache outside the process (Redis); only L1 and the
	// broker's bookkeeping are on this heap.
	Remote Shared = "remote"
)

// Result is one measurement.
type Result struct {
	Shared        Shared
	Tokens        int
	HeapBytes     int64
	BytesPerToken float64
}

// Measure fills a fresh broker with n tokens and reports the heap they hold.
func Measure(ctx context.Context, n int, shared Shared) (Result, error) {
	var c cache.Cache
	switch shared {
	case InProcess:
		mc, err := memory.New(memory.Options{})
		if err != nil {
			return Result{}, err
		}
		c = mc
	case Remote:
		c = discard.Cache{}
	default:
		return Result{}, fmt.Errorf("heapcheck: unknown shared cache %q", shared)
	}
	defer c.Close()
	// Encode as cmd/broker does: each token in L1 holds its encoded
	// GetToken response too.
	b, err := broker.New(broker.Options{Cache: c, Encode: server.EncodeToken, Connections: []broker.Connection{
		{Name: "bench", Type: "client_credentials", Provider: provider{}, Skew: time.Minute},
	}})
	if err != nil {
		return Result{}, err
	}
	defer b.Close()
	before := liveHeap()
	for i := range n {
		// A fresh slice per request, as gRPC decodes one: whatever of it
		// the broker keeps is charged to the broker.
		req := broker.Request{Connection: "bench", Scopes: []string{"scope-" + strconv.Itoa(i)}}
		if _, err := b.GetToken(ctx, req); err != nil {
			return Result{}, err
		}
	}
	after := liveHeap()
	runtime.KeepAlive(b)
	runtime.KeepAlive(c)
	heap := int64(after) - int64(before)
	return Result{Shared: shared, Tokens: n, HeapBytes: heap, BytesPerToken: float64(heap) / float64(n)}, nil
}

func liveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// provider issues opaque tokens valid for ten hours, granting what was asked.
type provider struct{}

func (provider) Token(_ context.Context, req providers.Request) (*providers.Token, error) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	return &providers.Token{AccessToken: secret.New(base64.RawURLEncoding.EncodeToString(raw)),
		TokenType: "Bearer", Expiry: time.Now().Add(10 * time.Hour), Scopes: req.Scopes}, nil
}
