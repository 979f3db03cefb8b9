package replicas_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/testutil/cluster"
)

func TestMain(m *testing.M) { cluster.Main(m) }

// Credentials of the emulated upstreams. They belong to no real account.
const (
	ccClientID = "replica-test-client"
	ccSecret   = "replica-test-client-secret"
	wxClientID = "wx.network"
	wxSeed     = "tokenbroker replica tests seed, not an account anyone uses"
)

// callTimeout bounds one GetToken call made by a test.
const callTimeout = 20 * time.Second

// newCC serves a client_credentials emulator behind wrap (nil: none) and
// returns it with the connection that uses it.
func newCC(t *testing.T, name string, wrap func(http.Handler) http.Handler) (*ccemu.Server, cluster.Connection) {
	t.Helper()
	emu := ccemu.New(ccemu.Options{ClientID: ccClientID, ClientSecret: ccSecret})
	var h http.Handler = emu
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return emu, cluster.ClientCredentials(name, srv.URL+ccemu.TokenPath, ccClientID, ccSecret)
}

// newWX serves a WX gateway emulator with refresh-token rotation behind a
// wire that watches it, and returns the wire with the connection.
func newWX(t *testing.T, name string) (*wire, cluster.Connection) {
	t.Helper()
	w := &wire{emu: wxemu.New(wxemu.Options{ClientID: wxClientID, Rotation: true})}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	return w, cluster.WX(name, srv.URL+wxemu.TokenPath, wxClientID, wxSeed)
}

// A wire sits in front of the WX emulator. It remembers the newest refresh
// token the emulator issued (the only one rotation leaves valid), counts
// invalid_grant answers, and can hold the next refresh request back.
type wire struct {
	emu *wxemu.Server

	mu           sync.Mutex
	newestRT     string
	invalidGrant int
	dropped      int
	hold         time.Duration // delay for the next refresh request
	arrived      chan struct{} // closed when the held request arrives
	onRefresh    func()        // called as each refresh request arrives
}

