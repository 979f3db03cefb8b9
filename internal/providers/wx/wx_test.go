package wx_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mr-tron/base58"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/wx"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

// signedExpiry is what the fixture's provider signs at start: start + 1h,
// in whole seconds.
var signedExpiry = time.Unix(start.Add(time.Hour).Unix(), 0)

// refreshExpiry is the exp of the refresh token the emulator issues at start.
var refreshExpiry = time.Unix(start.Add(wxemu.DefaultRefreshLifetime).Unix(), 0)

// leaks returns a description of which recorded secrets s contains, without
// quoting them; "" when none.
func leaks(s string, secrets []string) string {
	var found []string
	for i, sec := range secrets {
		if len(sec) >= 8 && strings.Contains(s, sec) {
			found = append(found, "secret #"+itoa(i))
		}
	}
	if strings.Contains(s, testSeed) {
		found = append(found, "the seed phrase")
	}
	return strings.Join(found, ", ")
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestTokenExpiry(t *testing.T) {
	relative := start.Add(3599 * time.Second) // expires_in 3599 counted from Sent
	tests := []struct {
		name    string
		mode    wxemu.ExpiresIn
		opaque  bool
		jwt, ei time.Duration // emulator lies: offsets of the exp claim and expires_in
		want    time.Time
		wantErr string // in the error message; the error wraps ErrInvalidResponse
	}{
		{name: "absolute", mode: wxemu.Absolute, want: signedExpiry},
		{name: "relative", mode: wxemu.Relative, want: relative},
		{name: "omitted, JWT exp", mode: wxemu.Omitted, want: signedExpiry},
		{name: "opaque token, absolute", mode: wxemu.Absolute, opaque: true, want: signedExpiry},
		{name: "opaque token, relative", mode: wxemu.Relative, opaque: true, want: relative},
		{name: "JWT exp earlier than absolute expires_in", mode: wxemu.Absolute, jwt: -10 * time.Minute, want: signedExpiry.Add(-10 * time.Minute)},
		{name: "JWT exp earlier than relative expires_in", mode: wxemu.Relative, jwt: -10 * time.Minute, want: signedExpiry.Add(-10 * time.Minute)},
		{name: "absolute expires_in earlier than JWT exp", mode: wxemu.Absolute, ei: -10 * time.Minute, want: signedExpiry.Add(-10 * time.Minute)},
		{name: "relative expires_in earlier than JWT exp", mode: wxemu.Relative, ei: -10 * time.Minute, want: relative.Add(-10 * time.Minute)},
		{name: "expires_in beyond the signed expiry, JWT exp honest", mode: wxemu.Absolute, ei: time.Hour, want: signedExpiry},
		{name: "relative expires_in a little beyond the signed expiry", mode: wxemu.Relative, opaque: true, ei: 30 * time.Second, want: signedExpiry},
		{name: "opaque token without expires_in", mode: wxemu.Omitted, opaque: true, wantErr: "no expires_in"},
		{name: "expiry in the past", mode: wxemu.Absolute, jwt: -2 * time.Hour, ei: -2 * time.Hour, wantErr: "not in the future"},
		{name: "relative expiry in the past", mode: wxemu.Relative, opaque: true, ei: -2 * time.Hour, wantErr: "not in the future"},
		{name: "expiry beyond the signed expiry", mode: wxemu.Absolute, jwt: time.Hour, ei: time.Hour, wantErr: "later than the signed expiry"},
		{name: "JWT exp beyond the signed expiry, no expires_in", mode: wxemu.Omitted, jwt: time.Hour, wantErr: "later than the signed expiry"},
		{name: "relative expiry beyond the signed expiry", mode: wxemu.Relative, opaque: true, ei: time.Hour, wantErr: "later than the signed expiry"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{ExpiresIn: tc.mode})
			f.emu.SetOpaqueAccessTokens(tc.opaque)
			f.emu.SetExpiryOffsets(tc.jwt, tc.ei)
			p := f.open(t)
			tok, err := p.(providers.Provider).Token(context.Background(), providers.Request{})
			if tc.wantErr != "" {
				if !errors.Is(err, providers.ErrInvalidResponse) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Token() error = %v; want ErrInvalidResponse mentioning %q", err, tc.wantErr)
				}
				if l := leaks(err.Error(), f.wire.secrets()); l != "" {
					t.Errorf("Token() error contains %s", l)
				}
				return
			}
			if err != nil {
				t.Fatalf("Token() error = %v", err)
			}
			if !tok.Expiry.Equal(tc.want) {
				t.Errorf("Token().Expiry = %v; want %v", tok.Expiry.UTC(), tc.want.UTC())
			}
		})
	}
}

