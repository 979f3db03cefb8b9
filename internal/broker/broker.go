// Package broker is the token lifecycle: it routes a request for a
// connection's token to that connection's provider, caches the token until
// shortly before it expires, keeps durable grants (refresh tokens) and makes
// concurrent misses share one upstream request.
//
// It speaks neither gRPC nor HTTP; package server maps its errors.
package broker

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// DefaultFetchTimeout bounds one upstream fetch, which is shared by every
// caller waiting for it and so does not stop when the first caller gives up.
const DefaultFetchTimeout = 60 * time.Second

// Options configure a Broker.
type Options struct {
	Cache       cache.Cache
	Connections []Connection
	// Now is the clock (nil: time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// FetchTimeout bounds one upstream fetch (0: DefaultFetchTimeout).
	FetchTimeout time.Duration
}

// A Connection is a named, opened provider.
type Connection struct {
	Name string
	// Type is the provider type name, for ListConnections.
	Type     string
	Provider providers.Provider
	// Skew: tokens are not served, and leave the cache, this long before
	// they expire; capped at half of each token's lifetime.
	Skew time.Duration
}

// A Request asks for a token.
type Request struct {
	Connection string
	Scopes     []string
	// MinTTL: the token must stay valid at least this long.
	MinTTL time.Duration
	// ForceRefresh ignores the cached token.
	ForceRefresh bool
}

// A Token is what callers get.
type Token struct {
	AccessToken secret.Value
	TokenType   string
	Expiry      time.Time
	Scopes      []string
}

// A Broker serves tokens. Its methods are safe for concurrent use.
type Broker struct {
	cache        cache.Cache
	conns        map[string]*conn
	names        []string
	now          func() time.Time
	log          *slog.Logger
	fetchTimeout time.Duration
	flights      singleflight.Group
}

type conn struct {
	Connection
	// grantMu serialises grant read-modify-write within this process, so
	// token keys of one connection never redeem one refresh token twice.
	grantMu sync.Mutex

	mu         sync.Mutex
	lastExpiry time.Time
	lastErr    string
}

// New returns a Broker. Connection names must be unique.
func New(o Options) (*Broker, error) {
	b := &Broker{
		cache:        o.Cache,
		conns:        make(map[string]*conn, len(o.Connections)),
		now:          o.Now,
		log:          o.Logger,
		fetchTimeout: o.FetchTimeout,
	}
	if b.cache == nil {
		return nil, errors.New("broker: no cache")
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.fetchTimeout <= 0 {
		b.fetchTimeout = DefaultFetchTimeout
	}
	for _, c := range o.Connections {
		if _, dup := b.conns[c.Name]; dup {
			return nil, fmt.Errorf("broker: duplicate connection %q", c.Name)
		}
		if c.Provider == nil {
			return nil, fmt.Errorf("broker: connection %q has no provider", c.Name)
		}
		b.conns[c.Name] = &conn{Connection: c}
		b.names = append(b.names, c.Name)
	}
	sort.Strings(b.names)
	return b, nil
}

func (b *Broker) connection(name string) (*conn, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: connection is required", ErrInvalidArgument)
	}
	c, ok := b.conns[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownConnection, truncate(name, 64))
	}
	return c, nil
}

