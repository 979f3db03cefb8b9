package tokenhttp_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Secrets of the fuzzed request. Each has characters that query, path and
// JSON escaping change, so every form an upstream might echo differs.
const (
	fuzzClientID     = "fz client+id"
	fuzzClientSecret = "fz-S3cr3t+%20/!^ x\u00e9"
	fuzzRefreshToken = "fz-rt-0d9c8b7a6f5e4d3c"
	fuzzCode         = "fz-code/4f3e2d1c+b0a9"
	// fuzzAccessToken is what "$AT" in a body stands for: a 2xx answer's
	// token, which no error may quote.
	fuzzAccessToken = "fz-at-77c1e0a9b8d7c6f5"
)

// roundTrip answers every request with the fuzzed response, without a
// socket, so each input costs microseconds.
type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// fuzzStyles are the client authentications the fuzzer picks from.
var fuzzStyles = []tokenhttp.AuthStyle{tokenhttp.AuthBasicForm, tokenhttp.AuthBasicRaw, tokenhttp.AuthBody, tokenhttp.AuthNone}

// expand replaces placeholders in a fuzzed body with the request's secrets
// in the forms an upstream might echo them: $SECRET (JSON-escaped, to sit in
// a JSON string), $QSECRET (query-escaped), $PSECRET (path-escaped), $B64
// (the Basic credentials), $RT and $CODE (form fields) and $AT (an access
// token for a 2xx answer).
func expand(body []byte, basic string) []byte {
	js := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b[1 : len(b)-1])
	}
	return []byte(strings.NewReplacer(
		"$SECRET", js(fuzzClientSecret),
		"$QSECRET", url.QueryEscape(fuzzClientSecret),
		"$PSECRET", url.PathEscape(fuzzClientSecret),
		"$B64", basic,
		"$RT", js(fuzzRefreshToken),
		"$CODE", js(fuzzCode),
		"$AT", fuzzAccessToken,
	).Replace(string(body)))
}