func (w *wire) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body) // read first: only then does r.Context notice a client that hung up
	form, _ := url.ParseQuery(string(body))
	r.Body = io.NopCloser(bytes.NewReader(body))
	if form.Get("grant_type") == wxemu.GrantRefreshToken {
		w.mu.Lock()
		hold, arrived, hook := w.hold, w.arrived, w.onRefresh
		w.hold, w.arrived = 0, nil
		w.mu.Unlock()
		if hook != nil {
			hook()
		}
		if hold > 0 {
			close(arrived)
			select {
			case <-time.After(hold):
			case <-r.Context().Done():
				// The broker died while its request was on the way: the
				// gateway never saw it.
				w.mu.Lock()
				w.dropped++
				w.mu.Unlock()
				return
			}
		}
	}
	rec := httptest.NewRecorder()
	w.emu.ServeHTTP(rec, r)
	var resp struct {
		Error        string `json:"error"`
		RefreshToken string `json:"refresh_token"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &resp)
	w.mu.Lock()
	if resp.Error == "invalid_grant" {
		w.invalidGrant++
	}
	if resp.RefreshToken != "" {
		w.newestRT = resp.RefreshToken
	}
	w.mu.Unlock()
	for k, vs := range rec.Header() {
		rw.Header()[k] = vs
	}
	rw.WriteHeader(rec.Code)
	_, _ = rw.Write(rec.Body.Bytes())
}

// holdNextRefresh delays the next refresh request by d, or drops it if its
// client goes away meanwhile. The returned channel is closed when it arrives.
func (w *wire) holdNextRefresh(d time.Duration) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hold, w.arrived = d, make(chan struct{})
	return w.arrived
}

func (w *wire) setOnRefresh(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.onRefresh = f
}

func (w *wire) newest() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.newestRT
}

// wxCounts is what the WX emulator and its wire saw.
type wxCounts struct {
	Password, Refresh, RefreshIssued, Reused, InvalidGrant, Dropped int
}

func (w *wire) counts() wxCounts {
	w.mu.Lock()
	defer w.mu.Unlock()
	return wxCounts{
		Password:      w.emu.Count(wxemu.GrantPassword),
		Refresh:       w.emu.Count(wxemu.GrantRefreshToken),
		RefreshIssued: w.emu.Issued(wxemu.GrantRefreshToken),
		Reused:        w.emu.ReusedRefreshTokens(),
		InvalidGrant:  w.invalidGrant,
		Dropped:       w.dropped,
	}
}

// checkStoredRT fails t unless the refresh token in the stored grant is the
// newest one the emulator issued.
func checkStoredRT(t *testing.T, c *cluster.Cluster, w *wire, conn, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := c.Grant(ctx, conn)
	if err != nil {
		t.Fatalf("%s: read the stored grant: %v", when, err)
	}
	rt, _ := g["rt"].(string)
	if rt == "" || rt != w.newest() {
		t.Fatalf("%s: the stored refresh token is not the newest one the emulator issued (stored %d bytes)", when, len(rt))
	}
}

// scripted answers requests with fail(n) for the n-th request (1-based)
// while it returns true, and passes the rest to next.
type scripted struct {
	next http.Handler
	fail func(n int64, w http.ResponseWriter) bool
	n    atomic.Int64
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	n := s.n.Add(1)
	if s.fail(n, w) {
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	s.next.ServeHTTP(w, r)
}

func writeOAuthError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": "scripted by the test"})
}

// getToken calls GetToken with a bounded deadline.
func getToken(client tokenbrokerv1.TokenBrokerServiceClient, conn string, force bool, scopes ...string) (*tokenbrokerv1.GetTokenResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: conn, Scopes: scopes, ForceRefresh: force})
}

func mustToken(t *testing.T, client tokenbrokerv1.TokenBrokerServiceClient, conn string, force bool, scopes ...string) string {
	t.Helper()
	resp, err := getToken(client, conn, force, scopes...)
	if err != nil {
		t.Fatalf("GetToken(%s, %v, force=%t): %v", conn, scopes, force, err)
	}
	if resp.GetAccessToken() == "" {
		t.Fatalf("GetToken(%s, %v): empty access token", conn, scopes)
	}
	return resp.GetAccessToken()
}

// A load runs workers that call GetToken until stopped, bounded by a call
// count and a duration, and counts the failures by status code.
type load struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	calls   atomic.Int64
	mu      sync.Mutex
	failed  map[codes.Code]int
	samples []string
}

type loadWorker struct {
	client tokenbrokerv1.TokenBrokerServiceClient
	conn   string
	scopes []string
	force  bool
	pause  time.Duration
}

// maxLoadCalls and maxLoadTime bound every load.
const (
	maxLoadCalls = 200_000
	maxLoadTime  = 90 * time.Second
)

func startLoad(workers []loadWorker) *load {
	l := &load{stop: make(chan struct{}), failed: map[codes.Code]int{}}
	deadline := time.Now().Add(maxLoadTime)
	for _, w := range workers {
		l.wg.Go(func() {
			for time.Now().Before(deadline) && l.calls.Load() < maxLoadCalls {
				select {
				case <-l.stop:
					return
				default:
				}
				l.calls.Add(1)
				if _, err := getToken(w.client, w.conn, w.force, w.scopes...); err != nil {
					l.mu.Lock()
					l.failed[status.Code(err)]++
					if len(l.samples) < 5 {
						l.samples = append(l.samples, fmt.Sprintf("%s %v force=%t: %v", w.conn, w.scopes, w.force, err))
					}
					l.mu.Unlock()
				}
				if w.pause > 0 {
					select {
					case <-l.stop:
						return
					case <-time.After(w.pause):
					}
				}
			}
		})
	}
	return l
}

// finish stops the load and returns the number of calls and of failures.
func (l *load) finish() (calls, failures int, detail string) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.failed {
		failures += n
	}
	return int(l.calls.Load()), failures, fmt.Sprintf("by code %v; first: %q", l.failed, l.samples)
}

// eventually polls f (bounded by timeout) until it returns nil and fails t
// with f's last error otherwise.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(wait)
	}
}

var errNotYet = errors.New("not yet")
