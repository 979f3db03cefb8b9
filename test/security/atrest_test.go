// Package security_test checks, end to end, what the broker leaves at rest.
//
// A broker with client_credentials, wx and wax (device-secret) connections
// gets, refreshes and caches tokens and grants of all three through a
// sealed (encrypted) cache: Redis, and the memory cache with a state file.
// A dump of every Redis key and the state file must then hold none of the
// secrets that went over the wire, raw, query-escaped or base64. The same
// run through an unsealed cache is the control: its dump must show them,
// or the check proves nothing.
//
// That a sealed value moved under another key does not open, and that
// after a new key is added old values stay readable while new writes carry
// the new key id, is shown where it is implemented:
// internal/cache/sealed TestMovedValue and TestRotationThroughCache.
package security_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/cache/sealed"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/authcode"
	"github.com/tokenbroker/tokenbroker/internal/providers/clientcredentials"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

// Credentials of the emulated upstreams. They belong to no real account.
const (
	ccClientID  = "atrest-cc-client"
	ccSecret    = "atrest cc+secret/%41!^="
	wxClientID  = "wx.network"
	wxSeed      = "tokenbroker at-rest test seed, not an account anyone uses"
	waxClientID = "atrest-wax-app"
)

// secrets collects every secret a run exposed to the broker, by label.
type secrets struct {
	mu sync.Mutex
	m  logtest.Secrets
	n  map[string]int
}

func newSecrets() *secrets {
	return &secrets{m: logtest.Secrets{"cc client secret": ccSecret, "wx seed": wxSeed}, n: map[string]int{}}
}

func (s *secrets) add(kind, v string) {
	if v == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, old := range s.m {
		if old == v {
			return
		}
	}
	s.n[kind]++
	s.m[fmt.Sprintf("%s #%d", kind, s.n[kind])] = v
}

func (s *secrets) count(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[kind]
}

func (s *secrets) all() logtest.Secrets {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(logtest.Secrets, len(s.m))
	for k, v := range s.m {
		out[k] = v
	}
	return out
}

// tee records what the broker and an upstream exchange: the client's
// credentials, refresh tokens and codes in each request, and the tokens in
// each answer.
type tee struct {
	name string
	h    http.Handler
	s    *secrets
}

func (t tee) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if form, err := url.ParseQuery(string(body)); err == nil {
		for field, kind := range map[string]string{
			"client_secret": "client secret", "refresh_token": "refresh token", "code": "authorization code",
		} {
			for _, v := range form[field] {
				t.s.add(t.name+" "+kind, v)
			}
		}
	}
	if _, pw, ok := r.BasicAuth(); ok {
		t.s.add(t.name+" basic password", pw)
		if un, err := url.QueryUnescape(pw); err == nil {
			t.s.add(t.name+" basic password", un)
		}
	}
	rec := &recorder{ResponseWriter: w}
	t.h.ServeHTTP(rec, r)
	var answer struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if json.Unmarshal(rec.body.Bytes(), &answer) == nil {
		t.s.add(t.name+" access token", answer.AccessToken)
		t.s.add(t.name+" refresh token", answer.RefreshToken)
	}
}

type recorder struct {
	http.ResponseWriter
	body bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.body.Write(p)
	return r.ResponseWriter.Write(p)
}

