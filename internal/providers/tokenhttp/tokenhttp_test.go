package tokenhttp_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

const (
	testID     = "my client+id"
	testSecret = "s3cr+et%20:!^= x"
)

var t0 = time.Unix(1700000000, 0).UTC()

// clock returns t0, t0+1s, t0+2s, … on successive calls, so a test can tell
// which reading ended up where.
func clock() func() time.Time {
	var n atomic.Int64
	return func() time.Time { return t0.Add(time.Duration(n.Add(1)-1) * time.Second) }
}

// upstream starts a server answering every request with h.
func upstream(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL + "/token"
}

// answer returns a handler that writes status, headers and body.
func answer(status int, body string, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func basicAuth() tokenhttp.Auth {
	return tokenhttp.Auth{Style: tokenhttp.AuthBasicForm, ClientID: testID, Secret: secret.New(testSecret)}
}

func TestPostSendsRequest(t *testing.T) {
	b64 := func(s string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name      string
		style     tokenhttp.AuthStyle
		wantAuthz string
		wantForm  url.Values
	}{
		{
			name:      "basic form-encoded",
			style:     tokenhttp.AuthBasicForm,
			wantAuthz: b64(url.QueryEscape(testID) + ":" + url.QueryEscape(testSecret)),
			wantForm:  url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"}},
		},
		{
			name:      "basic raw",
			style:     tokenhttp.AuthBasicRaw,
			wantAuthz: b64(testID + ":" + testSecret),
			wantForm:  url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"}},
		},
		{
			name:  "body",
			style: tokenhttp.AuthBody,
			wantForm: url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"},
				"client_id": {testID}, "client_secret": {testSecret}},
		},
		{
			name:     "none",
			style:    tokenhttp.AuthNone,
			wantForm: url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got struct {
				method, ctype, accept, authz string
				form                         url.Values
			}
			u := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				got.method, got.ctype = r.Method, r.Header.Get("Content-Type")
				got.accept, got.authz = r.Header.Get("Accept"), r.Header.Get("Authorization")
				if err := r.ParseForm(); err != nil {
					t.Errorf("ParseForm: %v", err)
				}
				got.form = r.PostForm
				answer(200, `{"access_token":"tok","token_type":"bearer"}`)(w, r)
			})
			form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"}}
			before := fmt.Sprint(form)
			c := &tokenhttp.Client{}
			auth := tokenhttp.Auth{Style: tt.style, ClientID: testID, Secret: secret.New(testSecret)}
			if _, err := c.Post(context.Background(), u, form, auth); err != nil {
				t.Fatalf("Post: %v", err)
			}
			if got.method != http.MethodPost {
				t.Errorf("method = %q; want POST", got.method)
			}
			if got.ctype != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type = %q; want application/x-www-form-urlencoded", got.ctype)
			}
			if got.accept != "application/json" {
				t.Errorf("Accept = %q; want application/json", got.accept)
			}
			// Compared, never printed: the header holds the secret.
			if got.authz != tt.wantAuthz {
				t.Errorf("Authorization header differs from the expected %s encoding (empty: got %t, want %t)",
					tt.style, got.authz == "", tt.wantAuthz == "")
			}
			if diff := cmp.Diff(tt.wantForm, got.form); diff != "" {
				if tt.style == tokenhttp.AuthBody {
					t.Errorf("form differs (not shown: it holds the secret)")
				} else {
					t.Errorf("form (-want +got):\n%s", diff)
				}
			}
			if after := fmt.Sprint(form); after != before {
				t.Errorf("Post modified the caller's form: %s; want %s", after, before)
			}
		})
	}
}

func TestPostBadAuth(t *testing.T) {
	tests := []struct {
		name string
		auth tokenhttp.Auth
	}{
		{"raw id with colon", tokenhttp.Auth{Style: tokenhttp.AuthBasicRaw, ClientID: "a:b", Secret: secret.New("x")}},
		{"basic without id", tokenhttp.Auth{Style: tokenhttp.AuthBasicForm, Secret: secret.New("x")}},
		{"body without id", tokenhttp.Auth{Style: tokenhttp.AuthBody, Secret: secret.New("x")}},
		{"unknown style", tokenhttp.Auth{Style: tokenhttp.AuthStyle(42), ClientID: "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int32
			u := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
			_, err := (&tokenhttp.Client{}).Post(context.Background(), u, url.Values{}, tt.auth)
			if err == nil {
				t.Fatal("Post: got nil error; want one")
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("upstream got %d requests; want 0", n)
			}
		})
	}
}

