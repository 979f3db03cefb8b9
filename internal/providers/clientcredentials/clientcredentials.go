// Package clientcredentials implements the OAuth 2.0 client credentials
// grant (RFC 6749 §4.4) against token endpoints in the style of Django OAuth
// Toolkit (`POST {base}/o/token/`, PROTOCOLS.md §3).
//
// The client authenticates with HTTP Basic, its id and secret form-encoded
// as RFC 6749 §2.3.1 requires (servers of this family form-decode them), or
// with client_id and client_secret form fields; the style is a per-connection
// setting and both are never tried. There is no refresh token: the broker
// runs the grant again when the cached token nears its expiry.
package clientcredentials

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Defaults applied by Open to zero Config fields.
const (
	DefaultAuthStyle        = AuthStyleBasic
	DefaultLifetime         = time.Hour
	DefaultTimeout          = 10 * time.Second
	DefaultMaxResponseBytes = tokenhttp.DefaultMaxResponseBytes
)

// Values of Config.AuthStyle.
const (
	// AuthStyleBasic: HTTP Basic with the id and secret form-encoded
	// (RFC 6749 §2.3.1).
	AuthStyleBasic = "basic"
	// AuthStyleBody: client_id and client_secret form fields.
	AuthStyleBody = "body"
)

// reservedParams may not be set through EndpointParams: the grant sets them.
var reservedParams = []string{"grant_type", "scope", "client_id", "client_secret"}

// Config is one client_credentials connection, decoded from the `config`
// block of a connection in the broker's YAML file.
type Config struct {
	// TokenURL is the absolute http(s) URL of the token endpoint, such as
	// https://pay.example/o/token/. Required.
	TokenURL string `yaml:"token_url"`
	// ClientID is the OAuth client id. Required.
	ClientID string `yaml:"client_id"`
	// ClientSecret names the file or environment variable holding the
	// client secret. Required.
	ClientSecret secret.Ref `yaml:"client_secret"`
	// AuthStyle is "basic" (the default) or "body".
	AuthStyle string `yaml:"auth_style"`
	// Scopes are requested when a caller asks for none; empty means no
	// scope parameter (the upstream's default scopes).
	Scopes []string `yaml:"scopes"`
	// DefaultLifetime is assumed when a response has no expires_in;
	// 0 means 1h.
	DefaultLifetime providers.Duration `yaml:"default_lifetime"`
	// Timeout bounds one token request; 0 means 10s.
	Timeout providers.Duration `yaml:"timeout"`
	// MaxResponseBytes bounds a token response; 0 means 1 MiB.
	MaxResponseBytes int64 `yaml:"max_response_bytes"`
	// DefaultTokenType is assumed when a token response has no token_type,
	// for an upstream known to omit it: "Bearer" or another RFC 6749 §11.1
	// type name. Empty (the default): such a response is invalid, as
	// RFC 6749 §5.1 requires token_type.
	DefaultTokenType string `yaml:"default_token_type"`
	// EndpointParams are extra form fields sent with every request, such
	// as audience. grant_type, scope, client_id and client_secret are
	// not allowed.
	EndpointParams map[string]string `yaml:"endpoint_params"`
}

var _ providers.Config = (*Config)(nil)