// GetToken returns a token for the request's connection and scopes: the
// cached one while it is fresh, otherwise one from the upstream. Concurrent
// misses on one key share a single upstream request.
func (b *Broker) GetToken(ctx context.Context, req Request) (*Token, error) {
	c, err := b.connection(req.Connection)
	if err != nil {
		return nil, err
	}
	if req.MinTTL < 0 {
		return nil, fmt.Errorf("%w: min_ttl must not be negative", ErrInvalidArgument)
	}
	scopes, err := normalizeScopes(req.Scopes)
	if err != nil {
		return nil, err
	}
	key := tokenKey(c.Name, scopes)
	if !req.ForceRefresh {
		if t, ok := b.lookup(ctx, key, req.MinTTL); ok {
			return t, nil
		}
	}
	flight := key
	if req.ForceRefresh {
		flight += "\x00force"
	}
	ch := b.flights.DoChan(flight, func() (any, error) {
		// The fetch is shared, so it must not die with the first caller.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
		defer cancel()
		return b.fetch(fctx, c, key, scopes, req)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// lookup returns the cached token for key if it is still fresh and valid for
// at least minTTL.
func (b *Broker) lookup(ctx context.Context, key string, minTTL time.Duration) (*Token, bool) {
	raw, err := b.cache.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) {
			b.log.WarnContext(ctx, "cache read failed; fetching from upstream", "key", key, "err", err)
		}
		return nil, false
	}
	ct, err := decodeToken(raw)
	if err != nil {
		b.log.WarnContext(ctx, "cached token unreadable; fetching from upstream", "key", key, "err", err)
		return nil, false
	}
	now := b.now()
	if !now.Before(ct.freshUntil) || ct.Expiry.Sub(now) <= minTTL {
		return nil, false
	}
	return &ct.Token, true
}

func (b *Broker) fetch(ctx context.Context, c *conn, key string, scopes []string, req Request) (*Token, error) {
	if !req.ForceRefresh {
		// A flight that finished just before this one started may have
		// filled the cache.
		if t, ok := b.lookup(ctx, key, req.MinTTL); ok {
			return t, nil
		}
	}
	start := b.now()
	pt, err := b.obtain(ctx, c, scopes)
	if err != nil {
		c.setError(err)
		b.log.WarnContext(ctx, "token fetch failed", "connection", c.Name, "scopes", scopes, "err", err)
		return nil, err
	}
	now := b.now()
	if !pt.Expiry.After(now) {
		err := fmt.Errorf("%w: token expired on arrival (expiry %s)", providers.ErrInvalidResponse, pt.Expiry.UTC().Format(time.RFC3339))
		c.setError(err)
		return nil, err
	}
	t := &Token{AccessToken: pt.AccessToken, TokenType: pt.TokenType, Expiry: pt.Expiry, Scopes: pt.Scopes}
	if t.Scopes == nil {
		t.Scopes = scopes
	}
	skew := min(c.Skew, pt.Expiry.Sub(start)/2)
	fresh := pt.Expiry.Add(-skew)
	if ttl := fresh.Sub(now); ttl > 0 {
		if err := b.cache.Set(ctx, key, encodeToken(t, fresh), ttl); err != nil {
			// The token is good; the next call fetches again.
			b.log.WarnContext(ctx, "cache write failed", "key", key, "err", err)
		}
	}
	c.setExpiry(t.Expiry)
	b.log.InfoContext(ctx, "token fetched", "connection", c.Name, "scopes", scopes,
		"expires_at", t.Expiry.UTC(), "took", now.Sub(start))
	return t, nil
}

// obtain asks the provider for a token, refreshing a stored grant when the
// provider keeps one, and stores new grant state before returning.
func (b *Broker) obtain(ctx context.Context, c *conn, scopes []string) (*providers.Token, error) {
	preq := providers.Request{Scopes: scopes}
	ref, isRef := c.Provider.(providers.Refresher)
	_, isAuth := c.Provider.(providers.Authorizer)
	if !isRef && !isAuth {
		return c.Provider.Token(ctx, preq)
	}
	c.grantMu.Lock()
	defer c.grantMu.Unlock()
	g, err := b.loadGrant(ctx, c.Name)
	if err != nil {
		return nil, err
	}
	if isRef && g.Usable(b.now()) {
		t, err := ref.Refresh(ctx, preq, g)
		if err == nil {
			return t, b.saveGrant(ctx, c.Name, g, t)
		}
		if providers.OAuthCode(err) != providers.CodeInvalidGrant {
			return nil, err
		}
		if isAuth {
			revoked := *g
			revoked.State = providers.GrantRevoked
			revoked.UpdatedAt = b.now()
			if serr := b.storeGrant(ctx, c.Name, &revoked); serr != nil {
				return nil, serr
			}
			b.log.WarnContext(ctx, "grant revoked by upstream; a person must authorize again", "connection", c.Name)
			return nil, fmt.Errorf("%w: %w", providers.ErrRevoked, err)
		}
		b.log.InfoContext(ctx, "refresh token rejected; running the full grant", "connection", c.Name)
		if err := b.cache.Delete(ctx, grantKey(c.Name)); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStore, err)
		}
		g = nil
	}
	if isAuth {
		switch {
		case g == nil || g.State == providers.GrantNeedsAuthorization:
			return nil, providers.ErrNeedsAuthorization
		case g.State == providers.GrantRevoked:
			return nil, providers.ErrRevoked
		default:
			return nil, fmt.Errorf("%w: the grant has no usable refresh token", providers.ErrNeedsAuthorization)
		}
	}
	t, err := c.Provider.Token(ctx, preq)
	if err != nil {
		return nil, err
	}
	return t, b.saveGrant(ctx, c.Name, g, t)
}