// FuzzPost sends a token request whose answer (status, body, Retry-After
// and Location) is fuzzed. Post must not panic; its result is a Response or
// an error of one of the three classes; a 2xx gives a token or
// ErrInvalidResponse, whose tokens are visible ASCII; and no error quotes a secret the request carried, in
// any form, nor the access token of a 2xx body.
func FuzzPost(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"$AT","token_type":"Bearer","expires_in":3600,"scope":"read write"}`), uint8(0), "", "")
	f.Add(200, []byte(`{"access_token":"$AT","expires_in":"3600","refresh_token":"r","scope":["a","b"]}`), uint8(1), "", "")
	f.Add(201, []byte(`{"access_token":"$AT","expires_in":1e3}`), uint8(2), "", "")
	f.Add(200, []byte(`{"access_token":"","expires_in":-1}`), uint8(0), "", "")
	f.Add(200, []byte(`[1,2,3]`), uint8(0), "", "")
	f.Add(200, []byte(`{"access_token":7}`), uint8(0), "", "")
	f.Add(400, []byte(`{"error":"invalid_client","error_description":"bad secret $SECRET / $QSECRET / $PSECRET"}`), uint8(0), "", "")
	f.Add(401, []byte(`{"error":"invalid_client","error_description":"Basic $B64 refused"}`), uint8(1), "", "")
	f.Add(400, []byte(`{"error":"invalid_grant","error_description":"refresh token $RT or code $CODE unknown"}`), uint8(3), "", "")
	f.Add(400, []byte(`{"error":"$SECRET"}`), uint8(2), "", "")
	// The secret's space sent as a tab, and with a character that does not
	// decode (U+FFFD) inside it: cleaning the text must not rebuild it.
	f.Add(400, []byte(`{"error":"invalid_client","error_description":"fz-S3cr3t+%20/!^\tx\u00e9"}`), uint8(0), "", "")
	f.Add(400, []byte(`{"error":"invalid_client","error_description":"fz-S3cr3t\ufffd+%20/!^ x\u00e9"}`), uint8(0), "", "")
	f.Add(400, []byte("{\"error\":\"invalid_client\",\"error_description\":\"fz-S3cr3t\xff+%20/!^ x\u00e9\"}"), uint8(0), "", "")
	f.Add(400, []byte(`<html>bad request $SECRET</html>`), uint8(0), "", "")
	f.Add(429, []byte(``), uint8(0), "120", "")
	f.Add(503, []byte(`{}`), uint8(0), "Wed, 21 Oct 2099 07:28:00 GMT", "")
	f.Add(302, []byte(``), uint8(0), "", "https://user:$SECRET@elsewhere.example/token?secret=$QSECRET#x")
	f.Add(199, []byte(`{"access_token":"$AT"}`), uint8(0), "", "")

	f.Fuzz(func(t *testing.T, status int, body []byte, style uint8, retryAfter, location string) {
		if status < 100 || status > 999 {
			// net/http delivers only three-digit codes.
			status = 100 + int(uint(status)%900)
		}
		auth := tokenhttp.Auth{Style: fuzzStyles[int(style)%len(fuzzStyles)], ClientID: fuzzClientID, Secret: secret.New(fuzzClientSecret)}
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {fuzzRefreshToken}, "code": {fuzzCode}}
		if auth.Style == tokenhttp.AuthNone {
			form.Set("client_secret", fuzzClientSecret)
		}
		var basic string
		switch auth.Style {
		case tokenhttp.AuthBasicForm:
			basic = base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(fuzzClientID) + ":" + url.QueryEscape(fuzzClientSecret)))
		case tokenhttp.AuthBasicRaw:
			basic = base64.StdEncoding.EncodeToString([]byte(fuzzClientID + ":" + fuzzClientSecret))
		}
		data := expand(body, basic)
		hdr := func(s string) string { return string(expand([]byte(s), basic)) }
		c := &tokenhttp.Client{
			MaxResponseBytes: 512, // small, so that the fuzzer reaches the limit with small inputs
			HTTP: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
				h := http.Header{"Content-Type": {"application/json"}}
				if retryAfter != "" {
					h.Set("Retry-After", hdr(retryAfter))
				}
				if location != "" {
					h.Set("Location", hdr(location))
				}
				return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(bytes.NewReader(data)), Request: r}, nil
			})},
		}

		resp, err := c.Post(context.Background(), "https://upstream.example/token", form, auth)
		if (resp == nil) == (err == nil) {
			t.Fatalf("Post() = %v, %v; want exactly one of a response and an error", resp, err)
		}
		if err == nil {
			if status < 200 || status > 299 {
				t.Fatalf("Post() succeeded on HTTP %d", status)
			}
			if resp.AccessToken.IsZero() {
				t.Fatal("Post() succeeded without an access token")
			}
			if err := providers.CheckTokenType(resp.TokenType); err != nil {
				t.Fatalf("Post() succeeded with a bad token type: %v", err)
			}
			for _, tok := range []string{resp.AccessToken.Reveal(), resp.RefreshToken.Reveal()} {
				if len(tok) > tokenhttp.MaxTokenBytes || strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
					t.Fatal("Post() succeeded with a token that is too long or not visible ASCII")
				}
			}
			if resp.ExpiresIn != nil && *resp.ExpiresIn < 0 {
				t.Fatalf("ExpiresIn = %d; want ≥ 0", *resp.ExpiresIn)
			}
			for _, k := range []string{"access_token", "refresh_token"} {
				if _, ok := resp.Fields[k]; ok {
					t.Errorf("Response.Fields holds %s", k)
				}
			}
			return
		}

		unavailable := errors.Is(err, providers.ErrUnavailable)
		rejected := errors.Is(err, providers.ErrRejected)
		invalid := errors.Is(err, providers.ErrInvalidResponse)
		switch {
		case !unavailable && !rejected && !invalid:
			t.Fatalf("Post() error %q is none of ErrUnavailable, ErrRejected, ErrInvalidResponse", err)
		case status >= 200 && status <= 299 && !invalid:
			t.Fatalf("HTTP %d: error %q; want ErrInvalidResponse", status, err)
		case status >= 500 || status == http.StatusTooManyRequests:
			var se *tokenhttp.StatusError
			if !errors.As(err, &se) || se.Status != status || se.RetryAfter < 0 {
				t.Fatalf("HTTP %d: error %q; want a *StatusError for it", status, err)
			}
		}

		msg := err.Error()
		leaks := map[string]string{"access token of a 2xx body": ""}
		if status >= 200 && status <= 299 {
			leaks["access token of a 2xx body"] = fuzzAccessToken
		}
		for name, s := range map[string]string{"client secret": fuzzClientSecret, "refresh token": fuzzRefreshToken, "code": fuzzCode} {
			leaks[name] = s
			leaks[name+" (query-escaped)"] = url.QueryEscape(s)
			leaks[name+" (path-escaped)"] = url.PathEscape(s)
		}
		if basic != "" {
			leaks["Basic credentials"] = basic
		}
		for name, s := range leaks {
			if s != "" && strings.Contains(msg, s) {
				t.Fatalf("HTTP %d: error quotes the %s: %q", status, name, msg)
			}
		}
	})
}
