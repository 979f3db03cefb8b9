package upstream_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// answer is one canned upstream response.
type answer struct {
	status     int
	retryAfter string
	body       string
}

const tokenBody = `{"access_token":"at-1","token_type":"bearer","expires_in":3600}`

// TestTokenHTTP runs the policy around a real tokenhttp client and an
// httptest upstream that checks each request and answers from a script.
func TestTokenHTTP(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name      string
		answers   []answer
		breaker   *upstream.BreakerConfig
		calls     int // Do calls
		wantReqs  int
		wantWaits []time.Duration
		wantErr   error // nil: a token
		wantCode  string
	}{
		{
			name:      "503 Retry-After 0 then 200",
			answers:   []answer{{status: 503, retryAfter: "0"}, {status: 200, body: tokenBody}},
			calls:     1,
			wantReqs:  2,
			wantWaits: []time.Duration{50 * ms}, // no delay asked for: backoff
		},
		{
			name:      "503 Retry-After 2 then 200",
			answers:   []answer{{status: 503, retryAfter: "2"}, {status: 200, body: tokenBody}},
			calls:     1,
			wantReqs:  2,
			wantWaits: []time.Duration{2 * time.Second},
		},
		{
			name:      "429 then 502 then 200",
			answers:   []answer{{status: 429, retryAfter: "1"}, {status: 502}, {status: 200, body: tokenBody}},
			calls:     1,
			wantReqs:  3,
			wantWaits: []time.Duration{time.Second, 100 * ms},
		},
		{
			name:     "400 invalid_grant: one request",
			answers:  []answer{{status: 400, body: `{"error":"invalid_grant","error_description":"Provided refresh token does not exist"}`}},
			calls:    1,
			wantReqs: 1,
			wantErr:  providers.ErrRejected, wantCode: providers.CodeInvalidGrant,
		},
		{
			name:     "401 invalid_client: one request",
			answers:  []answer{{status: 401, body: `{"error":"invalid_client"}`}},
			calls:    1,
			wantReqs: 1,
			wantErr:  providers.ErrRejected, wantCode: providers.CodeInvalidClient,
		},
		{
			name:     "200 without a token: one request",
			answers:  []answer{{status: 200, body: `{"token_type":"bearer"}`}},
			calls:    1,
			wantReqs: 1,
			wantErr:  providers.ErrInvalidResponse,
		},
		{
			name:      "always 503: MaxAttempts requests",
			answers:   []answer{{status: 503}, {status: 503}, {status: 503}, {status: 503}},
			calls:     1,
			wantReqs:  4,
			wantWaits: []time.Duration{50 * ms, 100 * ms, 200 * ms},
			wantErr:   providers.ErrUnavailable,
		},
		{
			name:      "always 503 with a breaker: the upstream stops seeing requests",
			answers:   []answer{{status: 503}, {status: 503}, {status: 503}, {status: 503}, {status: 503}},
			breaker:   &upstream.BreakerConfig{FailureThreshold: 5},
			calls:     10,
			wantReqs:  5, // 4 from the first Do, 1 from the second, then fail fast
			wantWaits: []time.Duration{50 * ms, 100 * ms, 200 * ms},
			wantErr:   upstream.ErrBreakerOpen,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			reqs := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				n := reqs
				reqs++
				mu.Unlock()
				if r.Method != http.MethodPost || r.URL.Path != "/o/token/" {
					t.Errorf("request %d: %s %s; want POST /o/token/", n, r.Method, r.URL.Path)
				}
				body, _ := io.ReadAll(r.Body)
				if got, want := string(body), "grant_type=client_credentials&scope=read"; got != want {
					t.Errorf("request %d: body %q; want %q", n, got, want)
				}
				if n >= len(tt.answers) {
					t.Errorf("request %d; want at most %d", n+1, len(tt.answers))
					w.WriteHeader(http.StatusTeapot)
					return
				}
				a := tt.answers[n]
				if a.retryAfter != "" {
					w.Header().Set("Retry-After", a.retryAfter)
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(a.status)
				io.WriteString(w, a.body)
			}))
			defer srv.Close()

			clk := newClock()
			sl := &sleeper{t: t, clk: clk}
			p := upstream.Policy{Rand: fixedRand(0.5), Sleep: sl.Sleep, Now: clk.Now}
			var b *upstream.Breaker
			if tt.breaker != nil {
				p.Breaker = *tt.breaker
				b = p.NewBreaker()
			}
			c := &tokenhttp.Client{HTTP: srv.Client()}
			form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}

			var resp *tokenhttp.Response
			var err error
			for range tt.calls {
				err = p.DoWithBreaker(context.Background(), b, func(ctx context.Context) error {
					var err error
					resp, err = c.Post(ctx, srv.URL+"/o/token/", form, tokenhttp.Auth{Style: tokenhttp.AuthNone})
					return err
				})
			}

			mu.Lock()
			if reqs != tt.wantReqs {
				t.Errorf("upstream requests = %d; want %d", reqs, tt.wantReqs)
			}
			mu.Unlock()
			if diff := cmp.Diff(tt.wantWaits, sl.Waits()); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Do() = %v; want nil", err)
				}
				if got := resp.AccessToken.Reveal(); got != "at-1" {
					t.Errorf("AccessToken = %q; want the upstream's", got)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Do() = %v; want errors.Is %v", err, tt.wantErr)
			}
			if got := providers.OAuthCode(err); got != tt.wantCode {
				t.Errorf("OAuthCode(Do()) = %q; want %q", got, tt.wantCode)
			}
		})
	}
}
