// Package wx implements the WX Network (formerly Waves.Exchange) gateway
// token endpoint, `POST {base}/v1/oauth2/token` (PROTOCOLS.md §1).
//
// The first token comes from a resource owner password credentials grant
// (RFC 6749 §4.3) whose password is a Waves signature: the account signs
// "<chain>:<client id>:<expiry>" and sends "<expiry>:<base58 signature>"
// with its base58 public key as the username. Later tokens come from the
// refresh token grant (RFC 6749 §6). When the refresh token is rejected
// (invalid_grant) or past its JWT exp, the broker runs the signed password
// grant again; the provider itself never falls back.
//
// A connection may also hold no key at all (credentials: imported), for
// users who get their tokens from the WX Network app instead of handing
// over a seed ("Get Access Token in WX Network App" in specs/): its grants
// are imported, and it only refreshes them. Its Token always fails with
// providers.ErrNeedsAuthorization, and it is not AccountBound: with no key
// there is no address to bind grants to.
//
// The response is decoded here rather than by golang.org/x/oauth2, because
// its expires_in may be an absolute Unix time: a value above 10^9 is read as
// one, anything else as seconds left. The expiry is cross-checked with the
// access token's JWT exp claim (not verified: the gateway signs with RS256
// and we do not hold its key), and the earlier of the two is kept.
package wx

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mr-tron/base58"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

// Defaults applied by Open to zero Config fields.
const (
	DefaultChainID          = "W"
	DefaultTokenLifetime    = MaxTokenLifetime - LifetimeMargin
	DefaultTimeout          = 10 * time.Second
	DefaultMaxResponseBytes = tokenhttp.DefaultMaxResponseBytes
)

// Limits on Config.TokenLifetime. The gateway refuses an expiry more than a
// week ahead; below a minute the broker would spend its time signing.
const (
	MaxTokenLifetime = 7 * 24 * time.Hour
	MinTokenLifetime = time.Minute
)

// LifetimeMargin is how far the default lifetime stays below the gateway's
// week. The gateway compares the signed expiry with its own clock: signed
// for exactly a week ahead, every password grant is refused
// ("token expiration time is more than 604800 seconds ahead") as soon as the
// gateway's clock is behind the broker's by a second. Five minutes covers
// ordinary clock drift and costs 0.05% of the lifetime.
const LifetimeMargin = 5 * time.Minute

// CredentialsImported is the value of Config.Credentials for a connection
// without a key.
const CredentialsImported = "imported"

// Scope is the only scope the gateway knows.
const Scope = "general"

// absoluteThreshold: an expires_in above it is an absolute Unix time
// (2001-09-09), below it a number of seconds left.
const absoluteThreshold = 1_000_000_000

// clockTolerance is how far past the signed expiry a relative expires_in may
// point before it is an error rather than the gateway's clock being ahead of
// ours; within it the expiry is cut to the signed one.
const clockTolerance = time.Minute