func TestTokenResult(t *testing.T) {
	f := newFixture(t, wxemu.Options{})
	p := f.open(t)
	tok, err := p.(providers.Provider).Token(context.Background(), providers.Request{Scopes: []string{"general"}})
	if err != nil {
		t.Fatalf("Token() error = %v", err)
	}
	at, rt := f.wire.lastTokens()
	if tok.AccessToken.Reveal() != at {
		t.Error("Token().AccessToken is not the access token the emulator issued")
	}
	if tok.Grant == nil {
		t.Fatal("Token().Grant = nil; want the refresh token")
	}
	if tok.Grant.RefreshToken.Reveal() != rt {
		t.Error("Token().Grant.RefreshToken is not the refresh token the emulator issued")
	}
	got := struct {
		TokenType     string
		Scopes        []string
		GrantScopes   []string
		RefreshExpiry time.Time
		State         providers.GrantState
	}{tok.TokenType, tok.Scopes, tok.Grant.Scopes, tok.Grant.RefreshExpiry.UTC(), tok.Grant.State}
	want := got
	want.TokenType, want.Scopes, want.GrantScopes = "bearer", []string{"general"}, []string{"general"}
	want.RefreshExpiry, want.State = refreshExpiry.UTC(), providers.GrantReady
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Token() (-want +got):\n%s", diff)
	}

	form := f.wire.lastForm()
	pk := f.sk.Public()
	wantPassword := strings.Join([]string{strconv.FormatInt(signedExpiry.Unix(), 10), base58.Encode(mustSign(t, f.sk, signedExpiry.Unix()))}, ":")
	checks := []struct {
		field string
		ok    bool
	}{
		{"grant_type", form.Get("grant_type") == "password"},
		{"scope", form.Get("scope") == "general"},
		{"username", form.Get("username") == pk.String()},
		{"client_id", form.Get("client_id") == clientID},
		{"password", form.Get("password") == wantPassword},
		{"no other fields", len(form) == 5},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("password grant form: %s is not as expected", c.field)
		}
	}
}

// mustSign signs the token message for expiry with zero randomness, as the
// fixture's provider does.
func mustSign(t *testing.T, sk wavescrypto.PrivateKey, expiry int64) []byte {
	t.Helper()
	sig, err := wavescrypto.Sign(sk, wavescrypto.TokenMessage('W', clientID, expiry), zeroReader{})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return sig
}

// vectorFile is the part of testdata/wx/vectors.json used here: values made
// with the reference library, @waves/ts-lib-crypto.
type vectorFile struct {
	Seeds []struct {
		Seed       string            `json:"seed"`
		Nonce      int64             `json:"nonce"`
		PrivateKey string            `json:"privateKey"`
		PublicKey  string            `json:"publicKey"`
		Address    map[string]string `json:"address"`
		Messages   []struct {
			Kind      string `json:"kind"`
			Chain     string `json:"chain"`
			ClientID  string `json:"client_id"`
			Expiry    int64  `json:"expiry"`
			RandomHex string `json:"random_hex"`
			Form      string `json:"form"`
		} `json:"messages"`
	} `json:"seeds"`
}

func loadVectors(t *testing.T) *vectorFile {
	t.Helper()
	data, err := os.ReadFile("../../../testdata/wx/vectors.json")
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var v vectorFile
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("decode vectors: %v", err)
	}
	if len(v.Seeds) == 0 {
		t.Fatal("vectors file has no seeds")
	}
	return &v
}

