package memory_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
)

func TestConformance(t *testing.T) {
	clk := cachetest.NewClock(time.Unix(1700000000, 0))
	t.Run("NoStateFile", func(t *testing.T) {
		cachetest.Run(t, func(t *testing.T) cache.Cache {
			return mustNew(t, memory.Options{Now: clk.Now})
		}, clk.Advancer())
	})
	t.Run("StateFile", func(t *testing.T) {
		cachetest.Run(t, func(t *testing.T) cache.Cache {
			file := filepath.Join(t.TempDir(), "state.json")
			return mustNew(t, memory.Options{Now: clk.Now, StateFile: file})
		}, clk.Advancer())
	})
}

func TestNilNowIsTimeNow(t *testing.T) {
	c := mustNew(t, memory.Options{})
	defer c.Close()
	if err := c.Set(t.Context(), "k", []byte("v"), time.Hour); err != nil {
		t.Fatalf("Set() = %v", err)
	}
	if _, err := c.Get(t.Context(), "k"); err != nil {
		t.Errorf("Get() = %v; want the value set an hour ahead of time.Now", err)
	}
}

func TestStateFileSurvivesRestart(t *testing.T) {
	ctx := t.Context()
	file := filepath.Join(t.TempDir(), "state.json")
	c := mustNew(t, memory.Options{StateFile: file})
	binary := []byte{0, 1, 2, 0xff, 0}
	for _, s := range []struct {
		key   string
		value []byte
		ttl   time.Duration
	}{
		{"durable", []byte("grant"), 0},
		{"binary", binary, 0},
		{"empty", []byte{}, 0},
		{"token", []byte("cached token"), time.Hour},
		{"deleted", []byte("x"), 0},
		{"cad", []byte("x"), 0},
		{"getdel", []byte("x"), 0},
		{"made ttl", []byte("x"), 0},
	} {
		if err := c.Set(ctx, s.key, s.value, s.ttl); err != nil {
			t.Fatalf("Set(%s) = %v", s.key, err)
		}
	}
	if err := c.Delete(ctx, "deleted"); err != nil {
		t.Fatalf("Delete(deleted) = %v", err)
	}
	if ok, err := c.CompareAndDelete(ctx, "cad", []byte("x")); !ok || err != nil {
		t.Fatalf("CompareAndDelete(cad) = %v, %v; want true, nil", ok, err)
	}
	if _, err := c.GetDel(ctx, "getdel"); err != nil {
		t.Fatalf("GetDel(getdel) = %v", err)
	}
	if err := c.Set(ctx, "made ttl", []byte("y"), time.Hour); err != nil {
		t.Fatalf("Set(made ttl) = %v", err)
	}
	if ok, err := c.SetNX(ctx, "nx", []byte("marker"), time.Hour); !ok || err != nil {
		t.Fatalf("SetNX(nx) = %v, %v; want true, nil", ok, err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}

	c2 := mustNew(t, memory.Options{StateFile: file})
	defer c2.Close()
	for _, tt := range []struct {
		key  string
		want []byte // nil: absent
	}{
		{"durable", []byte("grant")},
		{"binary", binary},
		{"empty", []byte{}},
		{"token", nil},
		{"deleted", nil},
		{"cad", nil},
		{"getdel", nil},
		{"made ttl", nil},
		{"nx", nil},
	} {
		got, err := c2.Get(ctx, tt.key)
		switch {
		case tt.want == nil && !errors.Is(err, cache.ErrNotFound):
			t.Errorf("after restart, Get(%s) = <%d bytes>, %v; want not found", tt.key, len(got), err)
		case tt.want != nil && err != nil:
			t.Errorf("after restart, Get(%s) error = %v; want <%d bytes>", tt.key, err, len(tt.want))
		case tt.want != nil && !bytes.Equal(got, tt.want):
			t.Errorf("after restart, Get(%s) = <%d bytes>; want <%d bytes>", tt.key, len(got), len(tt.want))
		}
	}
}

func TestStateFileFormat(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "state.json")
	c := mustNew(t, memory.Options{StateFile: file})
	defer c.Close()
	if err := c.Set(t.Context(), "grant:a", []byte{0, 'g'}, 0); err != nil {
		t.Fatalf("Set() = %v", err)
	}
	if err := c.Set(t.Context(), "token:a", []byte("t"), time.Hour); err != nil {
		t.Fatalf("Set() = %v", err)
	}

	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), fs.FileMode(0o600); got != want {
		t.Errorf("state file mode = %v; want %v", got, want)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Version int               `json:"version"`
		Entries map[string]string `json:"entries"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("state file is not JSON: %v", err)
	}
	if got.Version != 1 {
		t.Errorf("state file version = %d; want 1", got.Version)
	}
	want := map[string]string{"grant:a": "AGc="} // base64 of "\x00g"
	if diff := cmp.Diff(want, got.Entries); diff != "" {
		t.Errorf("state file entries (-want +got):\n%s", diff)
	}
	wantOnlyFile(t, dir, "state.json")
}

func TestStateFileConcurrentWrites(t *testing.T) {
	ctx := t.Context()
	file := filepath.Join(t.TempDir(), "state.json")
	c := mustNew(t, memory.Options{StateFile: file})
	const workers, perWorker = 8, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				key := fmt.Sprintf("k%d-%d", w, i)
				if err := c.Set(ctx, key, []byte(key), 0); err != nil {
					t.Errorf("Set(%s) = %v", key, err)
				}
			}
		})
	}
	wg.Wait()
	c.Close()

	c2 := mustNew(t, memory.Options{StateFile: file})
	defer c2.Close()
	for w := range workers {
		for i := range perWorker {
			key := fmt.Sprintf("k%d-%d", w, i)
			if got, err := c2.Get(ctx, key); err != nil || string(got) != key {
				t.Errorf("after restart, Get(%s) = <%d bytes>, %v; want <%d bytes>", key, len(got), err, len(key))
			}
		}
	}
	wantOnlyFile(t, filepath.Dir(file), "state.json")
}

// TestStateFileCloseRace: every durable write that succeeded is on disk,
// however it raced with Close; Close never leaves an emptied file.
func TestStateFileCloseRace(t *testing.T) {
	ctx := t.Context()
	file := filepath.Join(t.TempDir(), "state.json")
	c := mustNew(t, memory.Options{StateFile: file})
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok []string
	)
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				key := fmt.Sprintf("k%d-%d", w, i)
				if err := c.Set(ctx, key, []byte("v"), 0); err == nil {
					mu.Lock()
					ok = append(ok, key)
					mu.Unlock()
				} else if !errors.Is(err, cache.ErrClosed) {
					t.Errorf("Set(%s) = %v; want nil or an error wrapping %v", key, err, cache.ErrClosed)
				}
			}
		})
	}
	wg.Go(func() {
		for {
			mu.Lock()
			n := len(ok)
			mu.Unlock()
			if n >= 20 {
				break
			}
			runtime.Gosched()
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	wg.Wait()

	c2 := mustNew(t, memory.Options{StateFile: file})
	defer c2.Close()
	for _, key := range ok {
		if _, err := c2.Get(ctx, key); err != nil {
			t.Errorf("after restart, Get(%s) = %v; want the value, whose Set succeeded", key, err)
		}
	}
}

func TestStateFileLoadErrors(t *testing.T) {
	const secret = "c2VjcmV0LXJlZnJlc2gtdG9rZW4=" // must never appear in an error
	for _, tt := range []struct {
		name     string
		contents string
	}{
		{"not json", "secret-refresh-token"},
		{"truncated", `{"version":1,"entries":{"grant":"` + secret},
		{"empty", ""},
		{"null", "null"},
		{"wrong version", `{"version":2,"entries":{"grant":"` + secret + `"}}`},
		{"no version", `{"entries":{"grant":"` + secret + `"}}`},
		{"unknown field", `{"version":1,"entries":{},"` + secret + `":1}`},
		{"bad base64", `{"version":1,"entries":{"grant":"!` + secret + `"}}`},
		{"value not a string", `{"version":1,"entries":{"grant":["` + secret + `"]}}`},
		{"trailing data", `{"version":1,"entries":{}} "` + secret + `"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(file, []byte(tt.contents), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := memory.New(memory.Options{StateFile: file})
			if err == nil {
				c.Close()
				t.Fatalf("New() with a corrupt state file = nil error; want one")
			}
			msg := err.Error()
			if !strings.Contains(msg, file) {
				t.Errorf("New() error does not name the file %s", file)
			}
			for _, leak := range []string{secret, "secret-refresh-token", "c2VjcmV0"} {
				if strings.Contains(msg, leak) {
					t.Errorf("New() error quotes the file's contents (%d-byte message)", len(msg))
				}
			}
		})
	}
}

func TestStateFileMissing(t *testing.T) {
	dir := t.TempDir()
	c, err := memory.New(memory.Options{StateFile: filepath.Join(dir, "state.json")})
	if err != nil {
		t.Fatalf("New() with a missing state file = %v; want nil", err)
	}
	c.Close()

	file := filepath.Join(dir, "no-such-dir", "state.json")
	if c, err := memory.New(memory.Options{StateFile: file}); err == nil {
		c.Close()
		t.Errorf("New() with a missing directory = nil error; want one")
	} else if !strings.Contains(err.Error(), "no-such-dir") {
		t.Errorf("New() error = %q; want it to name the directory", err)
	}
}

func TestStateFileUnreadable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "state.json")
	if err := os.Mkdir(file, 0o700); err != nil { // a directory cannot be read as a file
		t.Fatal(err)
	}
	c, err := memory.New(memory.Options{StateFile: file})
	if err == nil {
		c.Close()
		t.Fatal("New() with an unreadable state file = nil error; want one")
	}
	if !strings.Contains(err.Error(), file) {
		t.Errorf("New() error = %q; want it to name %s", err, file)
	}
}

// TestStateFileWriteFailure: when the file cannot be replaced, the old one is
// left as it was, no temporary file is left behind, and the error says the
// change is only in memory.
func TestStateFileWriteFailure(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	file := filepath.Join(dir, "state.json")
	c := mustNew(t, memory.Options{StateFile: file})
	defer c.Close()
	// Rename cannot replace a non-empty directory.
	if err := os.MkdirAll(filepath.Join(file, "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := c.Set(ctx, "grant", []byte("g"), 0)
	if err == nil {
		t.Fatal("Set() with an unwritable state file = nil; want an error")
	}
	if !strings.Contains(err.Error(), "not saved") {
		t.Errorf("Set() error = %q; want it to say the change was not saved", err)
	}
	if got, err := c.Get(ctx, "grant"); err != nil || string(got) != "g" {
		t.Errorf("Get(grant) after a failed save = <%d bytes>, %v; want the value kept in memory", len(got), err)
	}
	// TTL'd writes do not touch the file, so they still succeed.
	if err := c.Set(ctx, "token", []byte("t"), time.Hour); err != nil {
		t.Errorf("Set(token, 1h) = %v; want nil", err)
	}
	wantOnlyFile(t, dir, "state.json")

	// Once the path is usable again, the next durable write saves everything.
	if err := os.RemoveAll(file); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "grant2", []byte("g2"), 0); err != nil {
		t.Fatalf("Set(grant2) = %v", err)
	}
	c2 := mustNew(t, memory.Options{StateFile: file})
	defer c2.Close()
	for _, k := range []string{"grant", "grant2"} {
		if _, err := c2.Get(ctx, k); err != nil {
			t.Errorf("after restart, Get(%s) = %v; want the value", k, err)
		}
	}
}

func TestStateFileRejectsNonUTF8DurableKey(t *testing.T) {
	c := mustNew(t, memory.Options{StateFile: filepath.Join(t.TempDir(), "state.json")})
	defer c.Close()
	if err := c.Set(t.Context(), "bad\xff", []byte("v"), 0); err == nil {
		t.Error("Set(non-UTF-8 key, durable) = nil; want an error")
	}
	if err := c.Set(t.Context(), "bad\xff", []byte("v"), time.Hour); err != nil {
		t.Errorf("Set(non-UTF-8 key, 1h) = %v; want nil: TTL'd entries are not saved", err)
	}
}

func BenchmarkGetParallel(b *testing.B) {
	c := mustNew(b, memory.Options{})
	defer c.Close()
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("token:%d", i)
		if err := c.Set(b.Context(), keys[i], make([]byte, 200), time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := c.Get(b.Context(), keys[i%len(keys)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func mustNew(t testing.TB, o memory.Options) *memory.Cache {
	t.Helper()
	c, err := memory.New(o)
	if err != nil {
		t.Fatalf("memory.New() = %v", err)
	}
	return c
}

// wantOnlyFile fails unless dir holds exactly the file name: no temporary
// files were left behind.
func wantOnlyFile(t *testing.T, dir, name string) {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, de := range des {
		got = append(got, de.Name())
	}
	if diff := cmp.Diff([]string{name}, got); diff != "" {
		t.Errorf("files in the state directory (-want +got):\n%s", diff)
	}
}