func TestPostSuccess(t *testing.T) {
	u := upstream(t, answer(200, `{"access_token":"at-1","token_type":"bearer","expires_in":3600,
		"refresh_token":"rt-1","scope":"read write","id_token":"x.y.z","extra":{"a":1}}`))
	now := clock()
	c := &tokenhttp.Client{Now: now}
	resp, err := c.Post(context.Background(), u, url.Values{"grant_type": {"x"}}, basicAuth())
	if err != nil {
		t.Fatalf("Post: %v", err)
	}
	if !resp.Sent.Equal(t0) {
		t.Errorf("Sent = %v; want the first clock reading %v", resp.Sent, t0)
	}
	if resp.Status != 200 {
		t.Errorf("Status = %d; want 200", resp.Status)
	}
	if resp.AccessToken.Reveal() != "at-1" {
		t.Error("AccessToken is not the one sent")
	}
	if resp.RefreshToken.Reveal() != "rt-1" {
		t.Error("RefreshToken is not the one sent")
	}
	if resp.TokenType != "bearer" {
		t.Errorf("TokenType = %q; want bearer", resp.TokenType)
	}
	if resp.ExpiresIn == nil || *resp.ExpiresIn != 3600 {
		t.Errorf("ExpiresIn = %v; want 3600", resp.ExpiresIn)
	}
	if resp.Scope != "read write" {
		t.Errorf("Scope = %q; want %q", resp.Scope, "read write")
	}
	var keys []string
	for k := range resp.Fields {
		keys = append(keys, k)
	}
	want := []string{"expires_in", "extra", "id_token", "scope", "token_type"}
	if diff := cmp.Diff(want, keys, cmpSorted); diff != "" {
		t.Errorf("Fields keys (-want +got):\n%s", diff)
	}
	if got := string(resp.Fields["extra"]); got != `{"a":1}` {
		t.Errorf(`Fields["extra"] = %s; want {"a":1}`, got)
	}
	if s := fmt.Sprintf("%v %+v", resp, *resp); strings.Contains(s, "at-1") || strings.Contains(s, "rt-1") {
		t.Error("printing a Response reveals a token")
	}
}

var cmpSorted = cmpopts.SortSlices(func(a, b string) bool { return a < b })

