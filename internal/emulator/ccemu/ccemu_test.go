package ccemu_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
)

const (
	clientID     = "client 1"
	clientSecret = "p+a%s:s!^= w"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newServer(t *testing.T, opts ccemu.Options) (*ccemu.Server, string, *clock) {
	t.Helper()
	clk := &clock{t: time.Unix(1700000000, 0)}
	if opts.ClientID == "" {
		opts.ClientID, opts.ClientSecret = clientID, clientSecret
	}
	opts.Now = clk.Now
	emu := ccemu.New(opts)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	return emu, srv.URL + ccemu.TokenPath, clk
}

// formBasic is RFC 6749 §2.3.1 Basic: each part form-encoded first.
func formBasic(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

type request struct {
	method string
	ctype  string // "" means application/x-www-form-urlencoded; "-" means none
	authz  string
	query  string
	body   string
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
}

func do(t *testing.T, u string, rq request) reply {
	t.Helper()
	r, err := post(u, rq)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// post sends rq; unlike do it may run outside the test goroutine.
func post(u string, rq request) (reply, error) {
	if rq.method == "" {
		rq.method = http.MethodPost
	}
	if rq.query != "" {
		u += "?" + rq.query
	}
	req, err := http.NewRequest(rq.method, u, strings.NewReader(rq.body))
	if err != nil {
		return reply{}, err
	}
	switch rq.ctype {
	case "":
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	case "-":
	default:
		req.Header.Set("Content-Type", rq.ctype)
	}
	if rq.authz != "" {
		req.Header.Set("Authorization", rq.authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	r := reply{status: resp.StatusCode, header: resp.Header}
	_ = json.Unmarshal(data, &r.body)
	return r, nil
}

func form(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v.Encode()
}

func TestRequestChecks(t *testing.T) {
	basic := formBasic(clientID, clientSecret)
	tests := []struct {
		name      string
		opts      ccemu.Options
		req       request
		wantCode  int
		wantError string // the OAuth error code; "" on success
		wantScope string // on success
	}{
		{
			name:     "basic ok, default scopes",
			req:      request{authz: basic, body: form("grant_type", "client_credentials")},
			wantCode: 200, wantScope: "read write admin",
		},
		{
			name:     "body ok with scope",
			req:      request{body: form("grant_type", "client_credentials", "client_id", clientID, "client_secret", clientSecret, "scope", "read write")},
			wantCode: 200, wantScope: "read write",
		},
		{
			name:     "content type with charset",
			req:      request{ctype: "application/x-www-form-urlencoded; charset=utf-8", authz: basic, body: form("grant_type", "client_credentials")},
			wantCode: 200, wantScope: "read write admin",
		},
		{
			name:     "duplicate scope granted once",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "scope", "read read")},
			wantCode: 200, wantScope: "read",
		},
		{
			name:     "required param present",
			opts:     ccemu.Options{RequiredParams: map[string]string{"audience": "payments"}},
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "audience", "payments")},
			wantCode: 200, wantScope: "read write admin",
		},
		{
			name:     "GET",
			req:      request{method: http.MethodGet, authz: basic},
			wantCode: 405, wantError: "invalid_request",
		},
		{
			name:     "PUT",
			req:      request{method: http.MethodPut, authz: basic, body: form("grant_type", "client_credentials")},
			wantCode: 405, wantError: "invalid_request",
		},
		{
			name:     "JSON content type",
			req:      request{ctype: "application/json", authz: basic, body: `{"grant_type":"client_credentials"}`},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "no content type",
			req:      request{ctype: "-", authz: basic, body: form("grant_type", "client_credentials")},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "parameters in the query",
			req:      request{authz: basic, query: form("grant_type", "client_credentials")},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "repeated parameter",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "scope", "read", "scope", "write")},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "missing grant_type",
			req:      request{authz: basic, body: form("scope", "read")},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "password grant",
			req:      request{authz: basic, body: form("grant_type", "password")},
			wantCode: 400, wantError: "unsupported_grant_type",
		},
		{
			name:     "credentials in both places",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "client_id", clientID, "client_secret", clientSecret)},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "client_id in body beside Basic",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "client_id", clientID)},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "no credentials",
			req:      request{body: form("grant_type", "client_credentials")},
			wantCode: 401, wantError: "invalid_client",
		},
		{
			name:     "wrong secret in Basic",
			req:      request{authz: formBasic(clientID, "nope"), body: form("grant_type", "client_credentials")},
			wantCode: 401, wantError: "invalid_client",
		},
		{
			name: "raw Basic with a secret that needs form-encoding",
			req: request{authz: "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(clientID)+":"+clientSecret)),
				body: form("grant_type", "client_credentials")},
			wantCode: 401, wantError: "invalid_client",
		},
		{
			name:     "malformed Basic",
			req:      request{authz: "Basic !!!", body: form("grant_type", "client_credentials")},
			wantCode: 401, wantError: "invalid_client",
		},
		{
			name:     "Bearer instead of Basic",
			req:      request{authz: "Bearer abc", body: form("grant_type", "client_credentials")},
			wantCode: 401, wantError: "invalid_client",
		},
		{
			name:     "body id without secret",
			req:      request{body: form("grant_type", "client_credentials", "client_id", clientID)},
			wantCode: 401, wantError: "invalid_client",
		},
		{
			name:     "scope not allowed",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "scope", "read superuser")},
			wantCode: 400, wantError: "invalid_scope",
		},
		{
			name:     "scope outside custom allowed list",
			opts:     ccemu.Options{AllowedScopes: []string{"read"}},
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "scope", "write")},
			wantCode: 400, wantError: "invalid_scope",
		},
		{
			name:     "scope with double space",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "scope", "read  write")},
			wantCode: 400, wantError: "invalid_scope",
		},
		{
			name:     "empty scope",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "scope", "")},
			wantCode: 400, wantError: "invalid_scope",
		},
		{
			name:     "unknown parameter",
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "audience", "x")},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "required param missing",
			opts:     ccemu.Options{RequiredParams: map[string]string{"audience": "payments"}},
			req:      request{authz: basic, body: form("grant_type", "client_credentials")},
			wantCode: 400, wantError: "invalid_request",
		},
		{
			name:     "required param wrong",
			opts:     ccemu.Options{RequiredParams: map[string]string{"audience": "payments"}},
			req:      request{authz: basic, body: form("grant_type", "client_credentials", "audience", "other")},
			wantCode: 400, wantError: "invalid_request",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			emu, u, _ := newServer(t, tt.opts)
			got := do(t, u, tt.req)
			if got.status != tt.wantCode {
				t.Errorf("status = %d; want %d (error %v)", got.status, tt.wantCode, got.body["error"])
			}
			if n := emu.Requests(); n != 1 {
				t.Errorf("Requests() = %d; want 1", n)
			}
			if tt.wantError != "" {
				if got.body["error"] != tt.wantError {
					t.Errorf("error = %v; want %q", got.body["error"], tt.wantError)
				}
				if n := emu.Issued(); n != 0 {
					t.Errorf("Issued() = %d; want 0", n)
				}
				wantWWW := ""
				if tt.wantCode == 401 {
					wantWWW = `Basic realm="` + ccemu.Realm + `"`
				}
				if www := got.header.Get("WWW-Authenticate"); www != wantWWW {
					t.Errorf("WWW-Authenticate = %q; want %q", www, wantWWW)
				}
				if tt.wantCode == 405 && got.header.Get("Allow") != http.MethodPost {
					t.Errorf("Allow = %q; want POST", got.header.Get("Allow"))
				}
				return
			}
			if got.body["token_type"] != "Bearer" {
				t.Errorf("token_type = %v; want Bearer", got.body["token_type"])
			}
			if got.body["scope"] != tt.wantScope {
				t.Errorf("scope = %v; want %q", got.body["scope"], tt.wantScope)
			}
			if got.body["expires_in"] != float64(36000) {
				t.Errorf("expires_in = %v; want 36000", got.body["expires_in"])
			}
			if cc := got.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q; want no-store", cc)
			}
			tok, _ := got.body["access_token"].(string)
			if !emu.Valid(tok) {
				t.Error("Valid(issued token) = false; want true")
			}
			if n := emu.Issued(); n != 1 {
				t.Errorf("Issued() = %d; want 1", n)
			}
			id, sec := emu.LastCredentials()
			if id != clientID || sec != clientSecret {
				t.Errorf("LastCredentials() id = %q, secret matches = %t; want %q, true", id, sec == clientSecret, clientID)
			}
		})
	}
}

