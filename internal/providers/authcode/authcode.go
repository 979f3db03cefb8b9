// Package authcode implements the OAuth 2.0 authorization code grant
// (RFC 6749 §4.1) with refresh (§6), for upstreams where a person approves
// access once in a browser and the broker keeps the grant.
//
// Config is the generic provider (type authorization_code); WAXConfig is the
// WAX All Access preset of it (type wax, PROTOCOLS.md §2): fixed production
// and sandbox endpoints, duration=permanent, default scope identity_basic,
// no redirect_uri parameter, and raw HTTP Basic.
//
// The client authenticates to the token endpoint with HTTP Basic, either
// with a client secret or, for clients that cannot keep one, with a "device
// secret" made at random for each grant (device_secret: true). The device
// secret is returned in the grant, which the broker stores, and is sent again
// on every refresh of that grant. Basic credentials are sent raw (RFC 7617,
// as WAX clients do) or form-encoded (RFC 6749 §2.3.1). A generic connection
// may instead be a public client with no secret at all
// (client_authentication: none, RFC 8252 §8.5): it sends client_id in the
// form body and must use PKCE S256, which then is what binds the code to
// the broker. WAX documents no such client, so wax refuses it.
//
// A refresh never sends a scope parameter, so a grant never narrows: the
// token covers every granted scope. A request for scopes outside the granted
// ones fails with providers.ErrNeedsAuthorization (the broker answers
// FAILED_PRECONDITION): only a new authorization can widen a grant.
package authcode

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Defaults applied by Open to zero Config fields.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultMaxResponseBytes = tokenhttp.DefaultMaxResponseBytes
	// DefaultLifetime is assumed when a token response has no expires_in.
	DefaultLifetime = time.Hour
)

// Values of Config.BasicEncoding.
const (
	// BasicRaw sends "client_id:secret" as is (RFC 7617); WAX expects it.
	BasicRaw = "raw"
	// BasicForm form-encodes the id and the secret first (RFC 6749 §2.3.1).
	BasicForm = "form"
)

// Values of Config.ClientAuthentication.
const (
	// ClientAuthSecret: HTTP Basic with client_secret (the default).
	ClientAuthSecret = "client_secret"
	// ClientAuthDevice: HTTP Basic with a random secret per grant; the same
	// as device_secret: true.
	ClientAuthDevice = "device_secret"
	// ClientAuthNone: a public client; client_id in the body, PKCE required.
	ClientAuthNone = "none"
)

// DeviceSecretBytes is the number of random bytes in a device secret.
const DeviceSecretBytes = 32

