package broker

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/tokenbroker/tokenbroker/internal/cache/discard"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

func TestL1SweepDropsWhatCannotBeServed(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	const maxAge = 30 * time.Second
	var l l1
	cancelled := map[string]bool{}
	add := func(key string, freshUntil, checked, lastUsed time.Time) {
		e := &l1Entry{freshUntil: freshUntil, checked: checked}
		e.lastUsed.Store(lastUsed.UnixNano())
		e.stop = func() bool { cancelled[key] = true; return true }
		l.m.Store(key, e)
	}
	hour := now.Add(time.Hour)
	add("fresh", hour, now.Add(-time.Second), now.Add(-time.Second))
	add("used-but-unchecked", hour, now.Add(-maxAge-time.Second), now.Add(-time.Second))
	add("idle", hour, now.Add(-maxAge), now.Add(-maxAge))
	add("past-fresh-period", now, now.Add(-time.Second), now)

	if got := l.sweep(now, maxAge); got != 2 {
		t.Errorf("sweep() dropped %d entries; want 2", got)
	}
	for key, want := range map[string]bool{"fresh": true, "used-but-unchecked": true, "idle": false, "past-fresh-period": false} {
		if got := l.load(key) != nil; got != want {
			t.Errorf("after sweep, %q present = %v; want %v", key, got, want)
		}
		if cancelled[key] == want {
			t.Errorf("%q refresh-ahead timer cancelled = %v; want %v", key, cancelled[key], !want)
		}
	}
}

type tenHourProvider struct{}

func (tenHourProvider) Token(_ context.Context, req providers.Request) (*providers.Token, error) {
	return &providers.Token{AccessToken: secret.New("0123456789abcdefghijABCDEFGHIJ-_0123456789a"), TokenType: "Bearer",
		Expiry: time.Now().Add(10 * time.Hour), Scopes: req.Scopes}, nil
}

// TestIdleKeysReleaseMemory: keys nobody asks for again do not stay in
// memory until restart.
func TestIdleKeysReleaseMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 20 000 keys")
	}
	now := time.Now()
	clock := func() time.Time { return now }
	b, err := New(Options{Cache: discard.Cache{}, Now: clock, L1MaxAge: 30 * time.Second, Connections: []Connection{
		{Name: "c", Type: "client_credentials", Provider: tenHourProvider{}, Skew: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const n = 20_000
	before := liveHeap()
	for i := range n {
		if _, err := b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"scope-" + strconv.Itoa(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	filled := liveHeap()
	now = now.Add(29 * time.Second)
	if got := b.l1.sweep(now, b.l1MaxAge); got != 0 {
		t.Fatalf("sweep() before l1_max_age dropped %d entries; want 0", got)
	}
	now = now.Add(time.Second)
	if got := b.l1.sweep(now, b.l1MaxAge); got != n {
		t.Fatalf("sweep() after l1_max_age idle dropped %d entries; want %d", got, n)
	}
	swept := liveHeap()
	held, left := int64(filled)-int64(before), int64(swept)-int64(before)
	t.Logf("heap: %d B for %d keys, %d B after the sweep", held, n, left)
	if held <= 0 || left > held/10 {
		t.Errorf("heap held by %d idle keys: %d B before the sweep, %d B after; want at most a tenth left", n, held, left)
	}
}

func liveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestEncodeOncePerL1Entry: Options.Encode runs once when a token enters
// L1, every hit carries its result, and the cached access token is the
// same text, held once: in the encoding's bytes.
func TestEncodeOncePerL1Entry(t *testing.T) {
	c, err := memory.New(memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	b, err := New(Options{Cache: c, Connections: []Connection{
		{Name: "demo-cc", Type: "client_credentials", Provider: benchProvider{}, Skew: time.Minute},
	}, Encode: func(t *Token) []byte {
		calls.Add(1)
		return []byte("header|" + t.AccessToken.Reveal() + "|" + t.TokenType)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); c.Close() })
	req := Request{Connection: "demo-cc", Scopes: []string{"read"}}
	fetched, err := b.GetToken(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	issued := fetched.AccessToken.Reveal()
	for range 100 {
		hit, err := b.GetToken(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		enc, tok := hit.Encoded.Reveal(), hit.AccessToken.Reveal()
		if enc != "header|"+issued+"|Bearer" {
			t.Fatalf("a hit's Encoded is %d bytes, not Encode's result", len(enc))
		}
		if tok != issued {
			t.Fatal("a hit's access token is not the issued one")
		}
		if p, start := uintptr(unsafe.Pointer(unsafe.StringData(tok))), uintptr(unsafe.Pointer(unsafe.StringData(enc))); p < start || p >= start+uintptr(len(enc)) {
			t.Fatal("the cached access token does not share the encoding's bytes")
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("Encode ran %d times for one token and 100 hits; want 1", n)
	}
}
