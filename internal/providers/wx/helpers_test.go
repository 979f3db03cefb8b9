package wx_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

const (
	// testSeed belongs to no real account. Tests never print it.
	testSeed = "tokenbroker wx provider test seed, not an account anyone uses"
	clientID = "wx.network"
	seedEnv  = "WX_TEST_SEED"
)

// start is a whole second plus a fraction, so that relative and absolute
// expiries differ in a way the tests can see.
var start = time.Date(2026, 3, 1, 12, 0, 0, 400_000_000, time.UTC)

// clock is a fake clock shared by the provider, the emulator, the broker and
// the cache. It only moves when told to.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

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

// wire sits between the provider and the emulator and records every request
// form and every token the emulator hands out, so tests can check what was
// sent and look for secrets where they must not be.
type wire struct {
	h http.Handler

	mu        sync.Mutex
	forms     []url.Values
	responses []map[string]any
}

func (w *wire) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	rec := httptest.NewRecorder()
	w.h.ServeHTTP(rec, r)
	var resp map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &resp)

	w.mu.Lock()
	w.forms = append(w.forms, form)
	w.responses = append(w.responses, resp)
	w.mu.Unlock()

	for k, vs := range rec.Header() {
		rw.Header()[k] = vs
	}
	rw.WriteHeader(rec.Code)
	_, _ = rw.Write(rec.Body.Bytes())
}

// lastForm returns the last request's form.
func (w *wire) lastForm() url.Values {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.forms) == 0 {
		return nil
	}
	return w.forms[len(w.forms)-1]
}

// exchanges returns copies of the recorded forms and responses.
func (w *wire) exchanges() ([]url.Values, []map[string]any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]url.Values(nil), w.forms...), append([]map[string]any(nil), w.responses...)
}

// secrets returns every secret that crossed the wire: passwords and their
// signatures, refresh tokens sent, and the tokens received, with the payload
// and signature parts of JWTs on their own.
func (w *wire) secrets() []string {
	forms, responses := w.exchanges()
	var out []string
	add := func(s string) {
		if s == "" {
			return
		}
		out = append(out, s)
		if parts := strings.Split(s, "."); len(parts) == 3 {
			out = append(out, parts[1], parts[2])
		}
	}
	for _, f := range forms {
		if pw := f.Get("password"); pw != "" {
			add(pw)
			_, sig, _ := strings.Cut(pw, ":")
			add(sig)
		}
		add(f.Get("refresh_token"))
	}
	for _, r := range responses {
		for _, k := range []string{"access_token", "refresh_token"} {
			if s, ok := r[k].(string); ok {
				add(s)
			}
		}
	}
	return out
}

// lastTokens returns the tokens of the last successful response.
func (w *wire) lastTokens() (access, refresh string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.responses) - 1; i >= 0; i-- {
		if at, ok := w.responses[i]["access_token"].(string); ok {
			rt, _ := w.responses[i]["refresh_token"].(string)
			return at, rt
		}
	}
	return "", ""
}

type fixture struct {
	clk  *clock
	emu  *wxemu.Server
	wire *wire
	url  string
	cfg  *wx.Config
	env  providers.Env
	sk   wavescrypto.PrivateKey
}

// newFixture starts an emulator behind a wire on a real HTTP server and
// returns a matching configuration (seed from an environment variable,
// lifetime 1h) and environment (fake clock, zero randomness).
func newFixture(t *testing.T, opts wxemu.Options) *fixture {
	t.Helper()
	clk := newClock(start)
	opts.ClientID = clientID
	opts.Now = clk.Now
	emu := wxemu.New(opts)
	w := &wire{h: emu}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	env := map[string]string{seedEnv: testSeed}
	return &fixture{
		clk:  clk,
		emu:  emu,
		wire: w,
		url:  srv.URL + wxemu.TokenPath,
		cfg: &wx.Config{
			TokenURL:      srv.URL + wxemu.TokenPath,
			ClientID:      clientID,
			Seed:          secret.Ref{Env: seedEnv},
			TokenLifetime: providers.Duration{Duration: time.Hour},
		},
		env: providers.Env{
			Name:       "wx-test",
			Now:        clk.Now,
			Rand:       zeroReader{},
			HTTPClient: srv.Client(),
			Logger:     slog.New(slog.DiscardHandler),
			Secrets: secret.Loader{
				LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
				ReadFile:  func(string) ([]byte, error) { return nil, io.ErrUnexpectedEOF },
			},
		},
		sk: wavescrypto.PrivateKeyFromSeed(testSeed, 0),
	}
}

// open opens the fixture's configuration.
func (f *fixture) open(t *testing.T) providers.Refresher {
	t.Helper()
	p, err := f.cfg.Open(f.env)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	r, ok := p.(providers.Refresher)
	if !ok {
		t.Fatal("the wx provider is not a providers.Refresher")
	}
	return r
}

// zeroReader is an injected "random" source: the signatures it yields are
// reproducible.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