// Config is one generic authorization_code connection, decoded from the
// connection's settings in the broker's YAML file.
type Config struct {
	// AuthorizeURL is the absolute http(s) URL a person opens to approve
	// access. Required.
	AuthorizeURL string `yaml:"authorize_url"`
	// TokenURL is the absolute http(s) URL of the token endpoint. Required.
	TokenURL string `yaml:"token_url"`
	// RevocationURL is the absolute http(s) URL of the upstream's RFC 7009
	// revocation endpoint, used when an account is deleted with
	// revoke_upstream. Optional: without it the provider's Revoke fails
	// with providers.ErrNotSupported. The client authenticates as it does
	// to the token endpoint.
	RevocationURL string `yaml:"revocation_url"`
	// ClientID is the OAuth client id. Required.
	ClientID string `yaml:"client_id"`
	// ClientSecret names the file or environment variable holding the
	// client secret. Exactly one of client_secret and device_secret.
	ClientSecret secret.Ref `yaml:"client_secret"`
	// DeviceSecret makes the client public: each grant gets its own random
	// device secret, used as the Basic password for the code exchange and
	// every refresh of that grant.
	DeviceSecret bool `yaml:"device_secret"`
	// ClientAuthentication is "client_secret" (the default without
	// device_secret), "device_secret" (the default with device_secret:
	// true; setting it is the same as device_secret: true) or "none": a
	// public client with no secret, which sends client_id in the body and
	// requires pkce: true (the configuration is refused without it, rather
	// than PKCE being turned on behind the operator's back). Not "none" for
	// wax.
	ClientAuthentication string `yaml:"client_authentication"`
	// BasicEncoding is "form" (RFC 6749 §2.3.1, the default) or "raw".
	BasicEncoding string `yaml:"basic_encoding"`
	// Scopes are asked for in the authorization URL (space-separated).
	Scopes []string `yaml:"scopes"`
	// RedirectURL is the redirect URI registered with the upstream, normally
	// the broker's own https://<admin host>/oauth2/callback. When set it is
	// sent as redirect_uri in the authorization URL and the code exchange.
	RedirectURL string `yaml:"redirect_url"`
	// PKCE turns on RFC 7636 with the S256 method: every authorization
	// carries a code_challenge and its exchange the matching code_verifier,
	// made fresh by the broker for each StartAuthorization and kept with the
	// state. Use it whenever the upstream supports it.
	PKCE bool `yaml:"pkce"`
	// ExtraAuthorizeParams are added to the authorization URL, such as
	// access_type or prompt. client_id, response_type, state, scope and
	// redirect_uri are not allowed.
	ExtraAuthorizeParams map[string]string `yaml:"extra_authorize_params"`
	// DefaultLifetime is assumed when a token response has no expires_in;
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
}

var _ providers.Config = (*Config)(nil)

// flavor is what differs between the generic provider and its presets.
type flavor struct {
	name            string // for error messages: "authcode", "wax"
	defaultEncoding string
	// sendRedirectURI: redirect_url goes out as redirect_uri; otherwise it
	// is fixed at registration and only informational.
	sendRedirectURI bool
	// authorizeParams are fixed parameters of the authorization URL.
	authorizeParams map[string]string
	// reserved may not be set through extra_authorize_params.
	reserved []string
	// details are added to Describe.
	details map[string]string
	// noPKCE: the upstream does not support PKCE.
	noPKCE bool
	// noPublic: the upstream documents no client without a secret (no
	// client_authentication: none).
	noPublic bool
	// revokeForm builds the revocation request's form for a refresh token.
	revokeForm func(refreshToken string) url.Values
}

// rfc7009Form is RFC 7009 §2.1's request: the token and its type hint.
func rfc7009Form(rt string) url.Values {
	return url.Values{"token": {rt}, "token_type_hint": {"refresh_token"}}
}

var genericFlavor = flavor{
	name:            "authcode",
	defaultEncoding: BasicForm,
	sendRedirectURI: true,
	reserved:        []string{"client_id", "response_type", "state", "scope", "redirect_uri", "code_challenge", "code_challenge_method"},
	revokeForm:      rfc7009Form,
}

// Validate reports every problem at once, each prefixed with its YAML key.
// It reads no files and dials nothing.
func (c *Config) Validate() error { return errors.Join(c.problems(genericFlavor)...) }