// saveGrant stores t.Grant, if any, merged over old: a refresh response
// without a refresh token keeps the old one, and a device secret stays with
// its grant.
func (b *Broker) saveGrant(ctx context.Context, conn string, old *providers.Grant, t *providers.Token) error {
	if t.Grant == nil {
		return nil
	}
	g := *t.Grant
	if old != nil {
		if g.RefreshToken.IsZero() {
			g.RefreshToken, g.RefreshExpiry = old.RefreshToken, old.RefreshExpiry
		}
		if g.DeviceSecret.IsZero() {
			g.DeviceSecret = old.DeviceSecret
		}
		if g.Scopes == nil {
			g.Scopes = old.Scopes
		}
	}
	g.State = providers.GrantReady
	g.UpdatedAt = b.now()
	return b.storeGrant(ctx, conn, &g)
}

func (b *Broker) storeGrant(ctx context.Context, conn string, g *providers.Grant) error {
	raw, err := encodeGrant(g)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	if err := b.cache.Set(ctx, grantKey(conn), raw, 0); err != nil {
		return fmt.Errorf("%w: write grant: %w", ErrStore, err)
	}
	return nil
}

// loadGrant returns the stored grant, or nil when there is none.
func (b *Broker) loadGrant(ctx context.Context, conn string) (*providers.Grant, error) {
	raw, err := b.cache.Get(ctx, grantKey(conn))
	if errors.Is(err, cache.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read grant: %w", ErrStore, err)
	}
	g, err := decodeGrant(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: grant of %q unreadable: %w", ErrStore, conn, err)
	}
	return g, nil
}

// Invalidate drops the cached token for (connection, scopes). With a non-empty
// accessToken it drops it only if it is still that token. It reports whether
// a token was dropped.
func (b *Broker) Invalidate(ctx context.Context, connection string, scopes []string, accessToken string) (bool, error) {
	c, err := b.connection(connection)
	if err != nil {
		return false, err
	}
	scopes, err = normalizeScopes(scopes)
	if err != nil {
		return false, err
	}
	key := tokenKey(c.Name, scopes)
	raw, err := b.cache.Get(ctx, key)
	if errors.Is(err, cache.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrStore, err)
	}
	if accessToken == "" {
		if err := b.cache.Delete(ctx, key); err != nil {
			return false, fmt.Errorf("%w: %w", ErrStore, err)
		}
		return true, nil
	}
	ct, err := decodeToken(raw)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrStore, err)
	}
	if subtle.ConstantTimeCompare([]byte(ct.AccessToken.Reveal()), []byte(accessToken)) != 1 {
		return false, nil // already replaced: nothing to do
	}
	cad, ok := b.cache.(cache.CompareAndDeleter)
	if !ok {
		return true, b.cache.Delete(ctx, key)
	}
	done, err := cad.CompareAndDelete(ctx, key, raw)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrStore, err)
	}
	return done, nil
}

// ConnectionState is a connection's state for ListConnections.
type ConnectionState int

const (
	StateReady ConnectionState = iota + 1
	StateNeedsAuthorization
	StateRevoked
	StateFailing
)

// ConnectionInfo describes a connection without secrets.
type ConnectionInfo struct {
	Name, Type    string
	State         ConnectionState
	TokenExpiry   time.Time
	GrantedScopes []string
	Details       map[string]string
	LastError     string
}

// Connections describes every connection, sorted by name.
func (b *Broker) Connections(ctx context.Context) []ConnectionInfo {
	out := make([]ConnectionInfo, 0, len(b.names))
	for _, name := range b.names {
		c := b.conns[name]
		info := ConnectionInfo{Name: name, Type: c.Type, State: StateReady}
		c.mu.Lock()
		info.TokenExpiry, info.LastError = c.lastExpiry, c.lastErr
		c.mu.Unlock()
		if info.LastError != "" {
			info.State = StateFailing
		}
		if d, ok := c.Provider.(providers.Describer); ok {
			info.Details = d.Describe()
		}
		_, isRef := c.Provider.(providers.Refresher)
		_, isAuth := c.Provider.(providers.Authorizer)
		if isRef || isAuth {
			g, err := b.loadGrant(ctx, name)
			switch {
			case err != nil:
				info.State, info.LastError = StateFailing, err.Error()
			case g != nil:
				info.GrantedScopes = g.Scopes
				switch g.State {
				case providers.GrantRevoked:
					info.State = StateRevoked
				case providers.GrantNeedsAuthorization:
					info.State = StateNeedsAuthorization
				}
			case isAuth:
				info.State = StateNeedsAuthorization
			}
		}
		out = append(out, info)
	}
	return out
}

func (c *conn) setError(err error) {
	c.mu.Lock()
	c.lastErr = err.Error()
	c.mu.Unlock()
}

func (c *conn) setExpiry(t time.Time) {
	c.mu.Lock()
	c.lastExpiry, c.lastErr = t, ""
	c.mu.Unlock()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