// run drives a broker over c through tokens and grants of every provider,
// refreshes included, and returns the secrets it saw. The broker is closed
// when run returns; c is not.
func run(t *testing.T, c cache.Cache) logtest.Secrets {
	t.Helper()
	ctx := context.Background()
	s := newSecrets()
	log, logs := logtest.New()

	cc := ccemu.New(ccemu.Options{ClientID: ccClientID, ClientSecret: ccSecret})
	ccSrv := httptest.NewServer(tee{"cc", cc, s})
	t.Cleanup(ccSrv.Close)
	wxe := wxemu.New(wxemu.Options{ClientID: wxClientID, Rotation: true})
	wxSrv := httptest.NewServer(tee{"wx", wxe, s})
	t.Cleanup(wxSrv.Close)
	wax := waxemu.New(waxemu.Options{ClientID: waxClientID}) // public client: device secrets
	wax.SetRotate(true)
	waxSrv := httptest.NewServer(tee{"wax", wax, s})
	t.Cleanup(waxSrv.Close)

	env := func(name string) providers.Env {
		return providers.Env{Name: name, Logger: log, Secrets: secret.Loader{LookupEnv: func(k string) (string, bool) {
			switch k {
			case "CC_SECRET":
				return ccSecret, true
			case "WX_SEED":
				return wxSeed, true
			}
			return "", false
		}}}
	}
	open := func(name string, cfg providers.Config) broker.Connection {
		t.Helper()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s: Validate() = %v", name, err)
		}
		p, err := cfg.Open(env(name))
		if err != nil {
			t.Fatalf("%s: Open() = %v", name, err)
		}
		return broker.Connection{Name: name, Type: name, Provider: p, Skew: time.Minute}
	}
	conns := []broker.Connection{
		open("cc", &clientcredentials.Config{TokenURL: ccSrv.URL + ccemu.TokenPath, ClientID: ccClientID,
			ClientSecret: secret.Ref{Env: "CC_SECRET"}, AuthStyle: "basic"}),
		open("wx", &wx.Config{TokenURL: wxSrv.URL + wxemu.TokenPath, ClientID: wxClientID, Seed: secret.Ref{Env: "WX_SEED"}}),
		open("wax", &authcode.WAXConfig{Config: authcode.Config{AuthorizeURL: waxSrv.URL + waxemu.AuthorizePath,
			TokenURL: waxSrv.URL + waxemu.TokenPath, ClientID: waxClientID, DeviceSecret: true}}),
	}
	b, err := broker.New(broker.Options{Cache: c, Connections: conns, Logger: log, DisableRefreshAhead: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	mux := http.NewServeMux()
	mux.Handle("GET "+server.CallbackPath, server.NewCallbackHandler(b, log))
	admin := httptest.NewServer(mux)
	t.Cleanup(admin.Close)
	wax.SetRedirectURL(admin.URL + server.CallbackPath)

	get := func(req broker.Request) {
		t.Helper()
		tok, err := b.GetToken(ctx, req)
		if err != nil {
			t.Fatalf("GetToken(%s, %v, force %v) = %v", req.Connection, req.Scopes, req.ForceRefresh, err)
		}
		s.add(req.Connection+" served token", tok.AccessToken.Reveal())
	}

	// client_credentials: the default scopes, one scope, a forced new token.
	get(broker.Request{Connection: "cc"})
	get(broker.Request{Connection: "cc", Scopes: []string{"read"}})
	get(broker.Request{Connection: "cc", ForceRefresh: true})

	// wx: the signed password grant, then two refreshes with rotation.
	get(broker.Request{Connection: "wx"})
	get(broker.Request{Connection: "wx", ForceRefresh: true})
	get(broker.Request{Connection: "wx", ForceRefresh: true})
	if n := wxe.Issued(wxemu.GrantRefreshToken); n < 2 {
		t.Fatalf("wx emulator issued %d tokens by refresh; want 2", n)
	}

	// wax: an authorization completed through the callback (the device
	// secret is made then), then two refreshes with rotation.
	authURL, state, _, err := b.StartAuthorization(ctx, "wax", "")
	if err != nil {
		t.Fatal(err)
	}
	s.add("wax state", state)
	resp, err := http.Get(authURL) // the emulator approves and redirects to the callback
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Authorization complete") {
		t.Fatalf("callback answered %d: %s", resp.StatusCode, page)
	}
	get(broker.Request{Connection: "wax"})
	get(broker.Request{Connection: "wax", ForceRefresh: true})
	get(broker.Request{Connection: "wax", ForceRefresh: true})
	if n := wax.Counts(); n.Refreshes < 2 || n.DeviceSecretMismatches != 0 {
		t.Fatalf("wax emulator counts = %+v; want 2 refreshes with the grant's device secret", n)
	}
	for _, v := range wax.Secrets() {
		s.add("wax emulator secret", v)
	}

	for _, kind := range []string{"cc access token", "wx access token", "wx refresh token", "wax access token",
		"wax refresh token", "wax basic password", "wax authorization code"} {
		if s.count(kind) == 0 {
			t.Fatalf("the run saw no %s: the check would not cover it", kind)
		}
	}
	all := s.all()
	logtest.AssertNoSecrets(t, logs.String(), all)
	return all
}