func (c *Config) problems(f flavor) []error {
	var errs []error
	add := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	}
	if c.PKCE && f.noPKCE {
		add("pkce", "%s does not support PKCE", f.name)
	}
	for _, u := range []struct{ key, val string }{{"authorize_url", c.AuthorizeURL}, {"token_url", c.TokenURL}} {
		if u.val == "" {
			add(u.key, "required")
		} else if err := providers.CheckEndpointURL(u.val); err != nil {
			add(u.key, "%v", err)
		}
	}
	if c.RevocationURL != "" {
		if err := providers.CheckEndpointURL(c.RevocationURL); err != nil {
			add("revocation_url", "%v", err)
		}
	}
	encoding := c.BasicEncoding
	switch encoding {
	case "":
		encoding = f.defaultEncoding
	case BasicRaw, BasicForm:
	default:
		add("basic_encoding", "must be %q or %q, got %q", BasicRaw, BasicForm, c.BasicEncoding)
	}
	switch {
	case c.ClientID == "":
		add("client_id", "required")
	case encoding == BasicRaw && strings.Contains(c.ClientID, ":"):
		add("client_id", "must not contain ':' with basic_encoding %q", BasicRaw)
	}
	switch c.ClientAuthentication {
	case "", ClientAuthSecret, ClientAuthDevice, ClientAuthNone:
		if c.DeviceSecret && c.ClientAuthentication != "" && c.ClientAuthentication != ClientAuthDevice {
			add("device_secret", "must not be true with client_authentication: %s", c.ClientAuthentication)
		}
	default:
		add("client_authentication", "must be %q, %q or %q, got %q", ClientAuthSecret, ClientAuthDevice, ClientAuthNone, c.ClientAuthentication)
	}
	switch mode := c.clientAuth(); {
	case mode == ClientAuthNone && !c.ClientSecret.IsZero():
		add("client_secret", "must not be set with client_authentication: none (a public client has no secret)")
	case mode == ClientAuthDevice && !c.ClientSecret.IsZero():
		add("client_secret", "must not be set with device_secret: true (a public client has no client secret)")
	case mode == ClientAuthSecret && c.ClientSecret.IsZero():
		add("client_secret", "required (file or env), unless device_secret: true or client_authentication: none")
	case mode == ClientAuthSecret:
		if err := c.ClientSecret.Validate(); err != nil {
			add("client_secret", "%v", err)
		}
	}
	if c.ClientAuthentication == ClientAuthNone {
		switch {
		case f.noPublic:
			add("client_authentication", "%s documents no client without a secret: use device_secret: true (a random secret per grant)", f.name)
		case !c.PKCE:
			add("pkce", "must be true with client_authentication: none (PKCE S256 is what binds a public client's code to it)")
		}
		if c.BasicEncoding != "" {
			add("basic_encoding", "has no effect with client_authentication: none (no HTTP Basic is sent)")
		}
	}
	for i, s := range c.Scopes {
		if err := providers.CheckScope(s); err != nil {
			add(fmt.Sprintf("scopes[%d]", i), "%v", err)
		}
	}
	if c.RedirectURL != "" {
		if err := providers.CheckEndpointURL(c.RedirectURL); err != nil {
			add("redirect_url", "%v", err)
		}
	}
	keys := make([]string, 0, len(c.ExtraAuthorizeParams))
	for k := range c.ExtraAuthorizeParams {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == "":
			add("extra_authorize_params", "empty parameter name")
		case slices.Contains(f.reserved, k):
			add("extra_authorize_params", "%q is set by the provider and cannot be overridden", k)
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
	return errs
}

// clientAuth returns the client authentication mode c selects, assuming it
// is valid.
func (c *Config) clientAuth() string {
	switch {
	case c.ClientAuthentication != "":
		return c.ClientAuthentication
	case c.DeviceSecret:
		return ClientAuthDevice
	}
	return ClientAuthSecret
}

// Open validates the configuration, applies defaults, reads the client
// secret through env.Secrets and returns the provider. It dials nothing.
func (c *Config) Open(env providers.Env) (providers.Provider, error) {
	return c.open(env, genericFlavor)
}