// Config is one wx connection, decoded from the connection's block of the
// broker's YAML file.
type Config struct {
	// TokenURL is the full URL of the token endpoint, such as
	// https://api.wx.network/v1/oauth2/token. Required.
	TokenURL string `yaml:"token_url"`
	// ClientID is sent as client_id and signed. Required, with no default:
	// the documents say waves.exchange, current clients send wx.network.
	ClientID string `yaml:"client_id"`
	// ChainID is the network byte: "W" (mainnet, the default), "T"
	// (testnet) or any other single byte.
	ChainID string `yaml:"chain_id"`
	// Seed names the file or environment variable holding the account's
	// seed phrase, used exactly as stored (less one trailing newline).
	// Exactly one of Seed, PrivateKey and Credentials is required.
	Seed secret.Ref `yaml:"seed"`
	// Nonce is the account number derived from Seed (default 0).
	Nonce int64 `yaml:"nonce"`
	// PrivateKey names the file or environment variable holding the
	// account's base58 private key.
	PrivateKey secret.Ref `yaml:"private_key"`
	// Credentials "imported" makes a connection without a key: its grants
	// (a refresh token from the WX Network app) are imported, and it only
	// refreshes them; chain_id, nonce and token_lifetime do not apply.
	Credentials string `yaml:"credentials"`
	// TokenLifetime is how far ahead the signed expiry lies; 0 means 168h
	// less LifetimeMargin (167h55m), so that a gateway clock a little behind
	// ours still accepts it. At least 1m, at most 168h (the gateway's
	// maximum, accepted when set explicitly).
	TokenLifetime providers.Duration `yaml:"token_lifetime"`
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
		add("client_id", "required (waves.exchange in the documents, wx.network in current clients)")
	} else if strings.Contains(c.ClientID, ":") {
		add("client_id", "must not contain ':' (it separates the signed fields)")
	}
	if c.ChainID != "" && len(c.ChainID) != 1 {
		add("chain_id", "must be a single byte such as \"W\" (mainnet) or \"T\" (testnet), got %d bytes", len(c.ChainID))
	}
	imported := c.Credentials == CredentialsImported
	if c.Credentials != "" && !imported {
		add("credentials", "must be %q (a connection without a key, serving imported grants) or absent, got %q", CredentialsImported, c.Credentials)
	}
	switch seed, pk := !c.Seed.IsZero(), !c.PrivateKey.IsZero(); {
	case imported && (seed || pk):
		add("credentials", "imported is for a connection without a key: remove seed and private_key")
	case imported:
		if c.Nonce != 0 {
			add("nonce", "applies only to seed")
		}
		if c.ChainID != "" {
			add("chain_id", "does not apply with credentials: imported (nothing is signed)")
		}
		if c.TokenLifetime.Duration != 0 {
			add("token_lifetime", "does not apply with credentials: imported (nothing is signed)")
		}
	case !seed && !pk:
		add("seed", "one of seed or private_key is required (or credentials: imported for a connection without a key)")
	case seed && pk:
		add("private_key", "seed and private_key are mutually exclusive")
	case seed:
		if err := c.Seed.Validate(); err != nil {
			add("seed", "%v", err)
		}
	default:
		if err := c.PrivateKey.Validate(); err != nil {
			add("private_key", "%v", err)
		}
		if c.Nonce != 0 {
			add("nonce", "applies only to seed")
		}
	}
	if c.Nonce < 0 || c.Nonce > math.MaxUint32 {
		add("nonce", "must be between 0 and %d, got %d", uint32(math.MaxUint32), c.Nonce)
	}
	if d := c.TokenLifetime.Duration; d != 0 && (d < MinTokenLifetime || d > MaxTokenLifetime) {
		add("token_lifetime", "must be between %v and %v (the gateway refuses more than a week), got %v",
			MinTokenLifetime, MaxTokenLifetime, d)
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
	return errors.Join(errs...)
}