func TestNotFound(t *testing.T) {
	emu, u, _ := newServer(t, ccemu.Options{})
	got := do(t, strings.TrimSuffix(u, ccemu.TokenPath)+"/o/token", request{authz: formBasic(clientID, clientSecret), body: form("grant_type", "client_credentials")})
	if got.status != http.StatusNotFound {
		t.Errorf("status = %d; want 404", got.status)
	}
	if n := emu.Requests(); n != 0 {
		t.Errorf("Requests() = %d; want 0", n)
	}
}

func TestTokenLifetime(t *testing.T) {
	emu, u, clk := newServer(t, ccemu.Options{Lifetime: time.Hour})
	ok := request{authz: formBasic(clientID, clientSecret), body: form("grant_type", "client_credentials")}
	got := do(t, u, ok)
	if got.body["expires_in"] != float64(3600) {
		t.Errorf("expires_in = %v; want 3600", got.body["expires_in"])
	}
	tok, _ := got.body["access_token"].(string)
	if len(tok) < 40 {
		t.Errorf("access token is %d characters; want at least 40 (32 random bytes)", len(tok))
	}
	clk.Advance(time.Hour - time.Second)
	if !emu.Valid(tok) {
		t.Error("Valid() just before expiry = false; want true")
	}
	clk.Advance(time.Second)
	if emu.Valid(tok) {
		t.Error("Valid() at expiry = true; want false")
	}
	if emu.Valid("never-issued") {
		t.Error("Valid(unknown) = true; want false")
	}

	emu.SetLifetime(2 * time.Minute)
	got = do(t, u, ok)
	if got.body["expires_in"] != float64(120) {
		t.Errorf("after SetLifetime expires_in = %v; want 120", got.body["expires_in"])
	}
	if other, _ := got.body["access_token"].(string); other == tok {
		t.Error("two requests got the same token; want distinct ones")
	}

	emu.SetExpiresInString(true)
	got = do(t, u, ok)
	if got.body["expires_in"] != "120" {
		t.Errorf("with SetExpiresInString expires_in = %#v; want \"120\"", got.body["expires_in"])
	}

	emu.SetOmitExpiresIn(true)
	got = do(t, u, ok)
	if v, present := got.body["expires_in"]; present {
		t.Errorf("with SetOmitExpiresIn expires_in = %v; want absent", v)
	}
	tok, _ = got.body["access_token"].(string)
	clk.Advance(2 * time.Minute)
	if emu.Valid(tok) {
		t.Error("a token issued without expires_in is still valid after the lifetime")
	}
}

