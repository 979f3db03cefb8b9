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

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/api/brokerclient"
)

// fakeAPI is an upstream API that answers 401 to the tokens in rejected
// (every token when rejectAll is set) and records what it received.
type fakeAPI struct {
	mu        sync.Mutex
	rejected  map[string]bool
	rejectAll bool
	auths     []string // Authorization headers, in order
	bodies    []string
	// hold, when set, makes requests with a rejected token wait until
	// holdFor of them have arrived.
	hold    chan struct{}
	holdFor int
}

func (a *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	auth := r.Header.Get("Authorization")
	a.mu.Lock()
	a.auths = append(a.auths, auth)
	a.bodies = append(a.bodies, string(body))
	reject := a.rejectAll || a.rejected[strings.TrimPrefix(auth, "Bearer ")]
	if reject && a.hold != nil {
		if a.holdFor--; a.holdFor == 0 {
			close(a.hold)
		}
	}
	a.mu.Unlock()
	if reject && a.hold != nil {
		select {
		case <-a.hold:
		case <-time.After(10 * time.Second):
		}
	}
	if reject {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, "token rejected", http.StatusUnauthorized)
		return
	}
	io.WriteString(w, "ok")
}

func (a *fakeAPI) received() (auths, bodies []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.auths...), append([]string(nil), a.bodies...)
}

// onlyReader hides bytes.Reader and friends from http.NewRequest, which
// then leaves GetBody nil: the body cannot be sent twice.
type onlyReader struct{ io.Reader }

func TestTransport(t *testing.T) {
	tests := []struct {
		name      string
		rejected  []string // tokens the API rejects
		rejectAll bool
		invErr    error
		keep      bool             // the broker keeps reported tokens
		body      func() io.Reader // nil: a GET without a body
		// want
		status      int
		auths       []string // Authorization headers the API got
		invalidated []string // tokens reported to the broker
		next        string   // Authorization of the request after
		nextGets    int      // GetToken calls by then
	}{
		{
			name:   "accepted",
			status: 200, auths: []string{"Bearer tok-1"},
			next: "Bearer tok-1", nextGets: 1,
		},
		{
			name:     "401 then a retry with a fresh token",
			rejected: []string{"tok-1"},
			status:   200, auths: []string{"Bearer tok-1", "Bearer tok-2"}, invalidated: []string{"tok-1"},
			next: "Bearer tok-2", nextGets: 2,
		},
		{
			name:     "replayable body is sent again",
			rejected: []string{"tok-1"},
			body:     func() io.Reader { return strings.NewReader(`{"amount":1}`) },
			status:   200, auths: []string{"Bearer tok-1", "Bearer tok-2"}, invalidated: []string{"tok-1"},
			next: "Bearer tok-2", nextGets: 2,
		},
		{
			name:      "401 twice does not loop",
			rejectAll: true,
			status:    401, auths: []string{"Bearer tok-1", "Bearer tok-2"}, invalidated: []string{"tok-1"},
			next: "Bearer tok-2", nextGets: 2,
		},
		{
			name:     "non-replayable body is not retried",
			rejected: []string{"tok-1"},
			body:     func() io.Reader { return onlyReader{strings.NewReader(`{"amount":1}`)} },
			status:   401, auths: []string{"Bearer tok-1"}, invalidated: []string{"tok-1"},
			next: "Bearer tok-2", nextGets: 2,
		},
		{
			name:     "broker returning the same token is not retried",
			rejected: []string{"tok-1"},
			keep:     true,
			status:   401, auths: []string{"Bearer tok-1"}, invalidated: []string{"tok-1"},
			next: "Bearer tok-1", nextGets: 2,
		},
		{
			// The broker kept tok-1, but the transport asks it again.
			name:     "failed report is not retried",
			rejected: []string{"tok-1"},
			invErr:   status.Error(codes.Unavailable, "broker down"),
			status:   401, auths: []string{"Bearer tok-1"}, invalidated: []string{"tok-1"},
			next: "Bearer tok-1", nextGets: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeBroker{lifetime: time.Hour, invErr: tt.invErr, keep: tt.keep}
			cc := startFake(t, f)
			api := &fakeAPI{rejected: map[string]bool{}, rejectAll: tt.rejectAll}
			for _, tok := range tt.rejected {
				api.rejected[tok] = true
			}
			srv := httptest.NewServer(api)
			defer srv.Close()

			cfg := &brokerclient.Config{Connection: "pay", Scopes: []string{"read"}}
			client := &http.Client{
				Transport: cfg.Transport(context.Background(), cc, srv.Client().Transport),
				Timeout:   10 * time.Second, // fails a retry loop
			}
			method, wantBody := http.MethodGet, ""
			var body io.Reader
			if tt.body != nil {
				method, body = http.MethodPost, tt.body()
				b, _ := io.ReadAll(tt.body())
				wantBody = string(b)
			}
			req, err := http.NewRequest(method, srv.URL, body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("Do() error = %v", err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("status = %d; want %d", resp.StatusCode, tt.status)
			}
			if resp.StatusCode == 401 && !strings.Contains(string(got), "token rejected") {
				t.Errorf("401 response body = %q; want the API's", got)
			}
			if req.Header.Get("Authorization") != "" {
				t.Errorf("the caller's request was given an Authorization header")
			}
			auths, bodies := api.received()
			if diff := cmp.Diff(tt.auths, auths); diff != "" {
				t.Errorf("Authorization headers the API got (-want +got):\n%s", diff)
			}
			for i, b := range bodies {
				if b != wantBody {
					t.Errorf("request #%d body = %q; want %q", i+1, b, wantBody)
				}
			}
			if diff := cmp.Diff(tt.invalidated, f.invalidated()); diff != "" {
				t.Errorf("tokens reported with InvalidateToken (-want +got):\n%s", diff)
			}
			for i := range len(f.invalidated()) {
				if r := f.invalidate(i); r.GetConnection() != "pay" || !cmp.Equal(r.GetScopes(), []string{"read"}) {
					t.Errorf("InvalidateToken #%d for (%q, %q); want (pay, [read])", i+1, r.GetConnection(), r.GetScopes())
				}
			}

			// The next request, which the API accepts, does not reuse a
			// token the API rejected.
			f.setInvErr(nil)
			api.mu.Lock()
			api.rejectAll, api.rejected = false, map[string]bool{}
			api.mu.Unlock()
			resp, err = client.Get(srv.URL)
			if err != nil {
				t.Fatalf("next Get() error = %v", err)
			}
			resp.Body.Close()
			auths, _ = api.received()
			if got := auths[len(auths)-1]; got != tt.next {
				t.Errorf("next request Authorization = %q; want %q", got, tt.next)
			}
			if got := f.getCount(); got != tt.nextGets {
				t.Errorf("GetToken calls after the next request = %d; want %d", got, tt.nextGets)
			}
		})
	}
}