func (c *Config) open(env providers.Env, f flavor) (*provider, error) {
	if err := errors.Join(c.problems(f)...); err != nil {
		return nil, err
	}
	mode := c.clientAuth()
	var sec secret.Value
	if mode == ClientAuthSecret {
		var err error
		if sec, err = env.Secrets.Load(c.ClientSecret); err != nil {
			return nil, fmt.Errorf("client_secret: %w", err)
		}
	}
	style := tokenhttp.AuthBasicForm
	encoding := c.BasicEncoding
	if encoding == "" {
		encoding = f.defaultEncoding
	}
	if encoding == BasicRaw {
		style = tokenhttp.AuthBasicRaw
	}
	if mode == ClientAuthNone {
		style = tokenhttp.AuthNone
	}
	authURL, _ := url.Parse(c.AuthorizeURL) // checked by problems
	params := authURL.Query()
	for k, v := range c.ExtraAuthorizeParams {
		params.Set(k, v)
	}
	for k, v := range f.authorizeParams {
		params.Set(k, v)
	}
	params.Set("client_id", c.ClientID)
	params.Set("response_type", "code")
	if len(c.Scopes) > 0 {
		params.Set("scope", strings.Join(c.Scopes, " "))
	}
	if f.sendRedirectURI && c.RedirectURL != "" {
		params.Set("redirect_uri", c.RedirectURL)
	}
	authURL.RawQuery = ""

	lifetime := cmp.Or(c.DefaultLifetime.Duration, DefaultLifetime)
	timeout := cmp.Or(c.Timeout.Duration, DefaultTimeout)
	rnd := env.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	details := map[string]string{"authorize_url": authURL.String(), "token_url": c.TokenURL, "client_authentication": mode}
	if c.RedirectURL != "" {
		details["redirect_url"] = c.RedirectURL
	}
	if c.RevocationURL != "" {
		details["revocation_url"] = c.RevocationURL
	}
	if c.PKCE {
		details["pkce"] = "S256"
	}
	for k, v := range f.details {
		details[k] = v
	}
	redirectURI := ""
	if f.sendRedirectURI {
		redirectURI = c.RedirectURL
	}
	return &provider{
		name:            f.name,
		authURL:         authURL,
		authParams:      params,
		tokenURL:        c.TokenURL,
		revocationURL:   c.RevocationURL,
		revokeForm:      f.revokeForm,
		clientID:        c.ClientID,
		clientSecret:    sec,
		deviceMode:      mode == ClientAuthDevice,
		public:          mode == ClientAuthNone,
		style:           style,
		scopes:          normalize(c.Scopes),
		redirectURI:     redirectURI,
		pkce:            c.PKCE,
		defaultLifetime: lifetime,
		rand:            rnd,
		details:         details,
		client: &tokenhttp.Client{
			HTTP:             env.HTTPClient,
			MaxResponseBytes: c.MaxResponseBytes, // 0: DefaultMaxResponseBytes
			DefaultTokenType: c.DefaultTokenType,
			Timeout:          timeout,
			Now:              env.Now, // nil: time.Now
		},
	}, nil
}

// provider is safe for concurrent use: nothing in it changes after Open.
type provider struct {
	name       string
	authURL    *url.URL   // without query
	authParams url.Values // every parameter but state
	tokenURL   string
	// revocationURL is "" when the connection has none.
	revocationURL string
	revokeForm    func(refreshToken string) url.Values
	clientID      string
	clientSecret  secret.Value // zero in device-secret mode
	deviceMode    bool
	// public: no secret; client_id goes in the form (style AuthNone).
	public bool
	pkce   bool
	style  tokenhttp.AuthStyle
	// scopes are the configured ones, sorted and unique; nil for none.
	scopes          []string
	redirectURI     string // sent with the exchange; "" for none
	defaultLifetime time.Duration
	rand            io.Reader
	details         map[string]string
	client          *tokenhttp.Client
}

var (
	_ providers.Provider   = (*provider)(nil)
	_ providers.Refresher  = (*provider)(nil)
	_ providers.Authorizer = (*provider)(nil)
	_ providers.Describer  = (*provider)(nil)
	_ providers.Revoker    = (*provider)(nil)
)

// Token always fails with providers.ErrNeedsAuthorization: a token comes
// only from an exchanged code or a refresh.
func (p *provider) Token(context.Context, providers.Request) (*providers.Token, error) {
	return nil, fmt.Errorf("%s: %w: open the URL from StartAuthorization", p.name, providers.ErrNeedsAuthorization)
}

