package sealed_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/cache/sealed"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

func TestConformanceMemory(t *testing.T) {
	clk := cachetest.NewClock(time.Unix(1700000000, 0))
	kr := newKeyring(t, "k1", "k2")
	cachetest.Run(t, func(t *testing.T) cache.Cache {
		return sealed.New(newMemory(t, memory.Options{Now: clk.Now}), kr, nil)
	}, clk.Advancer())
}

func TestConformanceRedis(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	kr := newKeyring(t, "k1", "k2")
	var (
		mu       sync.Mutex
		prefixes = map[cache.Cache]string{}
		n        atomic.Int64
	)
	newCache := func(t *testing.T) cache.Cache {
		prefix := fmt.Sprintf("conformance:%d:", n.Add(1))
		c := sealed.New(newRedis(t, srv, prefix), kr, nil)
		mu.Lock()
		prefixes[c] = prefix
		mu.Unlock()
		return c
	}
	advance := func(t *testing.T, c cache.Cache, d time.Duration) {
		mu.Lock()
		prefix, ok := prefixes[c]
		mu.Unlock()
		if !ok {
			t.Fatal("advance: unknown cache")
		}
		redistest.AdvanceTTLs(t, raw, prefix, d)
	}
	cachetest.Run(t, newCache, advance)
}

