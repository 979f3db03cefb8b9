package broker

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

// GetToken returns a token for the request's connection and scopes: the
// cached one while it is fresh, otherwise one from the upstream.
//
// Concurrent misses on one key share a single flight in this process, and
// replicas sharing a cache take a lease on the key so only one of them asks
// the upstream. The flight runs on the broker's own budget: ctx bounds only
// this caller's wait, and the caller leaving early costs the flight
// nothing. The result is judged by this caller's own MinTTL.
func (b *Broker) GetToken(ctx context.Context, req Request) (*Token, error) {
	c, err := b.connection(req.Connection)
	if err != nil {
		return nil, err
	}
	if req.MinTTL < 0 {
		return nil, fmt.Errorf("%w: min_ttl must not be negative", ErrInvalidArgument)
	}
	if err := c.checkAccount(req.Account); err != nil {
		return nil, err
	}
	scopes, err := c.scopes(req.Scopes)
	if err != nil {
		return nil, err
	}
	now := b.now()
	if !req.ForceRefresh {
		// The L1 lookup's key lives on this stack: a hit allocates none.
		var buf [64]byte
		if t, ok := b.l1.get(string(appendTokenKey(buf[:0], c.Name, req.Account, scopes)), now, req.MinTTL, b.l1MaxAge); ok {
			c.m.Served(metrics.OutcomeL1Hit)
			return t, nil
		}
	}
	key := tokenKey(c.Name, req.Account, scopes)
	o := fetchOptions{force: req.ForceRefresh}
	if !req.ForceRefresh {
		ct, rej, err := b.readShared(ctx, c, req.Account, key)
		switch {
		case rej != nil:
			if requestLevel(rej) {
				c.m.Rejected(rejectionReason(rej))
			}
			return nil, rej
		case ct.usable(now, req.MinTTL):
			b.remember(c, req.Account, key, scopes, ct)
			c.m.Served(metrics.OutcomeSharedHit)
			return &ct.Token, nil
		case err != nil:
			// The shared cache cannot be read: an in-process copy that is
			// still fresh is served whatever its age.
			if e := b.l1.load(key); e != nil && e.usable(now, req.MinTTL) {
				c.m.Served(metrics.OutcomeL1Hit)
				return &e.tok, nil
			}
		case ct != nil:
			// Fresh, but not for as long as this caller needs.
			o.replaceBefore = ct.Expiry
		}
	}
	if life := c.lifetime(); life > 0 && req.MinTTL >= life {
		return nil, b.minTTLTooLong(c, req.MinTTL, life)
	}
	for attempt := 0; ; attempt++ {
		f := b.join(ctx, c, req.Account, key, scopes, o)
		f.waiters.Add(1)
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.err != nil {
			if requestLevel(f.err) {
				c.m.Rejected(rejectionReason(f.err))
			}
			return nil, f.err
		}
		if left := f.tok.Expiry.Sub(b.now()); left <= req.MinTTL {
			if !f.fetched && attempt == 0 {
				// A token another flight found cached: ask for a newer one.
				o.replaceBefore = f.tok.Expiry
				continue
			}
			return nil, b.minTTLTooLong(c, req.MinTTL, c.lifetime())
		}
		if f.fetched {
			c.m.Served(metrics.OutcomeFetched)
		} else {
			c.m.Served(metrics.OutcomeSharedHit)
		}
		return f.tok, nil
	}
}

func (b *Broker) minTTLTooLong(c *conn, minTTL, life time.Duration) error {
	c.m.Rejected("min_ttl")
	return fmt.Errorf("%w: min_ttl %v is longer than the tokens %q grants (%v)", ErrInvalidArgument, minTTL, c.Name, life)
}

// readShared returns the token in the shared cache (nil when there is
// none), or the upstream rejection remembered under its key. err is set
// when the cache could not be read. A token issued for another subject
// than c's (its key changed) counts as none.
func (b *Broker) readShared(ctx context.Context, c *conn, account, key string) (ct *cachedToken, rej error, err error) {
	raw, err := b.store.Get(ctx, key)
	if err != nil {
		if errors.Is(err, cache.ErrNotFound) {
			return nil, nil, nil
		}
		b.cacheTrouble(ctx, "get", "cache read failed", err)
		return nil, nil, err
	}
	ct, rej = b.decodeShared(ctx, c, account, key, raw)
	return ct, rej, nil
}

// decodeShared decodes what the shared cache holds under a token key.
func (b *Broker) decodeShared(ctx context.Context, c *conn, account, key string, raw []byte) (*cachedToken, error) {
	if raw == nil {
		return nil, nil
	}
	ct, rej, err := decodeToken(raw)
	switch {
	case err != nil:
		b.log.WarnContext(ctx, "cached token unreadable; fetching from upstream", "key", key, "err", err)
		return nil, nil
	case rej != nil:
		return nil, rej
	case ct.subject != c.subjectOf(account):
		b.log.InfoContext(ctx, "cached token was issued for another account (the connection's key changed); fetching a new one",
			"connection", c.Name, "cached_for", ct.subject, "configured", c.subjectOf(account))
		return nil, nil
	}
	return ct, nil
}

// Invalidate drops the cached token for (connection, scopes), here and, by
// announcement, in every replica's L1. With a non-empty accessToken it
// drops it only if it is still that token, so N callers reporting one dead
// token cause one refresh. It reports whether a token was dropped.
func (b *Broker) Invalidate(ctx context.Context, connection, account string, scopes []string, accessToken string) (bool, error) {
	c, err := b.connection(connection)
	if err != nil {
		return false, err
	}
	if err := c.checkAccount(account); err != nil {
		return false, err
	}
	scopes, err = c.scopes(scopes)
	if err != nil {
		return false, err
	}
	key := tokenKey(c.Name, account, scopes)
	matches := func(t *Token) bool {
		return accessToken == "" || subtle.ConstantTimeCompare([]byte(t.AccessToken.Reveal()), []byte(accessToken)) == 1
	}
	dropped := false
	if e := b.l1.load(key); e != nil && matches(&e.tok) {
		b.l1.drop(key, e)
		dropped = true
	}
	raw, err := b.store.Get(ctx, key)
	switch {
	case errors.Is(err, cache.ErrNotFound):
	case err != nil:
		return dropped, fmt.Errorf("%w: %w", ErrStore, err)
	default:
		// A remembered rejection goes only when no token is named; an
		// unreadable value goes in any case.
		ct, rej, derr := decodeToken(raw)
		if derr == nil && (rej != nil && accessToken != "" || rej == nil && !matches(&ct.Token)) {
			break
		}
		done, err := b.store.CompareAndDelete(ctx, key, raw)
		if err != nil {
			return dropped, fmt.Errorf("%w: %w", ErrStore, err)
		}
		dropped = dropped || done
	}
	if dropped {
		b.announce(ctx, key)
	}
	return dropped, nil
}