func TestFailures(t *testing.T) {
	tests := []struct {
		failure   ccemu.Failure
		wantCode  int
		wantError string
		wantHTML  bool
	}{
		{ccemu.InvalidClient, 401, "invalid_client", false},
		{ccemu.InvalidScope, 400, "invalid_scope", false},
		{ccemu.ServerError, 500, "server_error", false},
		{ccemu.NonJSON200, 200, "", true},
		{ccemu.BadGateway502HTML, 502, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.failure.String(), func(t *testing.T) {
			emu, u, _ := newServer(t, ccemu.Options{})
			emu.SetFailure(tt.failure)
			ok := request{authz: formBasic(clientID, clientSecret), body: form("grant_type", "client_credentials")}
			req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(ok.body))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", ok.authz)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode {
				t.Errorf("status = %d; want %d", resp.StatusCode, tt.wantCode)
			}
			var body map[string]any
			jsonErr := json.Unmarshal(data, &body)
			if tt.wantHTML {
				if jsonErr == nil {
					t.Error("body is JSON; want HTML")
				}
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
					t.Errorf("Content-Type = %q; want text/html", ct)
				}
			} else if body["error"] != tt.wantError {
				t.Errorf("error = %v; want %q", body["error"], tt.wantError)
			}
			if n := emu.Issued(); n != 0 {
				t.Errorf("Issued() = %d; want 0", n)
			}
			if id, _ := emu.LastCredentials(); id != clientID {
				t.Errorf("LastCredentials() id = %q; want %q even on failure", id, clientID)
			}

			emu.SetFailure(ccemu.None)
			if got := do(t, u, ok); got.status != 200 {
				t.Errorf("after SetFailure(None) status = %d; want 200", got.status)
			}
			if n := emu.Requests(); n != 2 {
				t.Errorf("Requests() = %d; want 2", n)
			}
		})
	}
}

func TestSlowAnswersWhenClientGivesUp(t *testing.T) {
	emu, u, _ := newServer(t, ccemu.Options{})
	emu.SetFailure(ccemu.Slow(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form("grant_type", "client_credentials")))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", formBasic(clientID, clientSecret))
	start := time.Now()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request succeeded; want a client timeout")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("request took %v; want the client's 50ms timeout", d)
	}
	// httptest.Server.Close (in Cleanup) waits for the handler: it must
	// return once the client is gone rather than sleep an hour.
}

func TestSlowThenAnswers(t *testing.T) {
	emu, u, _ := newServer(t, ccemu.Options{})
	emu.SetFailure(ccemu.Slow(10 * time.Millisecond))
	got := do(t, u, request{authz: formBasic(clientID, clientSecret), body: form("grant_type", "client_credentials")})
	if got.status != 200 {
		t.Errorf("status = %d; want 200 after the delay", got.status)
	}
}

func TestConcurrentUse(t *testing.T) {
	emu, u, _ := newServer(t, ccemu.Options{})
	ok := request{authz: formBasic(clientID, clientSecret), body: form("grant_type", "client_credentials")}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				emu.SetFailure(ccemu.None)
				emu.SetExpiresInString(i%4 == 0)
			}
			if r, err := post(u, ok); err != nil || r.status != 200 {
				t.Errorf("request %d: status %d, error %v; want 200", i, r.status, err)
			}
			_ = emu.Issued()
			_, _ = emu.LastCredentials()
		}()
	}
	wg.Wait()
	if n := emu.Requests(); n != 8 {
		t.Errorf("Requests() = %d; want 8", n)
	}
	if n := emu.Issued(); n != 8 {
		t.Errorf("Issued() = %d; want 8", n)
	}
}