// Open validates the configuration, applies defaults, reads the key through
// env.Secrets and returns the provider. It dials nothing. Errors name the
// setting and the problem, never the key.
func (c *Config) Open(env providers.Env) (providers.Provider, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	timeout := cmp.Or(c.Timeout.Duration, DefaultTimeout)
	now := env.Now
	if now == nil {
		now = time.Now
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := refresher{
		tokenURL: c.TokenURL,
		clientID: c.ClientID,
		now:      now,
		log:      log,
		client: &tokenhttp.Client{
			HTTP:             env.HTTPClient,
			MaxResponseBytes: c.MaxResponseBytes, // 0: DefaultMaxResponseBytes
			DefaultTokenType: c.DefaultTokenType,
			Timeout:          timeout,
			Now:              now,
		},
	}
	if c.Credentials == CredentialsImported {
		return &importedProvider{r}, nil
	}
	sk, err := c.loadKey(env.Secrets)
	if err != nil {
		return nil, err
	}

	chain := DefaultChainID[0]
	if c.ChainID != "" {
		chain = c.ChainID[0]
	}
	lifetime := cmp.Or(c.TokenLifetime.Duration, DefaultTokenLifetime)
	random := env.Rand
	if random == nil {
		random = rand.Reader
	}
	pub := sk.Public()
	r.address = wavescrypto.NewAddress(pub, chain).String()
	return &provider{
		refresher: r,
		chain:     chain,
		key:       sk,
		pub:       pub,
		lifetime:  lifetime,
		random:    random,
	}, nil
}

// loadKey reads the seed phrase or the private key.
func (c *Config) loadKey(l secret.Loader) (wavescrypto.PrivateKey, error) {
	if !c.Seed.IsZero() {
		seed, err := l.Load(c.Seed)
		if err != nil {
			return wavescrypto.PrivateKey{}, fmt.Errorf("seed: %w", err)
		}
		return wavescrypto.PrivateKeyFromSeed(seed.Reveal(), uint32(c.Nonce)), nil
	}
	v, err := l.Load(c.PrivateKey)
	if err != nil {
		return wavescrypto.PrivateKey{}, fmt.Errorf("private_key: %w", err)
	}
	// Base58 has no white space, so surrounding white space is an editor's.
	sk, err := wavescrypto.ParsePrivateKey(strings.TrimSpace(v.Reveal()))
	if err != nil {
		return wavescrypto.PrivateKey{}, fmt.Errorf("private_key: %s: %w", c.PrivateKey.Source(), err)
	}
	return sk, nil
}

// refresher is what every wx connection has: the refresh token grant and
// the response decoding.
type refresher struct {
	tokenURL string
	clientID string
	// address of the key, for logs; "" without one.
	address string
	now     func() time.Time
	log     *slog.Logger
	client  *tokenhttp.Client
}

// provider is a connection with a key.
type provider struct {
	refresher
	chain    byte
	key      wavescrypto.PrivateKey
	pub      wavescrypto.PublicKey
	lifetime time.Duration

	// randMu guards random: an injected reader need not be safe for
	// concurrent use.
	randMu sync.Mutex
	random io.Reader
}

// importedProvider is a connection without a key (credentials: imported).
type importedProvider struct {
	refresher
}

var (
	_ providers.Provider      = (*provider)(nil)
	_ providers.Refresher     = (*provider)(nil)
	_ providers.Describer     = (*provider)(nil)
	_ providers.AccountBound  = (*provider)(nil)
	_ providers.Provider      = (*importedProvider)(nil)
	_ providers.Refresher     = (*importedProvider)(nil)
	_ providers.Describer     = (*importedProvider)(nil)
	_ providers.DefaultScoper = (*importedProvider)(nil)
)

// Token fails with providers.ErrNeedsAuthorization: without a key the
// connection cannot get a first token, only refresh an imported grant.
func (p *importedProvider) Token(context.Context, providers.Request) (*providers.Token, error) {
	return nil, fmt.Errorf("wx: %w: the connection has no key (credentials: imported); import a grant "+
		"(a refresh token from the WX Network app) for this account", providers.ErrNeedsAuthorization)
}

// ImportsGrants implements providers.GrantImporter: a refused refresh
// means the user imports a new grant.
func (p *importedProvider) ImportsGrants() bool { return true }

// Describe says the connection has no key.
func (p *importedProvider) Describe() map[string]string {
	return map[string]string{"credentials": CredentialsImported}
}

// Subject is the account's address: a stored grant or token for another
// address (the key changed) is not used (providers.AccountBound).
func (p *provider) Subject() string { return p.address }

// Token runs the signed password grant. It is safe for concurrent use.
func (p *provider) Token(ctx context.Context, req providers.Request) (*providers.Token, error) {
	if err := checkScopes(req.Scopes); err != nil {
		return nil, err
	}
	expiry := p.now().Add(p.lifetime).Unix()
	sig, err := p.sign(wavescrypto.TokenMessage(p.chain, p.clientID, expiry))
	if err != nil {
		return nil, fmt.Errorf("wx: sign: %w", err)
	}
	form := url.Values{
		"grant_type": {"password"},
		"scope":      {Scope},
		"username":   {p.pub.String()},
		"password":   {strconv.FormatInt(expiry, 10) + ":" + base58.Encode(sig)},
		"client_id":  {p.clientID},
	}
	clear(sig)
	p.log.DebugContext(ctx, "wx: signed password grant", "address", p.address,
		"signed_expiry", time.Unix(expiry, 0).UTC())
	resp, err := p.client.Post(ctx, p.tokenURL, form, tokenhttp.Auth{Style: tokenhttp.AuthNone})
	if err != nil {
		return nil, fmt.Errorf("wx: password grant: %w", err)
	}
	t, err := p.decode(resp, time.Unix(expiry, 0))
	if err != nil {
		return nil, fmt.Errorf("wx: password grant: %w", err)
	}
	return t, nil
}

// Refresh redeems g's refresh token. It is safe for concurrent use; an
// invalid_grant comes back as a *providers.OAuthError for the broker to act on.
func (p *refresher) Refresh(ctx context.Context, req providers.Request, g *providers.Grant) (*providers.Token, error) {
	if err := checkScopes(req.Scopes); err != nil {
		return nil, err
	}
	if g == nil || g.RefreshToken.IsZero() {
		return nil, errors.New("wx: refresh: no refresh token")
	}
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"scope":         {Scope},
		"client_id":     {p.clientID},
		"refresh_token": {g.RefreshToken.Reveal()},
	}
	if p.address != "" {
		p.log.DebugContext(ctx, "wx: refresh token grant", "address", p.address)
	} else {
		p.log.DebugContext(ctx, "wx: refresh token grant", "credentials", CredentialsImported)
	}
	resp, err := p.client.Post(ctx, p.tokenURL, form, tokenhttp.Auth{Style: tokenhttp.AuthNone})
	if err != nil {
		return nil, fmt.Errorf("wx: refresh: %w", err)
	}
	t, err := p.decode(resp, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("wx: refresh: %w", err)
	}
	return t, nil
}

