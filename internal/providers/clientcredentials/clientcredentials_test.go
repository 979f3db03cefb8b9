package clientcredentials_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/clientcredentials"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

const (
	clientID = "payments-client"
	// Every character that breaks a naive Basic encoding.
	clientSecret = "a+b%2Fc:d!e^f= g"
	secretEnv    = "CC_TEST_SECRET"
)

var t0 = time.Unix(1700000000, 0).UTC()

func now() time.Time { return t0 }

func env() providers.Env {
	return providers.Env{
		Name: "payments",
		Now:  now,
		Secrets: secret.Loader{
			LookupEnv: func(k string) (string, bool) {
				if k == secretEnv {
					return clientSecret, true
				}
				return "", false
			},
			ReadFile: func(string) ([]byte, error) { return nil, os.ErrNotExist },
		},
	}
}

// emulator starts ccemu and returns it with a Config pointing at it.
func emulator(t *testing.T, opts ccemu.Options) (*ccemu.Server, clientcredentials.Config) {
	t.Helper()
	if opts.ClientID == "" {
		opts.ClientID, opts.ClientSecret = clientID, clientSecret
	}
	opts.Now = now
	emu := ccemu.New(opts)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	return emu, clientcredentials.Config{
		TokenURL:     srv.URL + ccemu.TokenPath,
		ClientID:     clientID,
		ClientSecret: secret.Ref{Env: secretEnv},
	}
}

func open(t *testing.T, cfg clientcredentials.Config) providers.Provider {
	t.Helper()
	p, err := cfg.Open(env())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return p
}

