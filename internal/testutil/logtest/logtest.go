// Package logtest captures a test's log output and checks that no secret
// leaked into it. Failure messages name the secret's label, never its text.
package logtest

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// A Buffer is a concurrency-safe log sink.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// New returns a debug-level JSON logger writing to a fresh Buffer: debug, so
// that the most talkative level is the one checked.
func New() (*slog.Logger, *Buffer) {
	b := &Buffer{}
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// Secrets maps a label (printed on failure) to a secret's text.
type Secrets map[string]string

// AssertNoSecrets fails t if any secret, or its base64 or URL-query form,
// appears in logs. Secrets shorter than 6 bytes are too likely to match by
// chance and are skipped.
func AssertNoSecrets(t testing.TB, logs string, secrets Secrets) {
	t.Helper()
	if logs == "" {
		t.Errorf("logtest: no log output captured; the check would prove nothing")
		return
	}
	for label, s := range secrets {
		if len(s) < 6 {
			continue
		}
		forms := []string{s, url.QueryEscape(s), base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s))}
		for _, f := range forms {
			if strings.Contains(logs, f) {
				t.Errorf("logs contain secret %q (%d bytes of log captured)", label, len(logs))
				break
			}
		}
	}
}