// Describe reports the account address and chain; both are public.
func (p *provider) Describe() map[string]string {
	return map[string]string{"address": p.address, "chain_id": string(p.chain)}
}

func (p *provider) sign(msg []byte) ([]byte, error) {
	p.randMu.Lock()
	defer p.randMu.Unlock()
	return wavescrypto.Sign(p.key, msg, p.random)
}

// DefaultScopes implements providers.DefaultScoper: the gateway grants
// "general" whatever is asked for.
func (p *refresher) DefaultScopes() []string { return []string{Scope} }

// checkScopes accepts no scopes (the default) or exactly "general".
func checkScopes(scopes []string) error {
	if len(scopes) == 0 || (len(scopes) == 1 && scopes[0] == Scope) {
		return nil
	}
	return fmt.Errorf("wx: %w: the gateway grants only the scope %q", providers.ErrNotSupported, Scope)
}

// decode turns a token response into a Token. signed is the expiry the
// password grant signed; zero for a refresh, which is then bounded by the
// gateway's maximum lifetime instead. Messages quote no token.
func (p *refresher) decode(resp *tokenhttp.Response, signed time.Time) (*providers.Token, error) {
	var expiry time.Time
	if resp.ExpiresIn != nil {
		if n := *resp.ExpiresIn; n > absoluteThreshold {
			expiry = time.Unix(n, 0)
		} else {
			expiry = resp.Sent.Add(time.Duration(n) * time.Second)
		}
	}
	exp, ok, err := jwtExp(resp.AccessToken.Reveal())
	if err != nil {
		return nil, fmt.Errorf("%w: access token: %w", providers.ErrInvalidResponse, err)
	}
	if ok && (expiry.IsZero() || exp.Before(expiry)) {
		expiry = exp
	}
	if expiry.IsZero() {
		return nil, fmt.Errorf("%w: no expires_in, and the access token has no JWT exp", providers.ErrInvalidResponse)
	}

	now := p.now()
	switch {
	case !expiry.After(now):
		return nil, fmt.Errorf("%w: token expiry %s is not in the future", providers.ErrInvalidResponse, stamp(expiry))
	case !signed.IsZero() && expiry.After(signed.Add(clockTolerance)):
		return nil, fmt.Errorf("%w: token expiry %s is later than the signed expiry %s",
			providers.ErrInvalidResponse, stamp(expiry), stamp(signed))
	case !signed.IsZero() && expiry.After(signed):
		expiry = signed
		// The answer may come after the signed expiry (a lifetime shorter
		// than the request took): then the token is dead on arrival.
		if !expiry.After(now) {
			return nil, fmt.Errorf("%w: signed expiry %s passed before the answer came", providers.ErrInvalidResponse, stamp(signed))
		}
	case signed.IsZero() && expiry.After(now.Add(MaxTokenLifetime+clockTolerance)):
		return nil, fmt.Errorf("%w: token expiry %s is more than %v ahead, the gateway's maximum",
			providers.ErrInvalidResponse, stamp(expiry), MaxTokenLifetime)
	}

	scopes := strings.Fields(resp.Scope)
	if len(scopes) == 0 {
		scopes = []string{Scope}
	}
	slices.Sort(scopes)
	scopes = slices.Compact(scopes)

	g := &providers.Grant{State: providers.GrantReady, Scopes: slices.Clone(scopes)}
	if !resp.RefreshToken.IsZero() {
		g.RefreshToken = resp.RefreshToken
		// An unreadable refresh token is kept without an expiry: the
		// gateway decides, and invalid_grant leads to a new password grant.
		if rexp, ok, err := jwtExp(resp.RefreshToken.Reveal()); err == nil && ok {
			g.RefreshExpiry = rexp
		}
	}
	// refresh_token_expires_in, which the gateway is not documented to
	// send, can only make it earlier; with no new refresh token it is the
	// stored one's.
	switch d, ok, err := resp.RefreshLifetime(); {
	case err != nil:
		return nil, err
	case ok && (g.RefreshExpiry.IsZero() || resp.Sent.Add(d).Before(g.RefreshExpiry)):
		g.RefreshExpiry = resp.Sent.Add(d)
	}
	return &providers.Token{
		AccessToken: resp.AccessToken,
		TokenType:   resp.TokenType,
		Expiry:      expiry,
		Scopes:      scopes,
		Grant:       g,
	}, nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// jwtExp reads the exp claim of a JWT (RFC 7519 §4.1.4) without verifying
// it. ok is false when tok is not a JWT or has no exp; err is set when it is
// a JWT whose exp is not a number. Errors never quote the token.
func jwtExp(tok string) (exp time.Time, ok bool, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false, nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false, nil
	}
	var claims map[string]json.RawMessage
	if json.Unmarshal(payload, &claims) != nil {
		return time.Time{}, false, nil
	}
	raw, present := claims["exp"]
	if !present || string(raw) == "null" {
		return time.Time{}, false, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return time.Time{}, false, errors.New("JWT exp claim is not a number")
	}
	if i, err := n.Int64(); err == nil {
		if i <= 0 {
			return time.Time{}, false, errors.New("JWT exp claim is not positive")
		}
		return time.Unix(i, 0), true, nil
	}
	f, err := n.Float64()
	if err != nil || f < 1 || f >= math.MaxInt64/2 { // below 1 s would truncate to the epoch
		return time.Time{}, false, errors.New("JWT exp claim is out of range")
	}
	return time.Unix(int64(f), 0), true, nil
}