func TestToken(t *testing.T) {
	tests := []struct {
		name       string
		authStyle  string
		cfgScopes  []string
		params     map[string]string
		required   map[string]string
		reqScopes  []string
		wantScopes []string
	}{
		{name: "default style, no scopes anywhere", wantScopes: []string{"admin", "read", "write"}},
		{name: "basic", authStyle: "basic", reqScopes: []string{"read"}, wantScopes: []string{"read"}},
		{name: "body", authStyle: "body", reqScopes: []string{"read", "write"}, wantScopes: []string{"read", "write"}},
		{name: "config default scopes", cfgScopes: []string{"write", "read"}, wantScopes: []string{"read", "write"}},
		{name: "request scopes win", cfgScopes: []string{"admin"}, reqScopes: []string{"read"}, wantScopes: []string{"read"}},
		{
			name:       "endpoint params",
			params:     map[string]string{"audience": "https://pay.example/"},
			required:   map[string]string{"audience": "https://pay.example/"},
			reqScopes:  []string{"read"},
			wantScopes: []string{"read"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			emu, cfg := emulator(t, ccemu.Options{RequiredParams: tt.required})
			cfg.AuthStyle, cfg.Scopes, cfg.EndpointParams = tt.authStyle, tt.cfgScopes, tt.params
			p := open(t, cfg)

			tok, err := p.Token(context.Background(), providers.Request{Scopes: tt.reqScopes})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			id, sec := emu.LastCredentials()
			if id != clientID {
				t.Errorf("upstream saw client id %q; want %q", id, clientID)
			}
			if sec != clientSecret {
				t.Errorf("upstream saw a different client secret (%d bytes; want %d)", len(sec), len(clientSecret))
			}
			if !emu.Valid(tok.AccessToken.Reveal()) {
				t.Error("the access token is not one the upstream issued")
			}
			if tok.TokenType != "Bearer" {
				t.Errorf("TokenType = %q; want Bearer", tok.TokenType)
			}
			if want := t0.Add(36000 * time.Second); !tok.Expiry.Equal(want) {
				t.Errorf("Expiry = %v; want %v", tok.Expiry, want)
			}
			if diff := cmp.Diff(tt.wantScopes, tok.Scopes); diff != "" {
				t.Errorf("Scopes (-want +got):\n%s", diff)
			}
			if tok.Grant != nil {
				t.Error("Grant is set; want nil (client credentials have no refresh token)")
			}
			if n := emu.Requests(); n != 1 {
				t.Errorf("upstream got %d requests; want exactly 1 (never probe both styles)", n)
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	tests := []struct {
		name            string
		setup           func(*ccemu.Server)
		defaultLifetime time.Duration
		want            time.Duration
	}{
		{name: "expires_in number", setup: func(*ccemu.Server) {}, want: 36000 * time.Second},
		{name: "expires_in string", setup: func(e *ccemu.Server) { e.SetExpiresInString(true) }, want: 36000 * time.Second},
		{name: "custom lifetime", setup: func(e *ccemu.Server) { e.SetLifetime(5 * time.Minute) }, want: 5 * time.Minute},
		{name: "missing: default 1h", setup: func(e *ccemu.Server) { e.SetOmitExpiresIn(true) }, want: time.Hour},
		{
			name:            "missing: configured default",
			setup:           func(e *ccemu.Server) { e.SetOmitExpiresIn(true) },
			defaultLifetime: 15 * time.Minute,
			want:            15 * time.Minute,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			emu, cfg := emulator(t, ccemu.Options{})
			tt.setup(emu)
			cfg.DefaultLifetime = providers.Duration{Duration: tt.defaultLifetime}
			tok, err := open(t, cfg).Token(context.Background(), providers.Request{})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if want := t0.Add(tt.want); !tok.Expiry.Equal(want) {
				t.Errorf("Expiry = %v; want %v", tok.Expiry, want)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(*ccemu.Server, *clientcredentials.Config)
		wantIs   []error
		wantCode string
	}{
		{
			name:     "invalid_client",
			setup:    func(e *ccemu.Server, _ *clientcredentials.Config) { e.SetFailure(ccemu.InvalidClient) },
			wantIs:   []error{providers.ErrRejected},
			wantCode: providers.CodeInvalidClient,
		},
		{
			name:     "wrong client id",
			setup:    func(_ *ccemu.Server, c *clientcredentials.Config) { c.ClientID = "someone-else" },
			wantIs:   []error{providers.ErrRejected},
			wantCode: providers.CodeInvalidClient,
		},
		{
			name:     "invalid_scope",
			setup:    func(e *ccemu.Server, _ *clientcredentials.Config) { e.SetFailure(ccemu.InvalidScope) },
			wantIs:   []error{providers.ErrRejected},
			wantCode: providers.CodeInvalidScope,
		},
		{
			name:     "scope not allowed",
			setup:    func(_ *ccemu.Server, c *clientcredentials.Config) { c.Scopes = []string{"superuser"} },
			wantIs:   []error{providers.ErrRejected},
			wantCode: providers.CodeInvalidScope,
		},
		{
			name:   "500",
			setup:  func(e *ccemu.Server, _ *clientcredentials.Config) { e.SetFailure(ccemu.ServerError) },
			wantIs: []error{providers.ErrUnavailable},
		},
		{
			name:   "502 HTML",
			setup:  func(e *ccemu.Server, _ *clientcredentials.Config) { e.SetFailure(ccemu.BadGateway502HTML) },
			wantIs: []error{providers.ErrUnavailable},
		},
		{
			name:   "200 HTML",
			setup:  func(e *ccemu.Server, _ *clientcredentials.Config) { e.SetFailure(ccemu.NonJSON200) },
			wantIs: []error{providers.ErrInvalidResponse},
		},
		{
			name: "slow beyond the timeout",
			setup: func(e *ccemu.Server, c *clientcredentials.Config) {
				e.SetFailure(ccemu.Slow(time.Hour))
				c.Timeout = providers.Duration{Duration: 50 * time.Millisecond}
			},
			wantIs: []error{providers.ErrUnavailable, context.DeadlineExceeded},
		},
		{
			name:   "expires_in 0",
			setup:  func(e *ccemu.Server, _ *clientcredentials.Config) { e.SetLifetime(500 * time.Millisecond) },
			wantIs: []error{providers.ErrInvalidResponse},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			emu, cfg := emulator(t, ccemu.Options{})
			tt.setup(emu, &cfg)
			tok, err := open(t, cfg).Token(context.Background(), providers.Request{})
			if err == nil {
				t.Fatalf("Token = %v, nil; want an error", tok)
			}
			for _, want := range tt.wantIs {
				if !errors.Is(err, want) {
					t.Errorf("Token error = %q; want errors.Is %q", err, want)
				}
			}
			if got := providers.OAuthCode(err); got != tt.wantCode {
				t.Errorf("OAuthCode(Token error) = %q; want %q", got, tt.wantCode)
			}
			if strings.Contains(err.Error(), clientSecret) || strings.Contains(err.Error(), url.QueryEscape(clientSecret)) {
				t.Error("Token error reveals the client secret")
			}
		})
	}
}

// TestUpstreamResponses covers answers ccemu never gives.
func TestUpstreamResponses(t *testing.T) {
	tests := []struct {
		name        string
		defaultType string // Config.DefaultTokenType
		body        string
		wantErr     error
		wantType    string
		wantExpiry  time.Duration
		wantScopes  []string
	}{
		{name: "lower-case bearer", body: `{"access_token":"t","token_type":"bearer","expires_in":60}`, wantType: "bearer", wantExpiry: time.Minute, wantScopes: []string{"read"}},
		{name: "no token_type", body: `{"access_token":"t","expires_in":60}`, wantErr: providers.ErrInvalidResponse},
		{name: "no token_type, default_token_type set", defaultType: "Bearer", body: `{"access_token":"t","expires_in":60}`, wantType: "Bearer", wantExpiry: time.Minute, wantScopes: []string{"read"}},
		{name: "token_type sent, default_token_type set", defaultType: "Bearer", body: `{"access_token":"t","token_type":"bearer","expires_in":60}`, wantType: "bearer", wantExpiry: time.Minute, wantScopes: []string{"read"}},
		{name: "control character in access_token", body: `{"access_token":"t\r\nX: 1","token_type":"Bearer","expires_in":60}`, wantErr: providers.ErrInvalidResponse},
		{name: "granted scopes differ", body: `{"access_token":"t","token_type":"Bearer","expires_in":60,"scope":"write read read"}`, wantType: "Bearer", wantExpiry: time.Minute, wantScopes: []string{"read", "write"}},
		{name: "absurd expires_in", body: `{"access_token":"t","expires_in":1584651600}`, wantErr: providers.ErrInvalidResponse},
		{name: "negative expires_in", body: `{"access_token":"t","expires_in":-5}`, wantErr: providers.ErrInvalidResponse},
		{name: "no access_token", body: `{"token_type":"Bearer","expires_in":60}`, wantErr: providers.ErrInvalidResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			p := open(t, clientcredentials.Config{TokenURL: srv.URL, ClientID: clientID, ClientSecret: secret.Ref{Env: secretEnv},
				DefaultTokenType: tt.defaultType})
			tok, err := p.Token(context.Background(), providers.Request{Scopes: []string{"read"}})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Token error = %v; want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if tok.TokenType != tt.wantType {
				t.Errorf("TokenType = %q; want %q", tok.TokenType, tt.wantType)
			}
			if want := t0.Add(tt.wantExpiry); !tok.Expiry.Equal(want) {
				t.Errorf("Expiry = %v; want %v", tok.Expiry, want)
			}
			if diff := cmp.Diff(tt.wantScopes, tok.Scopes); diff != "" {
				t.Errorf("Scopes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTokenConcurrent(t *testing.T) {
	emu, cfg := emulator(t, ccemu.Options{})
	p := open(t, cfg)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Token(context.Background(), providers.Request{Scopes: []string{"read"}}); err != nil {
				t.Errorf("Token #%d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if n := emu.Issued(); n != 8 {
		t.Errorf("Issued() = %d; want 8", n)
	}
}

func TestValidate(t *testing.T) {
	valid := func() clientcredentials.Config {
		return clientcredentials.Config{
			TokenURL:     "https://pay.example/o/token/",
			ClientID:     clientID,
			ClientSecret: secret.Ref{File: "/run/secrets/cc"},
		}
	}
	tests := []struct {
		name   string
		modify func(*clientcredentials.Config)
		want   []string // one per expected problem, in order
	}{
		{name: "valid", modify: func(*clientcredentials.Config) {}},
		{
			name: "valid with everything",
			modify: func(c *clientcredentials.Config) {
				c.AuthStyle, c.Scopes = "body", []string{"read", "write"}
				c.DefaultLifetime = providers.Duration{Duration: time.Minute}
				c.Timeout = providers.Duration{Duration: time.Second}
				c.MaxResponseBytes = 4096
				c.EndpointParams = map[string]string{"audience": "x"}
				c.DefaultTokenType = "Bearer"
			},
		},
		{
			name:   "empty",
			modify: func(c *clientcredentials.Config) { *c = clientcredentials.Config{} },
			want:   []string{"token_url: required", "client_id: required", "client_secret: required"},
		},
		{
			name: "every bad value",
			modify: func(c *clientcredentials.Config) {
				c.TokenURL = "ftp://pay.example/o/token/"
				c.ClientSecret = secret.Ref{File: "/a", Env: "B"}
				c.AuthStyle = "x"
				c.Scopes = []string{"read write", ""}
				c.DefaultLifetime = providers.Duration{Duration: -time.Second}
				c.Timeout = providers.Duration{Duration: -time.Second}
				c.MaxResponseBytes = -1
				c.DefaultTokenType = "Bearer: x"
				c.EndpointParams = map[string]string{"scope": "admin", "grant_type": "password", "audience": "ok"}
			},
			want: []string{
				`token_url: must be an absolute http or https URL, got scheme "ftp"`,
				"client_secret: file and env are mutually exclusive",
				`auth_style: must be "basic" or "body", got "x"`,
				"scopes[0]: ",
				"scopes[1]: empty scope",
				"default_lifetime: must not be negative",
				"timeout: must not be negative",
				"max_response_bytes: must not be negative",
				"default_token_type: token type has a character RFC 6749 §11.1 does not allow",
				`endpoint_params: "grant_type" is set by the grant`,
				`endpoint_params: "scope" is set by the grant`,
			},
		},
		{
			name:   "relative URL",
			modify: func(c *clientcredentials.Config) { c.TokenURL = "/o/token/" },
			want:   []string{"token_url: must be an absolute http or https URL"},
		},
		{
			name:   "credentials in URL",
			modify: func(c *clientcredentials.Config) { c.TokenURL = "https://id:pw@pay.example/o/token/" },
			want:   []string{"token_url: must not contain credentials"},
		},
		{
			name: "client credentials as endpoint params",
			modify: func(c *clientcredentials.Config) {
				c.EndpointParams = map[string]string{"client_secret": "x", "client_id": "y"}
			},
			want: []string{`endpoint_params: "client_id"`, `endpoint_params: "client_secret"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.modify(&cfg)
			err := cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want %d problems", len(tt.want))
			}
			joined, ok := err.(interface{ Unwrap() []error })
			if !ok {
				t.Fatalf("Validate() = %v; want an errors.Join of every problem", err)
			}
			got := joined.Unwrap()
			if len(got) != len(tt.want) {
				t.Errorf("Validate() reported %d problems; want %d:\n%v", len(got), len(tt.want), err)
			}
			for i := 0; i < len(got) && i < len(tt.want); i++ {
				if !strings.HasPrefix(got[i].Error(), tt.want[i]) {
					t.Errorf("problem %d = %q; want prefix %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-secret")
	tests := []struct {
		name string
		cfg  clientcredentials.Config
		env  providers.Env
		want string
	}{
		{
			name: "missing secret file",
			cfg:  clientcredentials.Config{TokenURL: "https://x/o/token/", ClientID: "c", ClientSecret: secret.Ref{File: missing}},
			env:  providers.Env{},
			want: "client_secret: read file " + missing + ": no such file or directory",
		},
		{
			name: "secret file is a directory",
			cfg:  clientcredentials.Config{TokenURL: "https://x/o/token/", ClientID: "c", ClientSecret: secret.Ref{File: dir}},
			env:  providers.Env{},
			want: "client_secret: read file " + dir + ": ",
		},
		{
			name: "unset variable",
			cfg:  clientcredentials.Config{TokenURL: "https://x/o/token/", ClientID: "c", ClientSecret: secret.Ref{Env: "CC_TEST_UNSET"}},
			env:  env(),
			want: "client_secret: environment variable CC_TEST_UNSET is not set",
		},
		{
			name: "invalid config",
			cfg:  clientcredentials.Config{ClientSecret: secret.Ref{Env: secretEnv}},
			env:  env(),
			want: "token_url: required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.cfg.Open(tt.env)
			if err == nil {
				t.Fatalf("Open = %v, nil; want an error", p)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Open error = %q; want prefix %q", err, tt.want)
			}
		})
	}
}

func TestOpenReadsSecretFile(t *testing.T) {
	emu, cfg := emulator(t, ccemu.Options{})
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(clientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.ClientSecret = secret.Ref{File: path}
	p, err := cfg.Open(providers.Env{Now: now}) // zero Loader: the real file system
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := p.Token(context.Background(), providers.Request{}); err != nil {
		t.Fatalf("Token: %v", err)
	}
	if _, sec := emu.LastCredentials(); sec != clientSecret {
		t.Error("upstream saw a different client secret; want the file's contents less the newline")
	}
}

func TestDescribe(t *testing.T) {
	_, cfg := emulator(t, ccemu.Options{})
	p := open(t, cfg)
	d, ok := p.(providers.Describer)
	if !ok {
		t.Fatal("provider is not a providers.Describer")
	}
	want := map[string]string{"token_url": cfg.TokenURL}
	if diff := cmp.Diff(want, d.Describe()); diff != "" {
		t.Errorf("Describe() (-want +got):\n%s", diff)
	}
}

func TestYAML(t *testing.T) {
	const doc = `
token_url: https://pay.example/o/token/
client_id: payments-client
client_secret: {file: /run/secrets/cc}
auth_style: body
scopes: [read, write]
default_lifetime: 30m
timeout: 5s
max_response_bytes: 65536
default_token_type: Bearer
endpoint_params: {audience: payments}
`
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	var got clientcredentials.Config
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	want := clientcredentials.Config{
		TokenURL:         "https://pay.example/o/token/",
		ClientID:         "payments-client",
		ClientSecret:     secret.Ref{File: "/run/secrets/cc"},
		AuthStyle:        "body",
		Scopes:           []string{"read", "write"},
		DefaultLifetime:  providers.Duration{Duration: 30 * time.Minute},
		Timeout:          providers.Duration{Duration: 5 * time.Second},
		MaxResponseBytes: 65536,
		DefaultTokenType: "Bearer",
		EndpointParams:   map[string]string{"audience": "payments"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decoded Config (-want +got):\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate() = %v; want nil", err)
	}
}