// TestPasswordGrantMatchesReference sends the password grant of every token
// vector, with the vector's 64 random bytes injected and the clock set so the
// signed expiry is the vector's, and compares the form field by field with
// the one the reference library produced. The emulator must accept it.
func TestPasswordGrantMatchesReference(t *testing.T) {
	v := loadVectors(t)
	n := 0
	for i, s := range v.Seeds {
		for j, m := range s.Messages {
			if m.Kind != "token" || len(m.Chain) != 1 || m.Form == "" {
				continue
			}
			n++
			t.Run(itoa(i)+"/"+itoa(j), func(t *testing.T) {
				random, err := hex.DecodeString(m.RandomHex)
				if err != nil {
					t.Fatalf("random_hex: %v", err)
				}
				want, err := url.ParseQuery(m.Form)
				if err != nil {
					t.Fatalf("vector form: %v", err)
				}
				clk := newClock(time.Unix(m.Expiry, 0).Add(-time.Hour))
				emu := wxemu.New(wxemu.Options{ClientID: m.ClientID, Chain: m.Chain[0], Now: clk.Now})
				w := &wire{h: emu}
				srv := httptest.NewServer(w)
				defer srv.Close()
				cfg := &wx.Config{
					TokenURL:      srv.URL + wxemu.TokenPath,
					ClientID:      m.ClientID,
					ChainID:       m.Chain,
					Seed:          secret.Ref{Env: "SEED"},
					Nonce:         s.Nonce,
					TokenLifetime: providers.Duration{Duration: time.Hour},
				}
				p, err := cfg.Open(providers.Env{
					Now:        clk.Now,
					Rand:       strings.NewReader(string(random)),
					HTTPClient: srv.Client(),
					Secrets:    secret.Loader{LookupEnv: func(string) (string, bool) { return s.Seed, true }},
				})
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if _, err := p.Token(context.Background(), providers.Request{}); err != nil {
					t.Fatalf("Token() error = %v", err)
				}
				got := w.lastForm()
				var differ []string
				for _, k := range sortedKeys(want, got) {
					if !slices.Equal(want[k], got[k]) {
						differ = append(differ, k)
					}
				}
				if len(differ) > 0 {
					t.Errorf("form fields differing from the reference library's: %v", differ)
				}
			})
		}
	}
	if n == 0 {
		t.Fatal("no token vectors with a form")
	}
}

func sortedKeys(vs ...url.Values) []string {
	var keys []string
	for _, v := range vs {
		for k := range v {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

func TestRefresh(t *testing.T) {
	const sinceGrant = 50 * time.Minute
	// The emulator gives a refreshed token the password grant's lifetime,
	// signed expiry − start, counted from the refresh.
	refreshed := start.Add(sinceGrant).Add(signedExpiry.Sub(start))
	tests := []struct {
		name     string
		mode     wxemu.ExpiresIn
		rotation bool
		want     time.Time
	}{
		{name: "absolute, rotation", mode: wxemu.Absolute, rotation: true, want: refreshed},
		{name: "relative, rotation", mode: wxemu.Relative, rotation: true, want: start.Add(sinceGrant + 3599*time.Second)},
		{name: "absolute, no rotation", mode: wxemu.Absolute, want: refreshed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{ExpiresIn: tc.mode, Rotation: tc.rotation})
			p := f.open(t)
			ctx := context.Background()
			first, err := p.(providers.Provider).Token(ctx, providers.Request{})
			if err != nil {
				t.Fatalf("Token() error = %v", err)
			}
			f.clk.Advance(sinceGrant)
			tok, err := p.Refresh(ctx, providers.Request{}, first.Grant)
			if err != nil {
				t.Fatalf("Refresh() error = %v", err)
			}
			form := f.wire.lastForm()
			checks := []struct {
				field string
				ok    bool
			}{
				{"grant_type", form.Get("grant_type") == "refresh_token"},
				{"scope", form.Get("scope") == "general"},
				{"client_id", form.Get("client_id") == clientID},
				{"refresh_token", form.Get("refresh_token") == first.Grant.RefreshToken.Reveal()},
				{"no other fields", len(form) == 4},
			}
			for _, c := range checks {
				if !c.ok {
					t.Errorf("refresh form: %s is not as expected", c.field)
				}
			}
			if !tok.Expiry.Equal(tc.want) {
				t.Errorf("Refresh().Expiry = %v; want %v", tok.Expiry.UTC(), tc.want.UTC())
			}
			if tok.AccessToken.Equal(first.AccessToken) {
				t.Error("Refresh() returned the old access token")
			}
			if tok.Grant == nil {
				t.Fatal("Refresh().Grant = nil")
			}
			if rotated := !tok.Grant.RefreshToken.Equal(first.Grant.RefreshToken); rotated != tc.rotation {
				t.Errorf("refresh token rotated = %v; want %v", rotated, tc.rotation)
			}
			wantRefreshExpiry := refreshExpiry
			if tc.rotation {
				wantRefreshExpiry = time.Unix(f.clk.Now().Add(wxemu.DefaultRefreshLifetime).Unix(), 0)
			}
			if !tok.Grant.RefreshExpiry.Equal(wantRefreshExpiry) {
				t.Errorf("Refresh().Grant.RefreshExpiry = %v; want %v", tok.Grant.RefreshExpiry.UTC(), wantRefreshExpiry.UTC())
			}
		})
	}
}

func TestUpstreamErrors(t *testing.T) {
	tests := []struct {
		name     string
		prepare  func(f *fixture)
		refresh  bool
		wantIs   error
		wantCode string
	}{
		{name: "refresh token revoked", prepare: func(f *fixture) { f.emu.RevokeRefreshTokens() }, refresh: true,
			wantIs: providers.ErrRejected, wantCode: providers.CodeInvalidGrant},
		{name: "refresh token expired", prepare: func(f *fixture) { f.clk.Advance(wxemu.DefaultRefreshLifetime) }, refresh: true,
			wantIs: providers.ErrRejected, wantCode: providers.CodeInvalidGrant},
		{name: "invalid client on refresh", prepare: func(f *fixture) { f.emu.SetFailure(wxemu.InvalidClient) }, refresh: true,
			wantIs: providers.ErrRejected, wantCode: providers.CodeInvalidClient},
		{name: "invalid client on password grant", prepare: func(f *fixture) { f.emu.SetFailure(wxemu.InvalidClient) },
			wantIs: providers.ErrRejected, wantCode: providers.CodeInvalidClient},
		{name: "server error", prepare: func(f *fixture) { f.emu.SetFailure(wxemu.ServerError) },
			wantIs: providers.ErrUnavailable},
		{name: "server error on refresh", prepare: func(f *fixture) { f.emu.SetFailure(wxemu.ServerError) }, refresh: true,
			wantIs: providers.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{Rotation: true})
			p := f.open(t)
			ctx := context.Background()
			first, err := p.(providers.Provider).Token(ctx, providers.Request{})
			if err != nil {
				t.Fatalf("Token() error = %v", err)
			}
			tc.prepare(f)
			if tc.refresh {
				_, err = p.Refresh(ctx, providers.Request{}, first.Grant)
			} else {
				_, err = p.(providers.Provider).Token(ctx, providers.Request{})
			}
			if !errors.Is(err, tc.wantIs) || providers.OAuthCode(err) != tc.wantCode {
				t.Fatalf("error = %v; want %v with OAuth code %q", err, tc.wantIs, tc.wantCode)
			}
			if l := leaks(err.Error(), f.wire.secrets()); l != "" {
				t.Errorf("error contains %s", l)
			}
		})
	}
}