func TestExpiresIn(t *testing.T) {
	tests := []struct {
		name    string
		field   string // the expires_in member, or "" for none
		want    int64
		present bool
		wantErr bool
	}{
		{name: "number", field: `3600`, want: 3600, present: true},
		{name: "string", field: `"3600"`, want: 3600, present: true},
		{name: "zero", field: `0`, want: 0, present: true},
		{name: "absolute", field: `1584651600`, want: 1584651600, present: true},
		{name: "integral float", field: `3600.0`, want: 3600, present: true},
		{name: "exponent", field: `3.6e3`, want: 3600, present: true},
		{name: "absent", field: ``},
		{name: "null", field: `null`},
		{name: "negative", field: `-1`, wantErr: true},
		{name: "negative string", field: `"-1"`, wantErr: true},
		{name: "fraction", field: `1.5`, wantErr: true},
		{name: "fraction string", field: `"1.5"`, wantErr: true},
		{name: "garbage string", field: `"soon"`, wantErr: true},
		{name: "empty string", field: `""`, wantErr: true},
		{name: "bool", field: `true`, wantErr: true},
		{name: "object", field: `{}`, wantErr: true},
		{name: "huge", field: `1e30`, wantErr: true},
		{name: "huge string", field: `"99999999999999999999"`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"access_token":"tok","token_type":"Bearer"}`
			if tt.field != "" {
				body = `{"access_token":"tok","token_type":"Bearer","expires_in":` + tt.field + `}`
			}
			u := upstream(t, answer(200, body))
			resp, err := (&tokenhttp.Client{}).Post(context.Background(), u, url.Values{}, basicAuth())
			if tt.wantErr {
				if !errors.Is(err, providers.ErrInvalidResponse) {
					t.Fatalf("Post error = %v; want ErrInvalidResponse", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Post: %v", err)
			}
			switch {
			case !tt.present && resp.ExpiresIn != nil:
				t.Errorf("ExpiresIn = %d; want nil", *resp.ExpiresIn)
			case tt.present && resp.ExpiresIn == nil:
				t.Errorf("ExpiresIn = nil; want %d", tt.want)
			case tt.present && *resp.ExpiresIn != tt.want:
				t.Errorf("ExpiresIn = %d; want %d", *resp.ExpiresIn, tt.want)
			}

			n, ok, err := tokenhttp.ParseExpiresIn(json.RawMessage(tt.field))
			if err != nil || ok != tt.present || n != tt.want {
				t.Errorf("ParseExpiresIn(%s) = %d, %t, %v; want %d, %t, nil", tt.field, n, ok, err, tt.want, tt.present)
			}
		})
	}
}

func TestPostErrors(t *testing.T) {
	const marker = "BODY-MARKER"
	tests := []struct {
		name        string
		handler     http.HandlerFunc
		wantIs      []error
		wantNotIs   []error
		wantStatus  int           // *StatusError.Status, when one is expected
		wantRetry   time.Duration // its RetryAfter
		wantCode    string        // *OAuthError.Code, when one is expected
		wantDesc    string
		wantInMsg   string
		wantNoInMsg string
	}{
		{
			name:       "500 json",
			handler:    answer(500, `{"error":"server_error"}`, "Content-Type", "application/json"),
			wantIs:     []error{providers.ErrUnavailable},
			wantNotIs:  []error{providers.ErrRejected},
			wantStatus: 500,
		},
		{
			name:       "502 html",
			handler:    answer(502, "<html>"+marker+"</html>"),
			wantIs:     []error{providers.ErrUnavailable},
			wantStatus: 502, wantNoInMsg: marker,
		},
		{
			name:       "503 retry-after seconds",
			handler:    answer(503, "", "Retry-After", "120"),
			wantIs:     []error{providers.ErrUnavailable},
			wantStatus: 503, wantRetry: 2 * time.Minute, wantInMsg: "retry after 2m0s",
		},
		{
			// The clock reads t0 before sending and t0+1s after: the date
			// is measured from the second reading.
			name:       "429 retry-after date",
			handler:    answer(429, "", "Retry-After", t0.Add(91*time.Second).Format(http.TimeFormat)),
			wantIs:     []error{providers.ErrUnavailable},
			wantStatus: 429, wantRetry: 90 * time.Second,
		},
		{
			name:       "429 retry-after in the past",
			handler:    answer(429, "", "Retry-After", t0.Add(-time.Hour).Format(http.TimeFormat)),
			wantIs:     []error{providers.ErrUnavailable},
			wantStatus: 429, wantRetry: 0,
		},
		{
			name:       "503 retry-after garbage",
			handler:    answer(503, "", "Retry-After", "soon"),
			wantIs:     []error{providers.ErrUnavailable},
			wantStatus: 503, wantRetry: 0,
		},
		{
			name:      "401 invalid_client",
			handler:   answer(401, `{"error":"invalid_client","error_description":"Client authentication failed"}`, "WWW-Authenticate", `Basic realm="x"`),
			wantIs:    []error{providers.ErrRejected},
			wantNotIs: []error{providers.ErrUnavailable},
			wantCode:  "invalid_client", wantDesc: "Client authentication failed",
		},
		{
			name:     "400 invalid_scope without description",
			handler:  answer(400, `{"error":"invalid_scope"}`),
			wantIs:   []error{providers.ErrRejected},
			wantCode: "invalid_scope",
		},
		{
			name:      "401 non-JSON",
			handler:   answer(401, "<h1>"+marker+"</h1>"),
			wantIs:    []error{providers.ErrRejected},
			wantInMsg: fmt.Sprintf("HTTP 401 with non-JSON body (%d bytes)", len("<h1>"+marker+"</h1>")), wantNoInMsg: marker,
		},
		{
			name:      "403 JSON without error",
			handler:   answer(403, `{"detail":"`+marker+`"}`),
			wantIs:    []error{providers.ErrRejected},
			wantInMsg: "HTTP 403", wantNoInMsg: marker,
		},
		{
			name:      "400 empty body",
			handler:   answer(400, ""),
			wantIs:    []error{providers.ErrRejected},
			wantInMsg: "HTTP 400 with non-JSON body (0 bytes)",
		},
		{
			name:      "302 redirect not followed",
			handler:   answer(302, "", "Location", "/o/token/?x=secret"),
			wantIs:    []error{providers.ErrRejected},
			wantInMsg: `redirect to "/o/token/" not followed`, wantNoInMsg: "secret",
		},
		{
			name:        "200 HTML",
			handler:     answer(200, "<html>"+marker+"</html>"),
			wantIs:      []error{providers.ErrInvalidResponse},
			wantNoInMsg: marker,
		},
		{
			name:        "200 JSON array",
			handler:     answer(200, `["`+marker+`"]`),
			wantIs:      []error{providers.ErrInvalidResponse},
			wantNoInMsg: marker,
		},
		{
			name:      "200 without access_token",
			handler:   answer(200, `{"token_type":"`+marker+`"}`),
			wantIs:    []error{providers.ErrInvalidResponse},
			wantInMsg: "no access_token", wantNoInMsg: marker,
		},
		{
			name:      "200 with empty access_token",
			handler:   answer(200, `{"access_token":""}`),
			wantIs:    []error{providers.ErrInvalidResponse},
			wantInMsg: "no access_token",
		},
		{
			name:        "200 with numeric access_token",
			handler:     answer(200, `{"access_token":12345}`),
			wantIs:      []error{providers.ErrInvalidResponse},
			wantNoInMsg: "12345",
		},
		{
			name:        "200 with an error member",
			handler:     answer(200, `{"error":"`+marker+`"}`),
			wantIs:      []error{providers.ErrInvalidResponse},
			wantNoInMsg: marker,
		},
		{
			name:        "200 with non-string token_type",
			handler:     answer(200, `{"access_token":"`+marker+`","token_type":7}`),
			wantIs:      []error{providers.ErrInvalidResponse},
			wantNoInMsg: marker,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := upstream(t, tt.handler)
			c := &tokenhttp.Client{Now: clock()}
			resp, err := c.Post(context.Background(), u, url.Values{"grant_type": {"client_credentials"}}, basicAuth())
			if err == nil {
				t.Fatalf("Post = %+v, nil; want an error", resp)
			}
			for _, want := range tt.wantIs {
				if !errors.Is(err, want) {
					t.Errorf("Post error = %q; want errors.Is %q", err, want)
				}
			}
			for _, not := range tt.wantNotIs {
				if errors.Is(err, not) {
					t.Errorf("Post error = %q; want not errors.Is %q", err, not)
				}
			}
			var se *tokenhttp.StatusError
			switch {
			case tt.wantStatus == 0 && errors.As(err, &se):
				t.Errorf("Post error = %q is a *StatusError; want not", err)
			case tt.wantStatus != 0 && !errors.As(err, &se):
				t.Errorf("Post error = %q; want a *StatusError", err)
			case tt.wantStatus != 0:
				if se.Status != tt.wantStatus || se.RetryAfter != tt.wantRetry {
					t.Errorf("StatusError = {%d, %v}; want {%d, %v}", se.Status, se.RetryAfter, tt.wantStatus, tt.wantRetry)
				}
			}
			var oe *providers.OAuthError
			switch {
			case tt.wantCode == "" && errors.As(err, &oe):
				t.Errorf("Post error = %q is an *OAuthError; want not", err)
			case tt.wantCode != "" && !errors.As(err, &oe):
				t.Errorf("Post error = %q; want an *OAuthError", err)
			case tt.wantCode != "":
				if oe.Code != tt.wantCode || oe.Description != tt.wantDesc {
					t.Errorf("OAuthError = {%q, %q}; want {%q, %q}", oe.Code, oe.Description, tt.wantCode, tt.wantDesc)
				}
			}
			msg := err.Error()
			if tt.wantInMsg != "" && !strings.Contains(msg, tt.wantInMsg) {
				t.Errorf("Post error = %q; want it to contain %q", msg, tt.wantInMsg)
			}
			if tt.wantNoInMsg != "" && strings.Contains(msg, tt.wantNoInMsg) {
				t.Errorf("Post error quotes the response body; want it not to")
			}
			if strings.Contains(msg, testSecret) || strings.Contains(msg, url.QueryEscape(testSecret)) {
				t.Errorf("Post error reveals the client secret")
			}
		})
	}
}

func TestPostUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL + "/token"
	srv.Close()
	_, err := (&tokenhttp.Client{}).Post(context.Background(), u, url.Values{}, basicAuth())
	if !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("Post error = %v; want ErrUnavailable", err)
	}
	var se *tokenhttp.StatusError
	if errors.As(err, &se) {
		t.Errorf("Post error = %v is a *StatusError; want a transport error", err)
	}
}

func TestPostTimeouts(t *testing.T) {
	// hang answers only when the client gives up.
	hang := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	tests := []struct {
		name    string
		timeout time.Duration // Client.Timeout
		ctx     func() (context.Context, context.CancelFunc)
		want    error
	}{
		{
			name:    "client timeout",
			timeout: 50 * time.Millisecond,
			ctx:     func() (context.Context, context.CancelFunc) { return context.Background(), func() {} },
			want:    context.DeadlineExceeded,
		},
		{
			name: "caller deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			},
			want: context.DeadlineExceeded,
		},
		{
			name: "caller cancels",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(50*time.Millisecond, cancel)
				return ctx, cancel
			},
			want: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := upstream(t, hang)
			ctx, cancel := tt.ctx()
			defer cancel()
			c := &tokenhttp.Client{Timeout: tt.timeout}
			_, err := c.Post(ctx, u, url.Values{}, basicAuth())
			if !errors.Is(err, providers.ErrUnavailable) {
				t.Errorf("Post error = %v; want ErrUnavailable", err)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("Post error = %v; want errors.Is %v", err, tt.want)
			}
			mine := "no answer within " + tt.timeout.String()
			if tt.timeout > 0 && !strings.Contains(fmt.Sprint(err), mine) {
				t.Errorf("Post error = %v; want it to say %q", err, mine)
			}
			if tt.timeout == 0 && strings.Contains(fmt.Sprint(err), "no answer within") {
				t.Errorf("Post error = %v; want no mention of Client.Timeout when the caller ended the request", err)
			}
		})
	}
}

func TestPostSizeLimit(t *testing.T) {
	const max = 200
	ok := `{"access_token":"tok","token_type":"Bearer"}`
	exact := ok[:len(ok)-1] + strings.Repeat(" ", max-len(ok)) + "}"
	tests := []struct {
		name    string
		status  int
		body    string
		wantErr error
	}{
		{"at the limit", 200, exact, nil},
		{"one byte over", 200, exact + " ", providers.ErrInvalidResponse},
		{"far over", 200, ok + strings.Repeat(" ", 10*max), providers.ErrInvalidResponse},
		{"4xx over", 400, `{"error":"invalid_request"}` + strings.Repeat(" ", max), providers.ErrInvalidResponse},
		{"5xx over is still unavailable", 503, strings.Repeat("x", 10*max), providers.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := upstream(t, answer(tt.status, tt.body))
			c := &tokenhttp.Client{MaxResponseBytes: max}
			_, err := c.Post(context.Background(), u, url.Values{}, basicAuth())
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Post: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Post error = %v; want %v", err, tt.wantErr)
			}
			if tt.wantErr == providers.ErrInvalidResponse {
				if want := fmt.Sprintf("response larger than %d bytes", max); !strings.Contains(err.Error(), want) {
					t.Errorf("Post error = %q; want it to contain %q", err, want)
				}
			}
		})
	}
}

func TestPostDefaultSizeLimit(t *testing.T) {
	body := `{"access_token":"tok"}` + strings.Repeat(" ", int(tokenhttp.DefaultMaxResponseBytes))
	u := upstream(t, answer(200, body))
	_, err := (&tokenhttp.Client{}).Post(context.Background(), u, url.Values{}, basicAuth())
	if !errors.Is(err, providers.ErrInvalidResponse) {
		t.Fatalf("Post error = %v; want ErrInvalidResponse", err)
	}
}

func TestErrorDescriptionScrubbed(t *testing.T) {
	const (
		refresh  = "rt-SECRET-value"
		code     = "code-SECRET-value"
		password = "1584651600:sigSECRET"
	)
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refresh},
		"code":          {code},
		"password":      {password},
	}
	secrets := []string{testSecret, url.QueryEscape(testSecret), refresh, code, password}
	basic := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(testID) + ":" + url.QueryEscape(testSecret)))
	tests := []struct {
		name string
		desc string
		auth tokenhttp.Auth
	}{
		{"secret echoed", "bad secret " + testSecret + " for client", basicAuth()},
		{"secret inside a word", "x" + testSecret + "y", basicAuth()},
		{"form-encoded secret echoed", "got client_secret=" + url.QueryEscape(testSecret), basicAuth()},
		{"basic header echoed", "Authorization: Basic " + basic, basicAuth()},
		{"refresh token echoed", "refresh token " + refresh + " revoked", basicAuth()},
		{"code echoed", "code " + code + " already used", basicAuth()},
		{"password echoed", "password " + password + " expired", basicAuth()},
		{"body secret echoed", "client_secret " + testSecret, tokenhttp.Auth{Style: tokenhttp.AuthBody, ClientID: testID, Secret: secret.New(testSecret)}},
		{"everything at once", strings.Join(secrets, " "), basicAuth()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := json.Marshal(map[string]string{"error": "invalid_grant", "error_description": tt.desc})
			u := upstream(t, answer(400, string(b)))
			_, err := (&tokenhttp.Client{}).Post(context.Background(), u, form, tt.auth)
			var oe *providers.OAuthError
			if !errors.As(err, &oe) {
				t.Fatalf("Post error = %v; want an *OAuthError", err)
			}
			msg := err.Error()
			for i, s := range append(secrets, basic) {
				if strings.Contains(msg, s) || strings.Contains(oe.Description, s) {
					t.Errorf("error reveals secret #%d", i)
				}
			}
			if !strings.Contains(oe.Description, secret.Redacted) {
				t.Errorf("Description has no %s marker; want one where the secret was", secret.Redacted)
			}
		})
	}
}

func TestErrorDescriptionCleaned(t *testing.T) {
	tests := []struct {
		name string
		desc string
		want string
	}{
		{"kept", "Client authentication failed", "Client authentication failed"},
		{"control characters", "line1\nline2\x1b[31m", "line1 line2 [31m"},
		{"truncated to 200 bytes", strings.Repeat("a", 300), strings.Repeat("a", 200)},
		{"truncated on a rune boundary", strings.Repeat("a", 199) + "é", strings.Repeat("a", 199)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := json.Marshal(map[string]string{"error": "invalid_request", "error_description": tt.desc})
			u := upstream(t, answer(400, string(b)))
			_, err := (&tokenhttp.Client{}).Post(context.Background(), u, url.Values{}, basicAuth())
			var oe *providers.OAuthError
			if !errors.As(err, &oe) {
				t.Fatalf("Post error = %v; want an *OAuthError", err)
			}
			if oe.Description != tt.want {
				t.Errorf("Description = %q; want %q", oe.Description, tt.want)
			}
			if oe.HTTPStatus != 400 {
				t.Errorf("HTTPStatus = %d; want 400", oe.HTTPStatus)
			}
		})
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var elsewhere atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		answer(200, `{"access_token":"tok"}`)(w, r)
	}))
	defer target.Close()
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			u := upstream(t, answer(status, "", "Location", target.URL))
			_, err := (&tokenhttp.Client{}).Post(context.Background(), u, url.Values{}, basicAuth())
			if !errors.Is(err, providers.ErrRejected) {
				t.Errorf("Post error = %v; want ErrRejected", err)
			}
		})
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("redirect target got %d requests; want 0", n)
	}
}

// TestResponseChecks: what a 2xx answer must be before any of it is used.
// Each refused body holds the marker; the error must name the field and
// the rule and quote nothing of the value.
func TestResponseChecks(t *testing.T) {
	const marker = "MARK"
	long := marker + strings.Repeat("a", tokenhttp.MaxTokenBytes-len(marker))
	jsonString := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b)
	}
	tests := []struct {
		name        string
		body        string
		defaultType string // Client.DefaultTokenType
		wantType    string // on success
		wantInMsg   string // on failure: the rule, naming the field
	}{
		{name: "bearer", body: `{"access_token":"` + marker + `-._~+/9==","token_type":"Bearer"}`, wantType: "Bearer"},
		{name: "lower-case bearer", body: `{"access_token":"` + marker + `","token_type":"bearer"}`, wantType: "bearer"},
		{name: "longest token", body: `{"access_token":"` + long + `","refresh_token":"` + long + `","token_type":"Bearer"}`, wantType: "Bearer"},
		{name: "other type: visible ASCII", body: `{"access_token":"` + marker + `!\"#$%&'()*,:;<>?@[\\]^{|}","token_type":"MAC"}`, wantType: "MAC"},
		{name: "refresh token: visible ASCII", body: `{"access_token":"a","refresh_token":"` + marker + `!*:@","token_type":"Bearer"}`, wantType: "Bearer"},
		{name: "refresh token null", body: `{"access_token":"a","refresh_token":null,"token_type":"Bearer"}`, wantType: "Bearer"},
		{name: "default applied", body: `{"access_token":"` + marker + `"}`, defaultType: "Bearer", wantType: "Bearer"},
		{name: "default not applied when sent", body: `{"access_token":"` + marker + `","token_type":"bearer"}`, defaultType: "Bearer", wantType: "bearer"},

		{name: "header injection", body: `{"access_token":` + jsonString(marker+"X\nX-Injected: 1\r\n\u0001") + `,"token_type":"Bearer"}`,
			wantInMsg: "access_token is not an RFC 6750 b64token"},
		{name: "header injection, other type", body: `{"access_token":` + jsonString(marker+"X\nX-Injected: 1\r\n\u0001") + `,"token_type":"MAC"}`,
			wantInMsg: "access_token has a byte outside visible ASCII"},
		{name: "space", body: `{"access_token":"` + marker + ` x","token_type":"Bearer"}`, wantInMsg: "access_token is not an RFC 6750 b64token"},
		{name: "space, other type", body: `{"access_token":"` + marker + ` x","token_type":"MAC"}`, wantInMsg: "access_token has a byte outside visible ASCII"},
		{name: "non-ASCII", body: `{"access_token":"` + marker + `\u00e9","token_type":"Bearer"}`, wantInMsg: "access_token is not an RFC 6750 b64token"},
		{name: "non-ASCII, other type", body: `{"access_token":"` + marker + `\u00e9","token_type":"MAC"}`, wantInMsg: "access_token has a byte outside visible ASCII"},
		{name: "bearer: = inside", body: `{"access_token":"` + marker + `=x","token_type":"Bearer"}`, wantInMsg: "access_token is not an RFC 6750 b64token"},
		{name: "bearer: only =", body: `{"access_token":"==","token_type":"Bearer"}`, wantInMsg: "access_token is not an RFC 6750 b64token"},
		{name: "bearer: outside b64token", body: `{"access_token":"` + marker + `!","token_type":"bearer"}`, wantInMsg: "access_token is not an RFC 6750 b64token"},
		{name: "too long", body: `{"access_token":"` + long + `x","token_type":"Bearer"}`, wantInMsg: fmt.Sprintf("access_token is longer than %d bytes", tokenhttp.MaxTokenBytes)},
		{name: "empty", body: `{"access_token":"","token_type":"Bearer"}`, wantInMsg: "no access_token in the response"},
		{name: "refresh token empty", body: `{"access_token":"a","refresh_token":"","token_type":"Bearer"}`, wantInMsg: "refresh_token is empty"},
		{name: "refresh token too long", body: `{"access_token":"a","refresh_token":"` + long + `x","token_type":"Bearer"}`,
			wantInMsg: fmt.Sprintf("refresh_token is longer than %d bytes", tokenhttp.MaxTokenBytes)},
		{name: "refresh token injection", body: `{"access_token":"a","refresh_token":` + jsonString(marker+"X\nX-Injected: 1\r\n\u0001") + `,"token_type":"Bearer"}`,
			wantInMsg: "refresh_token has a byte outside visible ASCII"},
		{name: "refresh token space", body: `{"access_token":"a","refresh_token":"` + marker + ` x","token_type":"Bearer"}`,
			wantInMsg: "refresh_token has a byte outside visible ASCII"},
		{name: "missing token_type", body: `{"access_token":"` + marker + `"}`, wantInMsg: "no token_type in the response (RFC 6749 §5.1 requires it"},
		{name: "null token_type", body: `{"access_token":"` + marker + `","token_type":null}`, wantInMsg: "no token_type"},
		{name: "empty token_type", body: `{"access_token":"a","token_type":""}`, defaultType: "Bearer", wantInMsg: "token_type: empty token type"},
		{name: "token_type injection", body: `{"access_token":"a","token_type":` + jsonString("Bearer\r\nX-"+marker+": 1") + `}`,
			wantInMsg: "token_type: token type has a character RFC 6749 §11.1 does not allow"},
		{name: "token_type too long", body: `{"access_token":"a","token_type":"` + marker + strings.Repeat("a", providers.MaxTokenTypeBytes) + `"}`,
			wantInMsg: fmt.Sprintf("token_type: token type longer than %d bytes", providers.MaxTokenTypeBytes)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := upstream(t, answer(200, tt.body))
			c := &tokenhttp.Client{DefaultTokenType: tt.defaultType}
			resp, err := c.Post(context.Background(), u, url.Values{}, basicAuth())
			if tt.wantInMsg == "" {
				if err != nil {
					t.Fatalf("Post: %v", err)
				}
				if resp.TokenType != tt.wantType {
					t.Errorf("TokenType = %q; want %q", resp.TokenType, tt.wantType)
				}
				return
			}
			if !errors.Is(err, providers.ErrInvalidResponse) {
				t.Fatalf("Post error = %v; want ErrInvalidResponse", err)
			}
			if !strings.Contains(err.Error(), tt.wantInMsg) {
				t.Errorf("Post error = %q; want it to contain %q", err, tt.wantInMsg)
			}
			if strings.Contains(err.Error(), marker) {
				t.Errorf("Post error quotes the response's value")
			}
		})
	}
}

// TestRevoke: a revocation request is an authenticated form POST like a
// token request; any 2xx is success whatever the body, and failures are
// classified as Post's are.
func TestRevoke(t *testing.T) {
	tests := []struct {
		name    string
		h       http.HandlerFunc
		wantIs  error // nil: success
		wantErr string
	}{
		{name: "200 empty", h: answer(200, "")},
		{name: "200 WAX body", h: answer(200, `{"success":true}`)},
		{name: "204 non-JSON", h: answer(204, "")},
		{name: "unsupported_token_type", h: answer(400, `{"error":"unsupported_token_type"}`),
			wantIs: providers.ErrRejected, wantErr: "unsupported_token_type"},
		{name: "invalid_client", h: answer(401, `{"error":"invalid_client","error_description":"no"}`),
			wantIs: providers.ErrRejected, wantErr: "invalid_client"},
		{name: "503", h: answer(503, "", "Retry-After", "3"), wantIs: providers.ErrUnavailable, wantErr: "HTTP 503"},
		{name: "404 HTML", h: answer(404, "<html>"), wantIs: providers.ErrRejected, wantErr: "HTTP 404"},
		{name: "redirect", h: answer(302, "", "Location", "https://elsewhere.example/revoke"),
			wantIs: providers.ErrRejected, wantErr: "not followed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got url.Values
			var gotUser, gotPass string
			u := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				got = r.PostForm
				gotUser, gotPass, _ = r.BasicAuth()
				tt.h(w, r)
			})
			c := &tokenhttp.Client{Now: clock()}
			form := url.Values{"token": {"rt-1"}, "token_type_hint": {"refresh_token"}}
			err := c.Revoke(context.Background(), u, form, tokenhttp.Auth{Style: tokenhttp.AuthBasicRaw, ClientID: "id", Secret: secret.New("pw")})
			if diff := cmp.Diff(form, got); diff != "" {
				t.Errorf("form sent mismatch (-want +got):\n%s", diff)
			}
			if gotUser != "id" || gotPass != "pw" {
				t.Errorf("Basic credentials not sent as configured")
			}
			if tt.wantIs == nil {
				if err != nil {
					t.Fatalf("Revoke() = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.wantIs) || !strings.Contains(fmt.Sprint(err), tt.wantErr) {
				t.Fatalf("Revoke() = %v; want %v containing %q", err, tt.wantIs, tt.wantErr)
			}
			if strings.Contains(err.Error(), "rt-1") {
				t.Errorf("Revoke() error quotes the token")
			}
		})
	}
}

// TestRefreshExpiresIn: refresh_token_expires_in is read like expires_in
// and RefreshLifetime refuses what expires_in's Lifetime refuses.
func TestRefreshExpiresIn(t *testing.T) {
	tests := []struct {
		name    string
		field   string // JSON member value; "" for absent
		want    time.Duration
		wantOK  bool
		wantErr string // in Post's or RefreshLifetime's error
	}{
		{name: "absent"},
		{name: "null", field: "null"},
		{name: "number", field: "60", want: time.Minute, wantOK: true},
		{name: "string", field: `"86400"`, want: 24 * time.Hour, wantOK: true},
		{name: "zero", field: "0", wantErr: "refresh_token_expires_in is 0"},
		{name: "negative", field: "-5", wantErr: "refresh_token_expires_in is negative"},
		{name: "fraction", field: "1.5", wantErr: "refresh_token_expires_in is not an integer"},
		{name: "ten years and more", field: "400000000", wantErr: "refresh_token_expires_in 400000000 is more than ten years"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"access_token":"at","token_type":"Bearer","expires_in":3600`
			if tt.field != "" {
				body += `,"refresh_token_expires_in":` + tt.field
			}
			u := upstream(t, answer(200, body+"}"))
			c := &tokenhttp.Client{Now: clock()}
			resp, err := c.Post(context.Background(), u, url.Values{}, basicAuth())
			var d time.Duration
			var ok bool
			if err == nil {
				if resp.ExpiresIn == nil || *resp.ExpiresIn != 3600 {
					t.Errorf("ExpiresIn changed by refresh_token_expires_in")
				}
				d, ok, err = resp.RefreshLifetime()
			}
			if tt.wantErr != "" {
				if !errors.Is(err, providers.ErrInvalidResponse) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v; want ErrInvalidResponse containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || d != tt.want || ok != tt.wantOK {
				t.Fatalf("RefreshLifetime() = %v, %v, %v; want %v, %v, nil", d, ok, err, tt.want, tt.wantOK)
			}
		})
	}
}