// Validate reports every problem at once, each prefixed with its YAML key.
// It reads no files and dials nothing.
func (c *Config) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	}

	if c.TokenURL == "" {
		add("token_url", "required")
	} else if err := providers.CheckEndpointURL(c.TokenURL); err != nil {
		add("token_url", "%v", err)
	}
	if c.ClientID == "" {
		add("client_id", "required")
	}
	if c.ClientSecret.IsZero() {
		add("client_secret", "required (file or env)")
	} else if err := c.ClientSecret.Validate(); err != nil {
		add("client_secret", "%v", err)
	}
	switch c.AuthStyle {
	case "", AuthStyleBasic, AuthStyleBody:
	default:
		add("auth_style", "must be %q or %q, got %q", AuthStyleBasic, AuthStyleBody, c.AuthStyle)
	}
	for i, s := range c.Scopes {
		if err := providers.CheckScope(s); err != nil {
			add(fmt.Sprintf("scopes[%d]", i), "%v", err)
		}
	}
	if c.DefaultLifetime.Duration < 0 {
		add("default_lifetime", "must not be negative, got %v", c.DefaultLifetime.Duration)
	}
	if c.Timeout.Duration < 0 {
		add("timeout", "must not be negative, got %v", c.Timeout.Duration)
	}
	if c.MaxResponseBytes < 0 {
		add("max_response_bytes", "must not be negative, got %d", c.MaxResponseBytes)
	}
	if c.DefaultTokenType != "" {
		if err := providers.CheckTokenType(c.DefaultTokenType); err != nil {
			add("default_token_type", "%v", err)
		}
	}
	keys := make([]string, 0, len(c.EndpointParams))
	for k := range c.EndpointParams {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == "":
			add("endpoint_params", "empty parameter name")
		case slices.Contains(reservedParams, k):
			add("endpoint_params", "%q is set by the grant and cannot be overridden", k)
		}
	}
	return errors.Join(errs...)
}

// Open validates the configuration, applies defaults, reads the client
// secret through env.Secrets and returns the provider. It dials nothing.
func (c *Config) Open(env providers.Env) (providers.Provider, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	sec, err := env.Secrets.Load(c.ClientSecret)
	if err != nil {
		return nil, fmt.Errorf("client_secret: %w", err)
	}

	style := tokenhttp.AuthBasicForm
	if c.AuthStyle == AuthStyleBody {
		style = tokenhttp.AuthBody
	}
	lifetime := cmp.Or(c.DefaultLifetime.Duration, DefaultLifetime)
	timeout := cmp.Or(c.Timeout.Duration, DefaultTimeout)
	params := make(map[string]string, len(c.EndpointParams))
	for k, v := range c.EndpointParams {
		params[k] = v
	}
	return &provider{
		tokenURL:        c.TokenURL,
		auth:            tokenhttp.Auth{Style: style, ClientID: c.ClientID, Secret: sec},
		scopes:          slices.Clone(c.Scopes),
		defaultLifetime: lifetime,
		params:          params,
		client: &tokenhttp.Client{
			HTTP:             env.HTTPClient,
			MaxResponseBytes: c.MaxResponseBytes, // 0: DefaultMaxResponseBytes
			DefaultTokenType: c.DefaultTokenType,
			Timeout:          timeout,
			Now:              env.Now, // nil: time.Now
		},
	}, nil
}

type provider struct {
	tokenURL        string
	auth            tokenhttp.Auth
	scopes          []string
	defaultLifetime time.Duration
	params          map[string]string
	client          *tokenhttp.Client
}

var (
	_ providers.Provider  = (*provider)(nil)
	_ providers.Describer = (*provider)(nil)
)

// Token runs the client credentials grant. It is safe for concurrent use.
func (p *provider) Token(ctx context.Context, req providers.Request) (*providers.Token, error) {
	scopes := req.Scopes
	if len(scopes) == 0 {
		scopes = p.scopes
	}
	form := url.Values{"grant_type": {"client_credentials"}}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	for k, v := range p.params {
		form.Set(k, v)
	}

	resp, err := p.client.Post(ctx, p.tokenURL, form, p.auth)
	if err != nil {
		return nil, fmt.Errorf("clientcredentials: %w", err)
	}

	lifetime, err := resp.Lifetime(p.defaultLifetime)
	if err != nil {
		return nil, fmt.Errorf("clientcredentials: %w", err)
	}
	granted := strings.Fields(resp.Scope)
	if len(granted) == 0 {
		granted = slices.Clone(scopes)
	}
	if len(granted) == 0 {
		granted = nil
	} else {
		slices.Sort(granted)
		granted = slices.Compact(granted)
	}
	return &providers.Token{
		AccessToken: resp.AccessToken,
		TokenType:   resp.TokenType,
		Expiry:      resp.Sent.Add(lifetime),
		Scopes:      granted,
	}, nil
}

// Describe reports the token endpoint. The client id is left out: it is not
// a secret, but ListConnections has no need for it.
func (p *provider) Describe() map[string]string {
	return map[string]string{"token_url": p.tokenURL}
}
