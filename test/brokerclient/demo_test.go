package brokerclient_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/api/brokerclient"
	"github.com/tokenbroker/tokenbroker/internal/testutil/demobroker"
)

// TestDemo gets a token for demo-cc from a real broker, reports it, and gets
// a different one afterwards: first with Invalidate, then through the
// transport when an API answers 401.
func TestDemo(t *testing.T) {
	b := demobroker.Start(t)
	addr, logs := b.GRPC, b.Logs
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := &brokerclient.Config{Connection: "demo-cc", Scopes: []string{"read"}}

	ts := cfg.TokenSource(ctx, conn)
	first, err := ts.Token()
	if err != nil {
		t.Fatalf("Token() error = %v", err)
	}
	if first.AccessToken == "" || first.Type() != "Bearer" || time.Until(first.Expiry) < time.Minute {
		t.Fatalf("Token() = %d-byte %q token expiring in %v; want a Bearer token valid for minutes",
			len(first.AccessToken), first.Type(), time.Until(first.Expiry).Round(time.Second))
	}
	again, err := ts.Token()
	if err != nil {
		t.Fatalf("second Token() error = %v", err)
	}
	if again.AccessToken != first.AccessToken {
		t.Errorf("second Token() returned a different token; want the first reused")
	}

	if err := brokerclient.Invalidate(ctx, conn, "demo-cc", []string{"read"}, first.AccessToken); err != nil {
		t.Fatalf("Invalidate() error = %v", err)
	}
	second, err := cfg.TokenSource(ctx, conn).Token()
	if err != nil {
		t.Fatalf("Token() after Invalidate error = %v", err)
	}
	if second.AccessToken == first.AccessToken {
		t.Errorf("Token() after Invalidate returned the invalidated token; want a new one")
	}

	// An API that has revoked the token it sees first: the transport
	// reports it and retries with a token the broker has not handed out yet.
	var mu sync.Mutex
	var seen []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, r.Header.Get("Authorization"))
		if len(seen) == 1 {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer api.Close()
	client := &http.Client{Transport: cfg.Transport(ctx, conn, api.Client().Transport)}
	resp, err := client.Post(api.URL, "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatalf("Post() error = %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("Post() status = %d; want 200 after the retry", resp.StatusCode)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("API got %d requests; want 2", len(seen))
	}
	if seen[0] != "Bearer "+second.AccessToken {
		t.Errorf("first request did not carry the broker's current token")
	}
	if seen[1] == seen[0] || !strings.HasPrefix(seen[1], "Bearer ") {
		t.Errorf("retry did not carry a new Bearer token")
	}

	for _, tok := range []string{first.AccessToken, second.AccessToken, strings.TrimPrefix(seen[1], "Bearer ")} {
		if strings.Contains(logs.String(), tok) {
			t.Errorf("broker logs contain an access token")
		}
	}
}