// AuthCodeURL returns the authorization URL carrying state and, with PKCE,
// the S256 challenge of verifier.
func (p *provider) AuthCodeURL(state, verifier string) string {
	q := make(url.Values, len(p.authParams)+3)
	for k, v := range p.authParams {
		q[k] = v
	}
	q.Set("state", state)
	if p.pkce {
		q.Set("code_challenge", oauth2.S256ChallengeFromVerifier(verifier))
		q.Set("code_challenge_method", "S256")
	}
	u := *p.authURL
	u.RawQuery = q.Encode()
	return u.String()
}

// Exchange redeems code (RFC 6749 §4.1.3), with the PKCE code_verifier
// when PKCE is on. In device-secret mode it makes the grant's device secret
// first and authenticates with it.
func (p *provider) Exchange(ctx context.Context, code, verifier string) (*providers.Token, error) {
	if code == "" {
		return nil, fmt.Errorf("%s: exchange: empty code", p.name)
	}
	if p.pkce && verifier == "" {
		return nil, fmt.Errorf("%s: exchange: no PKCE code verifier kept for this authorization", p.name)
	}
	sec := p.clientSecret
	if p.deviceMode {
		b := make([]byte, DeviceSecretBytes)
		if _, err := io.ReadFull(p.rand, b); err != nil {
			return nil, fmt.Errorf("%s: exchange: make device secret: %w", p.name, err)
		}
		sec = secret.New(base64.RawURLEncoding.EncodeToString(b))
	}
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}}
	if p.redirectURI != "" {
		form.Set("redirect_uri", p.redirectURI)
	}
	if p.pkce {
		form.Set("code_verifier", verifier)
	}
	resp, err := p.client.Post(ctx, p.tokenURL, form, p.auth(form, sec))
	if err != nil {
		return nil, fmt.Errorf("%s: exchange: %w", p.name, err)
	}
	t, err := p.token(resp, p.scopes)
	if err != nil {
		return nil, fmt.Errorf("%s: exchange: %w", p.name, err)
	}
	rexp, err := refreshExpiry(resp)
	if err != nil {
		return nil, fmt.Errorf("%s: exchange: %w", p.name, err)
	}
	t.Grant = &providers.Grant{
		State:         providers.GrantReady,
		RefreshToken:  resp.RefreshToken,
		RefreshExpiry: rexp,
		Scopes:        t.Scopes,
	}
	if p.deviceMode {
		t.Grant.DeviceSecret = sec
	}
	return t, nil
}

// Refresh redeems g's refresh token (RFC 6749 §6), with g's device secret in
// device-secret mode. req.Scopes must be granted scopes; the token covers the
// whole grant. The returned Grant holds a rotated refresh token, if one came.
func (p *provider) Refresh(ctx context.Context, req providers.Request, g *providers.Grant) (*providers.Token, error) {
	if g == nil || g.RefreshToken.IsZero() {
		return nil, fmt.Errorf("%s: refresh: %w: the grant has no refresh token", p.name, providers.ErrNeedsAuthorization)
	}
	if missing := notGranted(req.Scopes, g.Scopes); len(missing) > 0 {
		return nil, fmt.Errorf("%s: %w: scopes %q were not granted (granted: %q); add them to the connection's scopes and authorize again",
			p.name, providers.ErrNeedsAuthorization, missing, g.Scopes)
	}
	sec := p.clientSecret
	if p.deviceMode {
		if g.DeviceSecret.IsZero() {
			return nil, fmt.Errorf("%s: refresh: %w: the grant has no device secret", p.name, providers.ErrNeedsAuthorization)
		}
		sec = g.DeviceSecret
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {g.RefreshToken.Reveal()}}
	resp, err := p.client.Post(ctx, p.tokenURL, form, p.auth(form, sec))
	if err != nil {
		return nil, fmt.Errorf("%s: refresh: %w", p.name, err)
	}
	t, err := p.token(resp, g.Scopes)
	if err != nil {
		return nil, fmt.Errorf("%s: refresh: %w", p.name, err)
	}
	rexp, err := refreshExpiry(resp)
	if err != nil {
		return nil, fmt.Errorf("%s: refresh: %w", p.name, err)
	}
	// An empty RefreshToken or nil Scopes keep the stored ones; a
	// RefreshExpiry (the upstream restarting an idle lifetime) replaces it.
	t.Grant = &providers.Grant{State: providers.GrantReady, RefreshToken: resp.RefreshToken, RefreshExpiry: rexp}
	if resp.Scope != "" {
		t.Grant.Scopes = t.Scopes
	}
	return t, nil
}