func TestScopes(t *testing.T) {
	tests := []struct {
		name   string
		scopes []string
		wantIs error
	}{
		{name: "default", scopes: nil},
		{name: "general", scopes: []string{"general"}},
		{name: "other", scopes: []string{"read"}, wantIs: providers.ErrNotSupported},
		{name: "general and other", scopes: []string{"general", "read"}, wantIs: providers.ErrNotSupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{})
			p := f.open(t)
			_, err := p.(providers.Provider).Token(context.Background(), providers.Request{Scopes: tc.scopes})
			if !errors.Is(err, tc.wantIs) || (tc.wantIs == nil) != (err == nil) {
				t.Errorf("Token(%q) error = %v; want %v", tc.scopes, err, tc.wantIs)
			}
			wantRequests := 1
			if tc.wantIs != nil {
				wantRequests = 0
			}
			if got := f.emu.Count(wxemu.GrantPassword); got != wantRequests {
				t.Errorf("Count(password) = %d; want %d", got, wantRequests)
			}
		})
	}
}

// TestDescribe checks the address against the reference library's, for a key
// given as a seed and as a base58 private key, on both chains.
func TestDescribe(t *testing.T) {
	v := loadVectors(t)
	s := v.Seeds[0]
	for _, chain := range []string{"W", "T"} {
		for _, source := range []string{"seed", "private_key"} {
			t.Run(chain+"/"+source, func(t *testing.T) {
				cfg := &wx.Config{TokenURL: "https://api.wx.network/v1/oauth2/token", ClientID: clientID, ChainID: chain}
				value := s.Seed
				if source == "seed" {
					cfg.Seed = secret.Ref{Env: "KEY"}
					cfg.Nonce = s.Nonce
				} else {
					cfg.PrivateKey = secret.Ref{Env: "KEY"}
					value = s.PrivateKey + "\n"
				}
				p, err := cfg.Open(providers.Env{Secrets: secret.Loader{LookupEnv: func(string) (string, bool) { return value, true }}})
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				d, ok := p.(providers.Describer)
				if !ok {
					t.Fatal("the wx provider is not a providers.Describer")
				}
				want := map[string]string{"address": s.Address[chain], "chain_id": chain}
				if diff := cmp.Diff(want, d.Describe()); diff != "" {
					t.Errorf("Describe() (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestValidate(t *testing.T) {
	valid := func() *wx.Config {
		return &wx.Config{
			TokenURL: "https://api.wx.network/v1/oauth2/token",
			ClientID: "wx.network",
			Seed:     secret.Ref{File: "/run/secrets/wx-seed"},
		}
	}
	tests := []struct {
		name string
		cfg  func() *wx.Config
		want []string // one line per problem, in order
	}{
		{name: "valid", cfg: valid},
		{name: "valid with private key, testnet, limits", cfg: func() *wx.Config {
			c := valid()
			c.Seed, c.PrivateKey = secret.Ref{}, secret.Ref{Env: "WX_KEY"}
			c.ChainID = "T"
			c.TokenLifetime = providers.Duration{Duration: 168 * time.Hour}
			c.DefaultTokenType = "Bearer"
			return c
		}},
		{name: "empty", cfg: func() *wx.Config { return &wx.Config{} }, want: []string{
			"token_url: required",
			"client_id: required",
			"seed: one of seed or private_key is required",
		}},
		{name: "everything wrong", cfg: func() *wx.Config {
			return &wx.Config{
				TokenURL:         "ftp://api.wx.network/v1/oauth2/token",
				ClientID:         "wx:network",
				ChainID:          "WT",
				Seed:             secret.Ref{File: "/a", Env: "B"},
				PrivateKey:       secret.Ref{Env: "C"},
				Nonce:            -1,
				TokenLifetime:    providers.Duration{Duration: 169 * time.Hour},
				Timeout:          providers.Duration{Duration: -time.Second},
				MaxResponseBytes: -1,
				DefaultTokenType: "bearer token",
			}
		}, want: []string{
			"token_url: must be an absolute http or https URL",
			"client_id: must not contain ':'",
			"chain_id: must be a single byte",
			"private_key: seed and private_key are mutually exclusive",
			"nonce: must be between 0 and 4294967295",
			"token_lifetime: must be between 1m0s and 168h0m0s",
			"timeout: must not be negative",
			"max_response_bytes: must not be negative",
			"default_token_type: token type has a character RFC 6749 §11.1 does not allow",
		}},
		{name: "seed ref with both sources, lifetime too short", cfg: func() *wx.Config {
			c := valid()
			c.Seed.Env = "ALSO"
			c.TokenLifetime = providers.Duration{Duration: 30 * time.Second}
			return c
		}, want: []string{
			"seed: file and env are mutually exclusive",
			"token_lifetime: must be between",
		}},
		{name: "imported ok", cfg: func() *wx.Config {
			c := valid()
			c.Seed, c.Credentials = secret.Ref{}, wx.CredentialsImported
			return c
		}},
		{name: "imported with a key and signing settings", cfg: func() *wx.Config {
			c := valid()
			c.Credentials, c.PrivateKey = wx.CredentialsImported, secret.Ref{Env: "K"}
			c.ChainID, c.Nonce, c.TokenLifetime = "T", 1, providers.Duration{Duration: time.Hour}
			return c
		}, want: []string{"credentials: imported is for a connection without a key: remove seed and private_key"}},
		{name: "imported with signing settings", cfg: func() *wx.Config {
			c := valid()
			c.Seed, c.Credentials = secret.Ref{}, wx.CredentialsImported
			c.ChainID, c.Nonce, c.TokenLifetime = "T", 1, providers.Duration{Duration: time.Hour}
			return c
		}, want: []string{"nonce: applies only to seed", "chain_id: does not apply with credentials: imported",
			"token_lifetime: does not apply with credentials: imported"}},
		{name: "unknown credentials", cfg: func() *wx.Config {
			c := valid()
			c.Credentials = "app"
			return c
		}, want: []string{`credentials: must be "imported"`}},
		{name: "nonce with a private key", cfg: func() *wx.Config {
			c := valid()
			c.Seed, c.PrivateKey, c.Nonce = secret.Ref{}, secret.Ref{Env: "K"}, 2
			return c
		}, want: []string{"nonce: applies only to seed"}},
		{name: "token url without host", cfg: func() *wx.Config {
			c := valid()
			c.TokenURL = "https:///v1/oauth2/token"
			return c
		}, want: []string{"token_url: must be an absolute URL with a host"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg().Validate()
			var lines []string
			if err != nil {
				lines = strings.Split(err.Error(), "\n")
			}
			if len(lines) != len(tc.want) {
				t.Fatalf("Validate() = %d problems %q; want %d", len(lines), lines, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("problem %d = %q; want prefix %q", i, lines[i], w)
				}
			}
		})
	}
}

// TestOpenKeyErrors: a bad key fails Open with the setting and the problem
// named, and nothing of the key in the message.
func TestOpenKeyErrors(t *testing.T) {
	realKey := wavescrypto.PrivateKeyFromSeed(testSeed, 0)
	tests := []struct {
		name     string
		setting  string // "seed" or "private_key"
		content  string
		noFile   bool
		wantIs   error
		wantText string
	}{
		{name: "empty key file", setting: "private_key", content: "", wantIs: secret.ErrEmpty, wantText: "secret is empty"},
		{name: "key file with a newline only", setting: "private_key", content: "\n", wantIs: secret.ErrEmpty, wantText: "secret is empty"},
		{name: "key file with spaces only", setting: "private_key", content: "   \n", wantIs: wavescrypto.ErrEmptyKey, wantText: "empty key"},
		{name: "not base58", setting: "private_key", content: "0OIl" + base58.Encode(realKey[:20]), wantIs: wavescrypto.ErrKeyEncoding, wantText: "not valid base58"},
		{name: "seed phrase in the key file", setting: "private_key", content: testSeed, wantIs: wavescrypto.ErrKeyEncoding, wantText: "not valid base58"},
		{name: "too short", setting: "private_key", content: base58.Encode(realKey[:31]), wantIs: wavescrypto.ErrKeyLength, wantText: "31 bytes, want 32"},
		{name: "too long", setting: "private_key", content: base58.Encode(append(realKey[:], 7)), wantIs: wavescrypto.ErrKeyLength, wantText: "33 bytes, want 32"},
		{name: "missing key file", setting: "private_key", noFile: true, wantIs: os.ErrNotExist, wantText: "no such file"},
		{name: "empty seed file", setting: "seed", content: "", wantIs: secret.ErrEmpty, wantText: "secret is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key")
			if !tc.noFile {
				if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg := &wx.Config{TokenURL: "https://api.wx.network/v1/oauth2/token", ClientID: clientID}
			if tc.setting == "seed" {
				cfg.Seed = secret.Ref{File: path}
			} else {
				cfg.PrivateKey = secret.Ref{File: path}
			}
			_, err := cfg.Open(providers.Env{Name: "wx-main"})
			if !errors.Is(err, tc.wantIs) {
				t.Fatalf("Open() error = %v; want %v", err, tc.wantIs)
			}
			msg := err.Error()
			for _, want := range []string{tc.setting + ": ", path, tc.wantText} {
				if !strings.Contains(msg, want) {
					t.Errorf("Open() error = %q; want it to contain %q", msg, want)
				}
			}
			if s := strings.TrimSpace(tc.content); s != "" && strings.Contains(msg, s) {
				t.Error("Open() error contains the key file's content")
			}
			if strings.Contains(msg, base58.Encode(realKey[:])) || strings.Contains(msg, base58.Encode(realKey[:20])) {
				t.Error("Open() error contains the key")
			}
		})
	}
}

// TestConfigFile goes through the broker's configuration loader: the YAML
// keys decode strictly into Config, and an Open failure names the connection.
func TestConfigFile(t *testing.T) {
	reg := providers.NewRegistry()
	reg.MustRegister("wx", func() providers.Config { return new(wx.Config) })
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "wx.key")
	if err := os.WriteFile(keyFile, []byte("not-base58-0OIl\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("decodes", func(t *testing.T) {
		yml := `
connections:
  - name: wx-main
    type: wx
    token_url: https://api.wx.network/v1/oauth2/token
    client_id: wx.network
    chain_id: T
    private_key: {file: ` + keyFile + `}
    token_lifetime: 24h
    timeout: 5s
    max_response_bytes: 65536
    default_token_type: bearer
`
		cfg, err := config.Parse([]byte(yml), reg)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		want := &wx.Config{
			TokenURL:         "https://api.wx.network/v1/oauth2/token",
			ClientID:         "wx.network",
			ChainID:          "T",
			PrivateKey:       secret.Ref{File: keyFile},
			TokenLifetime:    providers.Duration{Duration: 24 * time.Hour},
			Timeout:          providers.Duration{Duration: 5 * time.Second},
			MaxResponseBytes: 65536,
			DefaultTokenType: "bearer",
		}
		if diff := cmp.Diff(want, cfg.Connections[0].Provider); diff != "" {
			t.Errorf("decoded config (-want +got):\n%s", diff)
		}
		_, err = cfg.Connections[0].Provider.Open(providers.Env{Name: "wx-main"})
		if err == nil {
			t.Fatal("Open() with a bad key file succeeded")
		}
		msg := config.OpenError(0, "wx-main", err).Error()
		for _, want := range []string{"wx-main", "private_key", "not valid base58"} {
			if !strings.Contains(msg, want) {
				t.Errorf("startup error %q does not name %q", msg, want)
			}
		}
		if strings.Contains(msg, "0OIl") {
			t.Error("startup error contains the key file's content")
		}
	})

	t.Run("every problem", func(t *testing.T) {
		yml := `
connections:
  - name: wx-main
    type: wx
    token_url: https://api.wx.network/v1/oauth2/token
    chain_id: WT
    seed_file: /run/secrets/seed
    token_lifetime: 8d
`
		_, err := config.Parse([]byte(yml), reg)
		if err == nil {
			t.Fatal("Parse succeeded")
		}
		msg := err.Error()
		for _, want := range []string{"seed_file", "token_lifetime", "client_id: required", "chain_id: must be a single byte"} {
			if !strings.Contains(msg, want) {
				t.Errorf("Parse error does not mention %q:\n%s", want, msg)
			}
		}
	})
}

// TestNonce: the nonce picks another account of the same seed.
func TestNonce(t *testing.T) {
	for _, nonce := range []int64{0, 1, 7} {
		t.Run(strconv.FormatInt(nonce, 10), func(t *testing.T) {
			cfg := &wx.Config{TokenURL: "https://api.wx.network/v1/oauth2/token", ClientID: clientID,
				Seed: secret.Ref{Env: "SEED"}, Nonce: nonce}
			p, err := cfg.Open(providers.Env{Secrets: secret.Loader{LookupEnv: func(string) (string, bool) { return testSeed, true }}})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			want := wavescrypto.NewAddress(wavescrypto.PrivateKeyFromSeed(testSeed, uint32(nonce)).Public(), 'W').String()
			if got := p.(providers.Describer).Describe()["address"]; got != want {
				t.Errorf("address = %s; want %s", got, want)
			}
		})
	}
}

// TestDefaultTokenType: the gateway documents token_type (always bearer,
// PROTOCOLS.md §1), so an answer without one is refused unless the
// connection sets default_token_type.
func TestDefaultTokenType(t *testing.T) {
	for _, tc := range []struct{ defaultType, want string }{{"", ""}, {"Bearer", "Bearer"}} {
		t.Run("default "+tc.defaultType, func(t *testing.T) {
			f := newFixture(t, wxemu.Options{ExpiresIn: wxemu.Absolute})
			f.wire.h = withoutTokenType{f.emu}
			f.cfg.DefaultTokenType = tc.defaultType
			tok, err := f.open(t).(providers.Provider).Token(context.Background(), providers.Request{})
			if tc.want == "" {
				if !errors.Is(err, providers.ErrInvalidResponse) || !strings.Contains(err.Error(), "no token_type") {
					t.Fatalf("Token() error = %v; want ErrInvalidResponse for the missing token_type", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Token() error = %v", err)
			}
			if tok.TokenType != tc.want {
				t.Errorf("Token().TokenType = %q; want %q", tok.TokenType, tc.want)
			}
		})
	}
}

// withoutTokenType drops token_type from the emulator's answers.
type withoutTokenType struct{ h http.Handler }

func (w withoutTokenType) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	w.h.ServeHTTP(rec, r)
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		http.Error(rw, "emulator answer is not JSON", http.StatusInternalServerError)
		return
	}
	delete(body, "token_type")
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(rec.Code)
	_ = json.NewEncoder(rw).Encode(body)
}