// b64run is a run of base64 (either alphabet) long enough to hide a secret.
var b64run = regexp.MustCompile(`[A-Za-z0-9+/_-]{12,}={0,2}`)

// leaks returns the labels of the secrets dump holds: raw, query-escaped,
// as the base64 of the secret alone, or anywhere inside a base64 run of the
// dump once decoded (a secret inside a larger base64-encoded value).
func leaks(dump []byte, all logtest.Secrets) []string {
	decoded := [][]byte{dump}
	for _, run := range b64run.FindAll(dump, -1) {
		s := strings.TrimRight(string(run), "=")
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			if d, err := enc.DecodeString(s); err == nil {
				decoded = append(decoded, d)
			}
		}
	}
	var found []string
	for label, v := range all {
		if len(v) < 6 {
			continue
		}
		forms := []string{v, url.QueryEscape(v), base64.StdEncoding.EncodeToString([]byte(v)),
			base64.RawURLEncoding.EncodeToString([]byte(v))}
	search:
		for _, d := range decoded {
			for _, f := range forms {
				if bytes.Contains(d, []byte(f)) {
					found = append(found, label)
					break search
				}
			}
		}
	}
	sort.Strings(found)
	return found
}

// kinds reduces labels ("wx refresh token #2") to their kinds.
func kinds(labels []string) map[string]bool {
	out := map[string]bool{}
	for _, l := range labels {
		if i := strings.LastIndex(l, " #"); i > 0 {
			l = l[:i]
		}
		out[l] = true
	}
	return out
}

func newKeyring(t *testing.T) *sealed.Keyring {
	t.Helper()
	m := make([]byte, sealed.KeySize)
	if _, err := rand.Read(m); err != nil {
		t.Fatal(err)
	}
	kr, err := sealed.NewKeyring([]sealed.Key{{ID: "k1", Material: secret.New(string(m))}}, "")
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// dumpRedis is every key under prefix and its value, by type.
func dumpRedis(t *testing.T, raw *goredis.Client, prefix string) []byte {
	t.Helper()
	ctx := context.Background()
	keys, err := raw.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatalf("Redis holds no keys under %q: the dump would prove nothing", prefix)
	}
	var dump bytes.Buffer
	for _, k := range keys {
		typ, err := raw.Type(ctx, k).Result()
		if err != nil {
			t.Fatalf("TYPE %q: %v", k, err)
		}
		var v any
		switch typ {
		case "string":
			v, err = raw.Get(ctx, k).Result()
		case "hash":
			v, err = raw.HGetAll(ctx, k).Result()
		case "list":
			v, err = raw.LRange(ctx, k, 0, -1).Result()
		case "set":
			v, err = raw.SMembers(ctx, k).Result()
		case "zset":
			v, err = raw.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "stream":
			v, err = raw.XRange(ctx, k, "-", "+").Result()
		case "none":
			continue // expired between KEYS and TYPE
		default:
			t.Fatalf("key %q has type %s, which the dump cannot read", k, typ)
		}
		if err != nil && err != goredis.Nil {
			t.Fatalf("reading %q (%s): %v", k, typ, err)
		}
		fmt.Fprintf(&dump, "%s\t%s\t%v\n", k, typ, v)
	}
	return dump.Bytes()
}