// Revoke asks the revocation endpoint to revoke g's refresh token
// (RFC 7009), authenticated like a refresh: with g's device secret in
// device-secret mode.
func (p *provider) Revoke(ctx context.Context, g *providers.Grant) error {
	if p.revocationURL == "" {
		return fmt.Errorf("%s: revoke: %w: the connection has no revocation_url", p.name, providers.ErrNotSupported)
	}
	if g == nil || g.RefreshToken.IsZero() {
		return nil
	}
	sec := p.clientSecret
	if p.deviceMode {
		if g.DeviceSecret.IsZero() {
			return fmt.Errorf("%s: revoke: the grant has no device secret to authenticate with", p.name)
		}
		sec = g.DeviceSecret
	}
	form := p.revokeForm(g.RefreshToken.Reveal())
	if err := p.client.Revoke(ctx, p.revocationURL, form, p.auth(form, sec)); err != nil {
		return fmt.Errorf("%s: revoke: %w", p.name, err)
	}
	return nil
}

// auth returns how a request with form authenticates with sec; a public
// client's client_id is added to form instead (RFC 6749 §3.2.1).
func (p *provider) auth(form url.Values, sec secret.Value) tokenhttp.Auth {
	if p.public {
		form.Set("client_id", p.clientID)
		return tokenhttp.Auth{Style: tokenhttp.AuthNone}
	}
	return tokenhttp.Auth{Style: p.style, ClientID: p.clientID, Secret: sec}
}

// token turns a token response into a Token; fallback are the scopes assumed
// when the response names none.
func (p *provider) token(resp *tokenhttp.Response, fallback []string) (*providers.Token, error) {
	lifetime, err := resp.Lifetime(p.defaultLifetime)
	if err != nil {
		return nil, err
	}
	scopes := normalize(strings.Fields(resp.Scope))
	if scopes == nil {
		scopes = slices.Clone(fallback)
	}
	return &providers.Token{
		AccessToken: resp.AccessToken,
		TokenType:   resp.TokenType,
		Expiry:      resp.Sent.Add(lifetime),
		Scopes:      scopes,
	}, nil
}

// refreshExpiry is when the refresh token dies by refresh_token_expires_in;
// zero when the response does not say.
func refreshExpiry(resp *tokenhttp.Response) (time.Time, error) {
	d, ok, err := resp.RefreshLifetime()
	if err != nil || !ok {
		return time.Time{}, err
	}
	return resp.Sent.Add(d), nil
}

// Describe reports the endpoints and the client authentication mode.
func (p *provider) Describe() map[string]string {
	out := make(map[string]string, len(p.details))
	for k, v := range p.details {
		out[k] = v
	}
	return out
}

// normalize sorts and de-duplicates scopes; nil for none.
func normalize(scopes []string) []string {
	if len(scopes) == 0 {
		return nil
	}
	out := slices.Clone(scopes)
	slices.Sort(out)
	return slices.Compact(out)
}

// notGranted returns the requested scopes not in granted. Nothing is missing
// when the upstream never said what it granted.
func notGranted(requested, granted []string) []string {
	if granted == nil {
		return nil
	}
	var missing []string
	for _, s := range requested {
		if !slices.Contains(granted, s) {
			missing = append(missing, s)
		}
	}
	return missing
}
