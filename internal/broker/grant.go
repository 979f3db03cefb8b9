package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// Grants are durable: the refresh token (and WAX device secret) that gets
// the next token without a person. Every grant write goes through a lease's
// fenced commit (flight.go, authorize.go), so two replicas never redeem one
// refresh token and a refresh never overwrites a grant newer than the one it
// started from.

// obtain asks the provider for a token starting from grant g (nil: none
// stored), refreshing it when the provider can, and returns the grant state
// to store with the token (nil: leave the stored grant as it is). On a
// revoked grant it returns the revoked grant to store and an error.
func (b *Broker) obtain(ctx context.Context, c *conn, account string, scopes []string, g *providers.Grant) (*providers.Token, *providers.Grant, error) {
	preq := providers.Request{Scopes: scopes}
	if !c.keepsGrant {
		t, err := b.callToken(ctx, c, preq)
		return t, nil, err
	}
	if g != nil && g.Subject != c.subjectOf(account) {
		// Refreshing it would keep acting as the old account.
		b.log.InfoContext(ctx, "stored grant was made for another account (the connection's key changed); running the full grant",
			"connection", c.Name, "grant_for", g.Subject, "configured", c.subject)
		g = nil
	}
	if c.refresher != nil && g.Usable(b.now()) {
		var t *providers.Token
		err := b.oncePolicy.DoWithBreaker(ctx, c.breaker, func(ctx context.Context) (err error) {
			t, err = c.refresher.Refresh(ctx, preq, g)
			return err
		})
		if err == nil {
			return t, b.merge(c, account, g, t), nil
		}
		if providers.OAuthCode(err) != providers.CodeInvalidGrant {
			return nil, nil, err
		}
		if c.authorizer != nil || account != "" || !c.canRunFullGrant {
			revoked := *g
			revoked.State = providers.GrantRevoked
			revoked.UpdatedAt = b.now()
			c.m.GrantLost()
			if c.authorizer == nil {
				// Imported: it comes back by import, not by a person.
				revoked.State = providers.GrantNeedsAuthorization
				b.log.WarnContext(ctx, "imported grant refused by upstream; import a new one", "connection", c.Name, "account", account)
				return nil, &revoked, fmt.Errorf("%w: the upstream refused the imported refresh token; import a new grant: %w",
					providers.ErrNeedsAuthorization, err)
			}
			b.log.WarnContext(ctx, "grant revoked by upstream; a person must authorize again", "connection", c.Name, "account", account)
			return nil, &revoked, fmt.Errorf("%w: %w", providers.ErrRevoked, err)
		}
		b.log.InfoContext(ctx, "refresh token rejected; running the full grant", "connection", c.Name)
		g = nil
	}
	if c.authorizer != nil || account != "" || !c.canRunFullGrant {
		// Only the default account of a connection that signs its own
		// grant (WX with a key) gets tokens without a person or an import.
		switch {
		case g == nil || g.State == providers.GrantNeedsAuthorization:
			return nil, nil, providers.ErrNeedsAuthorization
		case g.State == providers.GrantRevoked:
			// The upstream's answer that revoked it, for every caller.
			return nil, nil, fmt.Errorf("%w: %w", providers.ErrRevoked,
				&providers.OAuthError{Code: providers.CodeInvalidGrant, Description: "the stored grant was revoked by the upstream"})
		default:
			return nil, nil, fmt.Errorf("%w: the grant has no usable refresh token", providers.ErrNeedsAuthorization)
		}
	}
	t, err := b.callToken(ctx, c, preq)
	if err != nil {
		return nil, nil, err
	}
	return t, b.merge(c, account, g, t), nil
}

// callToken runs the provider's full grant under the retry policy and the
// connection's breaker. Full grants are safe to repeat.
func (b *Broker) callToken(ctx context.Context, c *conn, req providers.Request) (*providers.Token, error) {
	var t *providers.Token
	err := b.policy.DoWithBreaker(ctx, c.breaker, func(ctx context.Context) (err error) {
		t, err = c.Provider.Token(ctx, req)
		return err
	})
	return t, err
}