// TestTransportConcurrent401 has many requests fail with one token: each
// reports it, and together they make the transport fetch one new token.
func TestTransportConcurrent401(t *testing.T) {
	const n = 20
	f := &fakeBroker{lifetime: time.Hour}
	cc := startFake(t, f)
	// No request gets its 401 before all of them have sent tok-1.
	api := &fakeAPI{rejected: map[string]bool{"tok-1": true}, hold: make(chan struct{}), holdFor: n}
	srv := httptest.NewServer(api)
	defer srv.Close()
	cfg := &brokerclient.Config{Connection: "pay"}
	client := &http.Client{Transport: cfg.Transport(context.Background(), cc, srv.Client().Transport)}

	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() { // not wg.Go: this module builds with go 1.23
			defer wg.Done()
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Errorf("Get() error = %v", err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("status = %d; want 200", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if got := f.getCount(); got != 2 {
		t.Errorf("GetToken calls = %d; want 2 (the first token, then one replacement)", got)
	}
	if got := f.invalidated(); len(got) != n {
		t.Errorf("InvalidateToken calls = %d; want %d (one per rejected request)", len(got), n)
	}
}

func TestTransportBrokerError(t *testing.T) {
	f := &fakeBroker{getErr: status.Error(codes.NotFound, `connection "pay" is not configured`)}
	cc := startFake(t, f)
	api := &fakeAPI{}
	srv := httptest.NewServer(api)
	defer srv.Close()
	client := (&brokerclient.Config{Connection: "pay"}).Client(context.Background(), cc)

	body := &closeRecorder{Reader: strings.NewReader("payload")}
	req, err := http.NewRequest(http.MethodPost, srv.URL, body)
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Do(req)
	if got := status.Code(err); got != codes.NotFound {
		t.Errorf("status.Code(Do() error) = %v; want NotFound (error %v)", got, err)
	}
	if !body.closed {
		t.Errorf("request body was not closed")
	}
	if auths, _ := api.received(); len(auths) != 0 {
		t.Errorf("the API got %d requests; want none", len(auths))
	}
}

type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }
