package server_test

import (
	"context"
	"errors"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// noUpstream fails every request at once: the connection points at nothing.
type noUpstream struct{}

func (noUpstream) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("no upstream in this test")
}

// callbackStatuses are the only answers the callback may give.
var callbackStatuses = map[int]bool{200: true, 400: true, 403: true, 405: true, 414: true, 502: true, 503: true, 504: true}

var fuzzMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, "BREW"}

// FuzzCallback sends the OAuth callback handler a fuzzed raw query string
// (and method). "$STATE" in the query stands for a state the broker has
// just issued, so the fuzzer gets past the state check to the code
// redemption, which fails: the wax connection points at nothing. The
// handler must not panic, must answer one of its documented statuses with
// its no-referrer, no-store headers, and its page must never show a code or
// state value from the query, raw or HTML-escaped.
func FuzzCallback(f *testing.F) {
	for _, s := range []string{
		"code=abc&state=$STATE",
		"state=$STATE&error=access_denied&error_description=User+said+no",
		"state=$STATE&error=server_error",
		"state=$STATE&code=" + strings.Repeat("c", 64),
		"code=abc&state=not-a-state",
		"code=abc",
		"state=$STATE",
		"code=a&code=b&state=$STATE",
		"code=abc&state=$STATE&error=access_denied",
		"state=$STATE&error=%22%3Cscript%3E",
		"code=%zz&state=$STATE",
		"code=<b>x</b>&state=$STATE",
		"state=" + strings.Repeat("s", broker.MaxStateLength+1) + "&code=x",
		"",
		";;;&&&===",
	} {
		f.Add(uint8(0), s)
	}
	f.Add(uint8(2), "code=abc&state=$STATE")

	clock := cachetest.NewClock(time.Unix(1_700_000_000, 0))
	c, err := memory.New(memory.Options{Now: clock.Now})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	cfg := &authcode.WAXConfig{Config: authcode.Config{
		AuthorizeURL: "https://wax.invalid/v1/authorize", TokenURL: "https://wax.invalid/v1/access_token",
		ClientID: waxClientID, ClientSecret: secret.Ref{Env: "WAX_SECRET"},
	}}
	p, err := cfg.Open(providers.Env{Name: "wax", Now: clock.Now, HTTPClient: &http.Client{Transport: noUpstream{}},
		Secrets: secret.Loader{LookupEnv: func(k string) (string, bool) { return waxSecret, k == "WAX_SECRET" }}})
	if err != nil {
		f.Fatal(err)
	}
	b, err := broker.New(broker.Options{Cache: c, Now: clock.Now, DisableRefreshAhead: true,
		Connections: []broker.Connection{{Name: "wax", Type: "wax", Provider: p, Skew: skew}}})
	if err != nil {
		f.Fatal(err)
	}
	h := server.NewCallbackHandler(b, nil)

	serve := func(t testing.TB, method, rawQuery string) (*httptest.ResponseRecorder, string) {
		if strings.Contains(rawQuery, "$STATE") {
			// Let earlier states and outcomes expire, so the cache stays small.
			clock.Advance(broker.AuthStateTTL + time.Minute)
			_, state, _, err := b.StartAuthorization(context.Background(), "wax", "")
			if err != nil {
				t.Fatalf("StartAuthorization() = %v", err)
			}
			rawQuery = strings.ReplaceAll(rawQuery, "$STATE", state)
		}
		r := (&http.Request{
			Method: method, URL: &url.URL{Path: server.CallbackPath, RawQuery: rawQuery},
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Host: "broker.example",
			RemoteAddr: "192.0.2.1:1234", RequestURI: server.CallbackPath + "?" + rawQuery,
		}).WithContext(context.Background())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w, rawQuery
	}

	// Every fixed text the pages hold: a value found in one of these
	// pages is not an echo.
	var reference strings.Builder
	for _, q := range []struct{ method, query string }{
		{http.MethodPost, "code=x&state=y"},
		{http.MethodGet, strings.Repeat("q", server.MaxCallbackQuery+1)},
		{http.MethodGet, "code=%zz"},
		{http.MethodGet, "code=x&state=y"},
		{http.MethodGet, "code=x"},
		{http.MethodGet, "state=$STATE&error=access_denied"},
		{http.MethodGet, "state=$STATE&error=server_error"},
		{http.MethodGet, "state=$STATE&code=x"},
	} {
		w, _ := serve(f, q.method, q.query)
		reference.WriteString(w.Body.String())
	}
	fixed := reference.String()

	f.Fuzz(func(t *testing.T, method uint8, rawQuery string) {
		m := fuzzMethods[int(method)%len(fuzzMethods)]
		w, sent := serve(t, m, rawQuery)
		if !callbackStatuses[w.Code] {
			t.Fatalf("%s ?%q: status %d; want one of 200, 400, 403, 405, 414, 502, 503, 504", m, sent, w.Code)
		}
		hdr := w.Header()
		if hdr.Get("Referrer-Policy") != "no-referrer" || hdr.Get("Cache-Control") != "no-store" {
			t.Fatalf("%s ?%q: headers %v lack Referrer-Policy no-referrer or Cache-Control no-store", m, sent, hdr)
		}
		q, _ := url.ParseQuery(sent) // what parsed, even when the rest did not
		body := w.Body.String()
		errParam := strings.Join(q["error"], "\x00") // shown on the page by design
		for _, name := range []string{"code", "state"} {
			for _, v := range q[name] {
				if len(v) < 4 || strings.Contains(fixed, v) || strings.Contains(errParam, v) {
					continue
				}
				if strings.Contains(body, v) || strings.Contains(body, htmlText(v)) {
					t.Fatalf("%s ?%q: the page shows the %s %q:\n%s", m, sent, name, v, body)
				}
			}
		}
	})
}

var textTemplate = template.Must(template.New("text").Parse("{{.}}"))

// htmlText is v as html/template writes it in text, as the page would.
func htmlText(v string) string {
	var b strings.Builder
	_ = textTemplate.Execute(&b, v)
	return b.String()
}