// TestMovedValue: a sealed value copied under another key, with the inner
// cache or straight in Redis, does not open there, whichever way it is read.
func TestMovedValue(t *testing.T) {
	kr := newKeyring(t, "k1")
	srv := redistest.Start(t)
	raw := srv.Client(t)
	const prefix = "tokenbroker:v1:"
	for _, tt := range []struct {
		name string
		// setup returns the inner cache and a function that copies the
		// stored bytes of one key to another, below the sealed layer.
		setup func(t *testing.T) (cache.Cache, func(from, to string))
	}{
		{"memory", func(t *testing.T) (cache.Cache, func(from, to string)) {
			inner := newMemory(t, memory.Options{})
			return inner, func(from, to string) {
				v, err := inner.Get(t.Context(), from)
				if err != nil {
					t.Fatal(err)
				}
				if err := inner.Set(t.Context(), to, v, 0); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"redis", func(t *testing.T) (cache.Cache, func(from, to string)) {
			return newRedis(t, srv, prefix), func(from, to string) {
				v, err := raw.Get(t.Context(), prefix+from).Bytes()
				if err != nil {
					t.Fatal(err)
				}
				if err := raw.Set(t.Context(), prefix+to, v, 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			inner, move := tt.setup(t)
			c := sealed.New(inner, kr, nil)
			ctx := t.Context()
			if err := c.Set(ctx, "grant:victim", []byte("rt-victim"), 0); err != nil {
				t.Fatal(err)
			}
			for _, to := range []string{"grant:attacker", "grant:victim2", "token:victim"} {
				move("grant:victim", to)
				if got, err := c.Get(ctx, to); !errors.Is(err, sealed.ErrDecrypt) {
					t.Errorf("Get(%s) of a value moved there = <%d bytes>, %v; want error wrapping ErrDecrypt", to, len(got), err)
				}
				if ok, err := c.CompareAndDelete(ctx, to, []byte("rt-victim")); ok || !errors.Is(err, sealed.ErrDecrypt) {
					t.Errorf("CompareAndDelete(%s) of a value moved there = %v, %v; want false and ErrDecrypt", to, ok, err)
				}
				if got, err := c.GetDel(ctx, to); !errors.Is(err, sealed.ErrDecrypt) {
					t.Errorf("GetDel(%s) of a value moved there = <%d bytes>, %v; want error wrapping ErrDecrypt", to, len(got), err)
				}
			}
			if got, err := c.Get(ctx, "grant:victim"); err != nil || string(got) != "rt-victim" {
				t.Errorf("Get(grant:victim) = <%d bytes>, %v; want the value, still in place", len(got), err)
			}
		})
	}
}

// TestRotation: after a key is added, values sealed before stay readable
// and new writes, by every write method, carry the new key id.
func TestRotationThroughCache(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	const prefix = "tokenbroker:v1:"
	ctx := t.Context()
	inner := newRedis(t, srv, prefix)
	keyID := func(key string) string {
		t.Helper()
		v, err := raw.Get(ctx, prefix+key).Bytes()
		if err != nil {
			t.Fatalf("raw GET %s: %v", key, err)
		}
		_, id := header(t, v)
		return id
	}

	before := sealed.New(inner, newKeyring(t, "k1"), nil)
	if err := before.Set(ctx, "grant:a", []byte("old grant"), 0); err != nil {
		t.Fatal(err)
	}
	if err := before.Set(ctx, "token:a", []byte("old token"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := keyID("grant:a"); got != "k1" {
		t.Fatalf("key id of a value written before rotation = %q; want %q", got, "k1")
	}

	after := sealed.New(inner, newKeyring(t, "k1", "k2"), nil)
	for _, k := range []string{"grant:a", "token:a"} {
		got, err := after.Get(ctx, k)
		if err != nil || !strings.HasPrefix(string(got), "old ") {
			t.Errorf("after rotation, Get(%s) = <%d bytes>, %v; want the old value", k, len(got), err)
		}
	}
	if err := after.Set(ctx, "grant:b", []byte("new grant"), 0); err != nil {
		t.Fatal(err)
	}
	if err := after.Set(ctx, "grant:a", []byte("rewritten"), 0); err != nil {
		t.Fatal(err)
	}
	if ok, err := after.SetNX(ctx, "authstate:s", []byte("state"), time.Minute); !ok || err != nil {
		t.Fatalf("SetNX() = %v, %v", ok, err)
	}
	lease, _, err := after.TryLock(ctx, "{c}", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Commit(ctx, cache.Write{Key: "grant:{c}", Value: []byte("leased")}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"grant:b", "grant:a", "authstate:s", "grant:{c}"} {
		if got := keyID(k); got != "k2" {
			t.Errorf("key id of %s written after rotation = %q; want %q", k, got, "k2")
		}
	}
	if got := keyID("token:a"); got != "k1" {
		t.Errorf("key id of token:a, not rewritten = %q; want %q", got, "k1")
	}
	if got, err := after.Get(ctx, "grant:a"); err != nil || string(got) != "rewritten" {
		t.Errorf("Get(grant:a) = <%d bytes>, %v; want the rewritten value", len(got), err)
	}
	// The old key can be used only to read until it is removed.
	if got, err := after.GetDel(ctx, "token:a"); err != nil || string(got) != "old token" {
		t.Errorf("GetDel(token:a) = <%d bytes>, %v; want the old value", len(got), err)
	}
}

// TestTamperedInRedis: a value changed in Redis, in any part, or cut short,
// fails to open.
func TestTamperedInRedis(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	const prefix = "tokenbroker:v1:"
	ctx := t.Context()
	c := sealed.New(newRedis(t, srv, prefix), newKeyring(t, "k1"), nil)
	if err := c.Set(ctx, "grant:a", []byte("a grant"), 0); err != nil {
		t.Fatal(err)
	}
	good, err := raw.Get(ctx, prefix+"grant:a").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	variants := map[string][]byte{
		"truncated":     good[:len(good)-1],
		"extended":      append(bytes.Clone(good), 'x'),
		"header only":   good[:4],
		"empty":         {},
		"plaintext":     []byte("a grant"),
		"nonce swapped": append(append(bytes.Clone(good[:4]), bytes.Repeat([]byte{7}, 12)...), good[16:]...),
	}
	for i := range good {
		v := bytes.Clone(good)
		v[i] ^= 0x20
		variants[fmt.Sprintf("byte %d changed", i)] = v
	}
	for name, v := range variants {
		if err := raw.Set(ctx, prefix+"grant:a", v, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if got, err := c.Get(ctx, "grant:a"); !errors.Is(err, sealed.ErrDecrypt) {
			t.Errorf("%s: Get() = <%d bytes>, %v; want error wrapping ErrDecrypt", name, len(got), err)
		}
	}
	if err := raw.Set(ctx, prefix+"grant:a", good, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "grant:a"); err != nil || string(got) != "a grant" {
		t.Errorf("Get() of the value put back = <%d bytes>, %v; want the value", len(got), err)
	}
}

// dumpSecrets are plaintexts written through the sealed cache; a dump of
// the store must not hold any of them.
var dumpSecrets = map[string]string{
	"access token":   "at-DUMPTEST-4f1c2b9e7a-access",
	"refresh token":  "rt-DUMPTEST-91d0c3aa5e-refresh",
	"device secret":  "ds-DUMPTEST-0b7e55c1f2-device",
	"client secret":  "cs-DUMPTEST-e3a8d4f610-client",
	"auth state":     "st-DUMPTEST-5c2f9e01bd-state",
	"pkce verifier":  "pv-DUMPTEST-a7a7b3c3d9-verifier",
	"single-use tok": "su-DUMPTEST-2d8e6f4a10-getdel",
}

// writeSecrets stores dumpSecrets through c the ways the broker does: raw
// and inside JSON, durable and with a TTL, by Set and by SetNX.
func writeSecrets(t *testing.T, c cache.Cache) {
	t.Helper()
	ctx := t.Context()
	set := func(key string, v []byte, ttl time.Duration) {
		t.Helper()
		if err := c.Set(ctx, key, v, ttl); err != nil {
			t.Fatalf("Set(%s) = %v", key, err)
		}
	}
	s := dumpSecrets
	token, _ := json.Marshal(map[string]any{"access_token": s["access token"], "token_type": "Bearer"})
	grant, _ := json.Marshal(map[string]any{"refresh_token": s["refresh token"], "device_secret": s["device secret"], "client_secret": s["client secret"]})
	set("token:conn\x00read", token, time.Hour)
	set("grant:conn", grant, 0)
	set("grant:raw", []byte(s["refresh token"]), 0)
	set("secret:raw", []byte(s["client secret"]), 0)
	set("device:raw", []byte(s["device secret"]), 0)
	set("getdel:raw", []byte(s["single-use tok"]), 0)
	set("token:raw", []byte(s["access token"]), time.Hour)
	state, _ := json.Marshal(map[string]any{"state": s["auth state"], "verifier": s["pkce verifier"]})
	if ok, err := c.SetNX(ctx, "authstate:x", state, time.Minute); !ok || err != nil {
		t.Fatalf("SetNX(authstate:x) = %v, %v", ok, err)
	}
	lease, _, err := c.TryLock(ctx, "{leased}", time.Minute)
	if err != nil {
		t.Fatalf("TryLock() = %v", err)
	}
	rotated, _ := json.Marshal(map[string]any{"refresh_token": s["refresh token"] + "-rotated"})
	if err := lease.Commit(ctx,
		cache.Write{Key: "grant:{leased}", Value: rotated},
		cache.Write{Key: "token:{leased}", Value: []byte(s["access token"]), TTL: time.Hour}); err != nil {
		t.Fatalf("Commit(grant:{leased}, token:{leased}) = %v", err)
	}
}

// leaked returns the labels of the secrets that appear in dump, raw or as
// base64 (how JSON holds bytes).
func leaked(dump []byte) []string {
	var found []string
	for label, s := range dumpSecrets {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s))} {
			if bytes.Contains(dump, []byte(form)) {
				found = append(found, label)
				break
			}
		}
	}
	sort.Strings(found)
	return found
}

// TestRedisDumpHoldsNoPlaintext: KEYS * and GET of every key, after the
// secrets were written, show none of them.
func TestRedisDumpHoldsNoPlaintext(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	ctx := t.Context()
	c := sealed.New(newRedis(t, srv, "tokenbroker:v1:"), newKeyring(t, "k1", "k2"), nil)
	writeSecrets(t, c)

	dump := dumpRedis(t, raw)
	if got := leaked(dump); len(got) > 0 {
		t.Errorf("Redis dump (%d bytes) holds these secrets in plaintext: %v", len(dump), got)
	}
	// The check can fail: the same secrets written unsealed are found.
	control := newRedis(t, srv, "control:")
	writeSecrets(t, control)
	if got := leaked(dumpRedis(t, raw)); len(got) != len(dumpSecrets) {
		t.Errorf("control: a dump of unsealed values shows %d of %d secrets; the check is broken", len(got), len(dumpSecrets))
	}
	if got, err := c.Get(ctx, "grant:raw"); err != nil || string(got) != dumpSecrets["refresh token"] {
		t.Errorf("Get(grant:raw) = <%d bytes>, %v; want the secret back", len(got), err)
	}
}

func dumpRedis(t *testing.T, raw *goredis.Client) []byte {
	t.Helper()
	ctx := t.Context()
	keys, err := raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("Redis holds no keys: the dump would prove nothing")
	}
	var dump bytes.Buffer
	for _, k := range keys {
		v, err := raw.Get(ctx, k).Bytes()
		if err != nil {
			t.Fatalf("GET %q: %v", k, err)
		}
		fmt.Fprintf(&dump, "%s\t%s\n", k, v)
	}
	return dump.Bytes()
}

// TestStateFileHoldsNoPlaintext: the memory cache's state file, which holds
// the durable entries (grants), shows no secret, raw or base64, and neither
// do the values it decodes to. A restart reads them back.
func TestStateFileHoldsNoPlaintext(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state.json")
	kr := newKeyring(t, "k1")
	c := sealed.New(newMemory(t, memory.Options{StateFile: file}), kr, nil)
	writeSecrets(t, c)

	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Entries map[string][]byte `json:"entries"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("state file: %v", err)
	}
	if len(st.Entries) == 0 {
		t.Fatal("state file holds no entries: the check would prove nothing")
	}
	decoded := bytes.Join(func() [][]byte {
		var vs [][]byte
		for _, v := range st.Entries {
			vs = append(vs, v)
		}
		return vs
	}(), []byte("\n"))
	for what, dump := range map[string][]byte{"state file": data, "its decoded values": decoded} {
		if got := leaked(dump); len(got) > 0 {
			t.Errorf("%s (%d bytes) holds these secrets in plaintext: %v", what, len(dump), got)
		}
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	restarted := sealed.New(newMemory(t, memory.Options{StateFile: file}), kr, nil)
	if got, err := restarted.Get(t.Context(), "grant:raw"); err != nil || string(got) != dumpSecrets["refresh token"] {
		t.Errorf("after restart, Get(grant:raw) = <%d bytes>, %v; want the secret back", len(got), err)
	}
}

// TestCompareAndDeletePlaintext: the old value is the plaintext a caller
// read, and only a matching plaintext deletes.
func TestCompareAndDeletePlaintext(t *testing.T) {
	inner := newMemory(t, memory.Options{})
	c := sealed.New(inner, newKeyring(t, "k1"), nil)
	ctx := t.Context()
	if err := c.Set(ctx, "token:a", []byte("at-1"), time.Hour); err != nil {
		t.Fatal(err)
	}
	stored, err := inner.Get(ctx, "token:a")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.CompareAndDelete(ctx, "token:a", stored); ok || err != nil {
		t.Errorf("CompareAndDelete(the sealed bytes) = %v, %v; want false, nil: old is a plaintext", ok, err)
	}
	if ok, err := c.CompareAndDelete(ctx, "token:a", []byte("at-2")); ok || err != nil {
		t.Errorf("CompareAndDelete(other plaintext) = %v, %v; want false, nil", ok, err)
	}
	// The same plaintext written again is a new sealed value, and still matches.
	if err := c.Set(ctx, "token:a", []byte("at-1"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.CompareAndDelete(ctx, "token:a", []byte("at-1")); !ok || err != nil {
		t.Errorf("CompareAndDelete(the plaintext) = %v, %v; want true, nil", ok, err)
	}
	if _, err := inner.Get(ctx, "token:a"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("inner Get(token:a) after the delete = %v; want ErrNotFound", err)
	}
}

// TestPublisher: messages pass through to an inner cache that has
// pub/sub, and go nowhere, without error, when it has none.
func TestPublisher(t *testing.T) {
	ctx := t.Context()
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		kr := newKeyring(t, "k1")
		pub := sealed.New(newRedis(t, srv, "tokenbroker:v1:"), kr, nil)
		sub := sealed.New(newRedis(t, srv, "tokenbroker:v1:"), kr, nil)
		got := make(chan string, 1)
		stop, err := sub.Subscribe(ctx, "invalidate", func(msg []byte) { got <- string(msg) })
		if err != nil {
			t.Fatalf("Subscribe() = %v", err)
		}
		defer stop()
		// The subscription may not be active yet: publish until it is.
		for {
			if err := pub.Publish(ctx, "invalidate", []byte("token:a")); err != nil {
				t.Fatalf("Publish() = %v", err)
			}
			select {
			case msg := <-got:
				if msg != "token:a" {
					t.Errorf("received %q; want %q", msg, "token:a")
				}
				return
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
				t.Fatal("no message received")
			}
		}
	})
	t.Run("memory", func(t *testing.T) {
		c := sealed.New(newMemory(t, memory.Options{}), newKeyring(t, "k1"), nil)
		stop, err := c.Subscribe(ctx, "invalidate", func([]byte) { t.Error("a message was delivered") })
		if err != nil || stop == nil {
			t.Fatalf("Subscribe() = %v, %v; want a stop function, nil", stop != nil, err)
		}
		if err := c.Publish(ctx, "invalidate", []byte("token:a")); err != nil {
			t.Errorf("Publish() = %v; want nil", err)
		}
		stop()
	})
}

// TestRandomnessFailure: when no nonce can be read, nothing is written.
func TestRandomnessFailure(t *testing.T) {
	inner := newMemory(t, memory.Options{})
	c := sealed.New(inner, newKeyring(t, "k1"), iotest.ErrReader(errors.New("no entropy")))
	ctx := t.Context()
	if err := c.Set(ctx, "k", []byte("v"), 0); err == nil || !strings.Contains(err.Error(), "no entropy") {
		t.Errorf("Set() with failing randomness = %v; want the reader's error", err)
	}
	if ok, err := c.SetNX(ctx, "k", []byte("v"), time.Minute); ok || err == nil {
		t.Errorf("SetNX() with failing randomness = %v, %v; want false and an error", ok, err)
	}
	lease, _, err := c.TryLock(ctx, "{k}", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Commit(ctx, cache.Write{Key: "k", Value: []byte("v")}); err == nil {
		t.Error("Commit() with failing randomness = nil; want an error")
	}
	if _, err := inner.Get(ctx, "k"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("inner Get(k) = %v; want ErrNotFound: nothing written", err)
	}
}

func newMemory(t *testing.T, o memory.Options) *memory.Cache {
	t.Helper()
	c, err := memory.New(o)
	if err != nil {
		t.Fatalf("memory.New() = %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newRedis returns a Redis cache on srv, with its own client, under prefix.
func newRedis(t *testing.T, srv *redistest.Server, prefix string) *redis.Cache {
	t.Helper()
	c, err := redis.New(redis.Options{Client: redis.NewClient(redis.ClientConfig{Addrs: []string{srv.Addr()}}), Prefix: prefix})
	if err != nil {
		t.Fatalf("redis.New() = %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