// merge returns t.Grant merged over old, ready to store, or nil when t
// brings no grant: a refresh response without a refresh token keeps the old
// one, and a device secret stays with its grant.
func (b *Broker) merge(c *conn, account string, old *providers.Grant, t *providers.Token) *providers.Grant {
	if t.Grant == nil {
		return nil
	}
	g := *t.Grant
	if old != nil {
		if g.RefreshToken.IsZero() {
			g.RefreshToken = old.RefreshToken
			if g.RefreshExpiry.IsZero() {
				// An upstream that restarts an idle lifetime on each use
				// reports the new expiry without a new refresh token.
				g.RefreshExpiry = old.RefreshExpiry
			}
		}
		if g.DeviceSecret.IsZero() {
			g.DeviceSecret = old.DeviceSecret
		}
		if g.Scopes == nil {
			g.Scopes = old.Scopes
		}
	}
	g.Subject = c.subjectOf(account)
	g.State = providers.GrantReady
	g.UpdatedAt = b.now()
	return &g
}

// A pendingGrant is a grant not yet stored, and the stored one it replaces.
type pendingGrant struct {
	from, grant *providers.Grant
}

// keepPending remembers ng, made from g, until it can be written.
func (c *conn) keepPending(account string, g, ng *providers.Grant) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pending[account]; p != nil && g != nil && sameGrant(p.grant, g) {
		g = p.from // still replacing what the store holds
	}
	if c.pending == nil {
		c.pending = map[string]*pendingGrant{}
	}
	c.pending[account] = &pendingGrant{from: g, grant: ng}
}

// takePending returns the grant to use instead of stored, when one is
// pending over it, and forgets a pending grant that stored has moved past.
func (c *conn) takePending(account string, stored *providers.Grant) (*providers.Grant, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[account]
	if p == nil {
		return stored, false
	}
	delete(c.pending, account)
	if (p.from == nil) != (stored == nil) || stored != nil && !sameGrant(p.from, stored) {
		return stored, false // re-authorized or refreshed elsewhere since
	}
	return p.grant, true
}

func sameGrant(a, b *providers.Grant) bool {
	return a.RefreshToken.Reveal() == b.RefreshToken.Reveal() && a.DeviceSecret.Reveal() == b.DeviceSecret.Reveal()
}

// loadGrant returns the stored grant of (c, account), or nil when there is
// none (or it was made for another subject). It takes no lease: for
// reporting only.
func (b *Broker) loadGrant(ctx context.Context, c *conn, account string) (*providers.Grant, grantMeta, error) {
	raw, err := b.store.Get(ctx, grantKey(c.Name, account))
	if errors.Is(err, cache.ErrNotFound) {
		return nil, grantMeta{}, nil
	}
	if err != nil {
		return nil, grantMeta{}, fmt.Errorf("%w: read grant: %w", ErrStore, err)
	}
	g, m, err := b.decodeGrant(c, raw)
	if g != nil && g.Subject != c.subjectOf(account) {
		return nil, grantMeta{}, err // another key's: the next fetch replaces it
	}
	return g, m, err
}

// decodeGrant decodes a stored grant; raw nil is none.
func (b *Broker) decodeGrant(c *conn, raw []byte) (*providers.Grant, grantMeta, error) {
	if raw == nil {
		return nil, grantMeta{}, nil
	}
	g, m, err := decodeGrant(raw)
	if err != nil {
		return nil, grantMeta{}, fmt.Errorf("%w: grant of %q unreadable: %w", ErrStore, c.Name, err)
	}
	return g, m, nil
}

// requestLevel reports whether err is the request's own fault, not the
// connection's: the upstream refused these scopes, or the caller asked for
// more than the tokens give. Such errors never change the connection's state
// and are counted apart (tokenbroker_request_rejections_total).
func requestLevel(err error) bool {
	switch providers.OAuthCode(err) {
	case providers.CodeInvalidScope, "invalid_target":
		return true
	}
	return errors.Is(err, ErrInvalidArgument)
}

// rejectionReason labels a request-level rejection for metrics.
func rejectionReason(err error) string {
	if code := providers.OAuthCode(err); code != "" {
		return code
	}
	return "invalid_argument"
}

// rejection returns the record that remembers err under the token key, or
// nil when err is not a terminal upstream rejection worth remembering: a
// grant's state (revoked, needs authorization) is remembered by the grant.
func (b *Broker) rejection(c *conn, err error) []byte {
	if b.rejectionTTL < 0 || !errors.Is(err, providers.ErrRejected) ||
		errors.Is(err, providers.ErrRevoked) || errors.Is(err, providers.ErrNeedsAuthorization) {
		return nil
	}
	var oe *providers.OAuthError
	if !errors.As(err, &oe) {
		return nil
	}
	return encodeRejection(err, oe)
}
