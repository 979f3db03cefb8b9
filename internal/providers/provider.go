// Package providers is the contract between the broker and the code that
// speaks one upstream token protocol (a provider), and the registry that maps
// a provider type named in the configuration to its implementation.
//
// The broker owns caching, locking and the durable grant store; a provider
// only talks to its upstream. Implementations live in sub-packages and never
// import one another; only package builtin imports them all.
package providers

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// A Provider obtains tokens from one upstream authorization server for one
// connection. Token must be safe for concurrent use. It never reads or writes
// the cache: anything that must outlive the call comes back in Token.Grant.
type Provider interface {
	// Token runs the provider's full grant (client credentials, a signed
	// password grant, …) for req.Scopes. Errors wrap ErrRejected (with an
	// *OAuthError) when the upstream refused, ErrUnavailable when it could
	// not be reached or failed, and ErrInvalidResponse when its answer made
	// no sense. Providers that need a person's approval first (Authorizers)
	// return ErrNeedsAuthorization.
	Token(ctx context.Context, req Request) (*Token, error)
}

// A Refresher is a Provider that can redeem a stored grant's refresh token
// (RFC 6749 §6). The broker calls Refresh instead of Token whenever a usable
// grant is stored. An upstream invalid_grant comes back as an *OAuthError
// with Code "invalid_grant" under ErrRejected; the broker decides what follows.
type Refresher interface {
	Refresh(ctx context.Context, req Request, g *Grant) (*Token, error)
}

// A Revoker is a Provider that can revoke a grant at its upstream
// (RFC 7009), so that a deleted account's refresh token stops working there
// too. Revoke asks the upstream to revoke g's refresh token, authenticating
// the client as the token endpoint does (with g's device secret in
// device-secret mode). It must be safe for concurrent use.
//
// Revoke returns nil when the upstream answered 2xx: RFC 7009 §2.2 answers
// a token that was already invalid the same way, so nil means "not usable
// any more", not "was live until now". A grant without a refresh token has
// nothing the upstream could revoke: Revoke returns nil and sends nothing.
// Errors wrap ErrRejected (with an *OAuthError when the upstream sent an
// RFC 6749 §5.2 body, such as unsupported_token_type or invalid_client),
// ErrUnavailable (unreachable, 5xx including RFC 7009's 503, 429), or
// ErrNotSupported when the connection has no revocation endpoint. A
// provider type whose upstream documents no revocation at all does not
// implement Revoker; for the broker both mean the same: the grant can only
// be forgotten locally.
type Revoker interface {
	Revoke(ctx context.Context, g *Grant) error
}

// An AccountBound Provider's configuration names the upstream account it
// acts as (WX: the address of its key). The broker records that subject with
// every token and grant it stores, and ignores stored ones made for another
// subject, so a changed key never keeps serving or refreshing the old
// account.
type AccountBound interface {
	Subject() string
}

// An Authorizer is a Provider whose grant starts with a person approving
// access in a browser (RFC 6749 §4.1).
type Authorizer interface {
	// AuthCodeURL returns the URL that asks the person for approval, carrying
	// state, which the upstream hands back with the code. verifier is a
	// fresh RFC 7636 code verifier, kept with the state: a provider using
	// PKCE sends its S256 challenge; others ignore it.
	AuthCodeURL(state, verifier string) string
	// Exchange redeems a single-use authorization code, with the verifier
	// AuthCodeURL was given for it. The returned token's Grant holds
	// everything needed to refresh later (and, for public clients, the
	// device secret used for this exchange).
	Exchange(ctx context.Context, code, verifier string) (*Token, error)
}

// A GrantImporter is a Refresher that gets tokens only from grants
// imported into the broker (ImportGrant), such as a WX connection without a
// key: its Token never succeeds, and a refused refresh means the grant must
// be imported again (NEEDS_AUTHORIZATION), not that a person re-authorizes.
type GrantImporter interface {
	ImportsGrants() bool
}

// A DefaultScoper sends a fixed set of scopes when a request names none.
// The broker applies them before it builds the cache key, so a request with
// no scopes and one naming exactly the defaults share one token.
type DefaultScoper interface {
	// DefaultScopes returns the scopes, sorted and unique.
	DefaultScopes() []string
}

// A Describer reports public facts about a connection for ListConnections,
// such as an account address. It must never return secrets.
type Describer interface {
	Describe() map[string]string
}

// A Request asks a provider for a token.
type Request struct {
	// Scopes are sorted and unique; empty means the connection's default.
	Scopes []string
}

// A Token is what a provider returns.
type Token struct {
	AccessToken secret.Value
	// TokenType as the upstream sent it ("bearer", "Bearer", …).
	TokenType string
	// Expiry is computed by the provider from its protocol's semantics,
	// using the clock reading taken before the request was sent.
	Expiry time.Time
	// Scopes granted; nil when the upstream did not say.
	Scopes []string
	// Grant, when non-nil, is new durable state (a first or rotated refresh
	// token) that the broker stores before it hands out AccessToken. A
	// Grant with an empty RefreshToken on a refresh keeps the stored one;
	// its RefreshExpiry, when non-zero, then replaces the stored one's (an
	// upstream restarting an idle refresh-token lifetime on each use).
	Grant *Grant
}

// GrantState says whether a grant can be used without a person.
type GrantState string

const (
	GrantReady              GrantState = "ready"
	GrantNeedsAuthorization GrantState = "needs_authorization"
	GrantRevoked            GrantState = "revoked"
)

// A Grant is durable state that lets the broker get the next token without a
// person: never evicted, survives restarts.
type Grant struct {
	State        GrantState
	RefreshToken secret.Value
	// RefreshExpiry is when RefreshToken stops working; zero when unknown.
	// Providers set it from the upstream's refresh_token_expires_in
	// (relative seconds, checked like expires_in) or, for WX, the refresh
	// token's JWT exp, whichever is earlier.
	RefreshExpiry time.Time
	// DeviceSecret is the per-grant client secret of a public client (WAX
	// device-secret mode), used for the exchange and every refresh.
	DeviceSecret secret.Value
	// Scopes the upstream granted.
	Scopes []string
	// Subject is the upstream account the grant acts as, for providers that
	// are AccountBound; empty otherwise.
	Subject   string
	UpdatedAt time.Time
}

// Usable reports whether g can be refreshed at now.
func (g *Grant) Usable(now time.Time) bool {
	return g != nil && g.State == GrantReady && !g.RefreshToken.IsZero() &&
		(g.RefreshExpiry.IsZero() || now.Before(g.RefreshExpiry))
}

// A Config is one provider type's connection settings, decoded from the
// `config` block of a connection in the broker's YAML file.
type Config interface {
	// Validate reports every problem at once (errors.Join), naming each
	// setting by its YAML key. It reads no files and dials nothing.
	Validate() error
	// Open applies defaults, reads referenced secrets through env.Secrets and
	// returns a ready provider. It dials nothing.
	Open(env Env) (Provider, error)
}

// Env is what a provider may use from its surroundings. Time and randomness
// are injected so tests control them.
type Env struct {
	// Name of the connection, for messages.
	Name       string
	Now        func() time.Time
	Rand       io.Reader
	HTTPClient *http.Client
	Logger     *slog.Logger
	Secrets    secret.Loader
}