// TestRedisDumpHoldsNoSecrets: sealed(redis) after a run of all three
// providers; the unsealed control run shows what the check catches.
func TestRedisDumpHoldsNoSecrets(t *testing.T) {
	srv := redistest.Start(t)
	raw := srv.Client(t)
	newRedis := func(prefix string) cache.Cache {
		c, err := rediscache.New(rediscache.Options{Client: rediscache.NewClient(rediscache.ClientConfig{Addrs: []string{srv.Addr()}}), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	c := sealed.New(newRedis("tokenbroker:v1:"), newKeyring(t), nil)
	defer c.Close()
	all := run(t, c)
	dump := dumpRedis(t, raw, "tokenbroker:v1:")
	if got := leaks(dump, all); len(got) > 0 {
		t.Errorf("sealed Redis dump (%d bytes) holds in plaintext: %v", len(dump), got)
	}
	if !bytes.Contains(dump, []byte("grant:{wax}")) || !bytes.Contains(dump, []byte("grant:{wx}")) || !bytes.Contains(dump, []byte("token:{cc}")) {
		t.Errorf("the dump lacks the grants or tokens the run stored:\n%s", dump)
	}

	control := newRedis("control:")
	defer control.Close()
	controlSecrets := run(t, control)
	got := kinds(leaks(dumpRedis(t, raw, "control:"), controlSecrets))
	for _, kind := range []string{"cc access token", "wx access token", "wx refresh token", "wax access token", "wax refresh token", "wax basic password"} {
		if !got[kind] {
			t.Errorf("control: an unsealed dump does not show the %s; the check is broken (found %v)", kind, got)
		}
	}
}

// TestStateFileHoldsNoSecrets: sealed(memory with a state file) after a
// run of all three providers. The state file keeps the durable entries,
// the grants; the unsealed control shows that it would show them.
func TestStateFileHoldsNoSecrets(t *testing.T) {
	dir := t.TempDir()
	open := func(file string, kr *sealed.Keyring) cache.Cache {
		m, err := memory.New(memory.Options{StateFile: filepath.Join(dir, file)})
		if err != nil {
			t.Fatal(err)
		}
		if kr == nil {
			return m
		}
		return sealed.New(m, kr, nil)
	}
	read := func(file string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Entries map[string][]byte `json:"entries"`
		}
		if err := json.Unmarshal(data, &st); err != nil {
			t.Fatalf("state file: %v", err)
		}
		if len(st.Entries) == 0 {
			t.Fatal("state file holds no entries: the check would prove nothing")
		}
		for _, v := range st.Entries { // the values themselves, not only their base64
			data = append(append(data, '\n'), v...)
		}
		return data
	}

	kr := newKeyring(t)
	c := open("sealed.json", kr)
	all := run(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	dump := read("sealed.json")
	if got := leaks(dump, all); len(got) > 0 {
		t.Errorf("sealed state file (%d bytes) holds in plaintext: %v", len(dump), got)
	}
	if !bytes.Contains(dump, []byte("grant:{wax}")) || !bytes.Contains(dump, []byte("grant:{wx}")) {
		t.Errorf("the state file lacks the grants the run stored:\n%s", dump)
	}
	// The grants come back after a restart with the same key.
	restarted := open("sealed.json", kr)
	defer restarted.Close()
	if _, err := restarted.Get(context.Background(), "grant:{wax}"); err != nil {
		t.Errorf("after a restart, the wax grant does not open: %v", err)
	}

	control := open("control.json", nil)
	defer control.Close()
	controlSecrets := run(t, control)
	got := kinds(leaks(read("control.json"), controlSecrets))
	for _, kind := range []string{"wx refresh token", "wax refresh token", "wax basic password"} {
		if !got[kind] {
			t.Errorf("control: an unsealed state file does not show the %s; the check is broken (found %v)", kind, got)
		}
	}
}
