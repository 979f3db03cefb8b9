package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Accounts: a connection that keeps grants (authorization code, WAX, WX)
// holds one grant per end user, the account, each under its own keys, lease
// and hash tag (key.go). The default account "" is the connection's single
// grant of before accounts existed, stored where it always was.
//
// Two sorted indexes per connection find accounts without scanning the
// keyspace: accounts:{conn} lists them (ListAccounts pages through it by
// member), keepalive:{conn} schedules their background refreshes (scored by
// when they are due; each replica takes the few that are due).

// Limits on account listings.
const (
	DefaultAccountPageSize = 50
	MaxAccountPageSize     = 500
)

// An AccountInfo describes one account of a connection, without secrets.
type AccountInfo struct {
	Account       string
	State         ConnectionState
	GrantedScopes []string
	// TokenExpiry is the expiry of the last token obtained from the grant.
	TokenExpiry time.Time
	// GrantExpiry is when the refresh token stops working (zero: unknown).
	GrantExpiry time.Time
	// LastRefresh is when the grant was last written.
	LastRefresh time.Time
	LastError   string
}

// ListAccounts returns up to pageSize accounts of connection, in order of
// their ids, starting at pageToken ("" for the first page), and the token of
// the next page ("" after the last). With state set (not zero) only accounts
// in that state are returned; a page may then hold fewer. Each page costs
// one index read and one grant read per account, whatever the number of
// accounts.
func (b *Broker) ListAccounts(ctx context.Context, connection string, pageSize int, pageToken string, state ConnectionState) ([]AccountInfo, string, error) {
	c, err := b.connection(connection)
	if err != nil {
		return nil, "", err
	}
	if !c.keepsGrant {
		return nil, "", fmt.Errorf("%w: connection %q (type %s) has no accounts", ErrInvalidArgument, c.Name, c.Type)
	}
	switch {
	case pageSize < 0 || pageSize > MaxAccountPageSize:
		return nil, "", fmt.Errorf("%w: page_size must be 0-%d", ErrInvalidArgument, MaxAccountPageSize)
	case pageSize == 0:
		pageSize = DefaultAccountPageSize
	}
	from, err := decodePageToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	ids, err := b.store.IndexRange(ctx, accountsKey(c.Name), from, pageSize+1)
	if err != nil {
		return nil, "", fmt.Errorf("%w: list accounts: %w", ErrStore, err)
	}
	if pageToken == "" && !slices.Contains(ids, "") {
		// The default account of before accounts existed is not indexed
		// until its grant is next written: look for it on the first page.
		if g, _, err := b.loadGrant(ctx, c, ""); err == nil && g != nil {
			ids = append([]string{""}, ids...)
		}
	}
	next := ""
	if len(ids) > pageSize {
		next, ids = encodePageToken(ids[pageSize]), ids[:pageSize]
	}
	out := make([]AccountInfo, 0, len(ids))
	for _, id := range ids {
		if info := b.accountInfo(ctx, c, id); state == 0 || info.State == state {
			out = append(out, info)
		}
	}
	return out, next, nil
}

// Account describes one account of connection, as ListAccounts would.
func (b *Broker) Account(ctx context.Context, connection, account string) (AccountInfo, error) {
	c, err := b.connection(connection)
	if err != nil {
		return AccountInfo{}, err
	}
	if err := c.checkAccount(account); err != nil {
		return AccountInfo{}, err
	}
	return b.accountInfo(ctx, c, account), nil
}

// accountInfo reads (c, account)'s grant and says what it is in.
func (b *Broker) accountInfo(ctx context.Context, c *conn, account string) AccountInfo {
	info := AccountInfo{Account: account, State: StateReady}
	g, m, err := b.loadGrant(ctx, c, account)
	switch {
	case err != nil:
		info.State, info.LastError = StateFailing, err.Error()
	case g == nil:
		info.State = StateNeedsAuthorization
	default:
		info.GrantedScopes, info.GrantExpiry, info.LastRefresh = g.Scopes, g.RefreshExpiry, g.UpdatedAt
		info.TokenExpiry, info.LastError = m.tokenExpiry, m.lastError
		switch {
		case g.State == providers.GrantRevoked:
			info.State = StateRevoked
		case g.State == providers.GrantNeedsAuthorization:
			info.State = StateNeedsAuthorization
		case m.lastError != "":
			info.State = StateFailing
		}
	}
	return info
}

// Page tokens carry the first account of the next page, prefixed so that
// the default account ("") has a token too.
func encodePageToken(account string) string { return "a:" + account }

func decodePageToken(t string) (string, error) {
	if t == "" {
		return "", nil
	}
	a, ok := strings.CutPrefix(t, "a:")
	if !ok || checkAccount(a) != nil {
		return "", fmt.Errorf("%w: page_token is not one this broker issued", ErrInvalidArgument)
	}
	return a, nil
}

// indexAccount lists account in its connection's index (idempotent).
func (b *Broker) indexAccount(ctx context.Context, c *conn, account string) {
	if err := b.store.IndexAdd(ctx, accountsKey(c.Name), account, 0); err != nil {
		b.cacheTrouble(ctx, "index", "account index not updated; ListAccounts misses it until its grant is next written", err)
	}
}

// An Import is a grant obtained elsewhere (the WX app, another broker),
// handed to ImportGrant.
type Import struct {
	Connection, Account string
	RefreshToken        secret.Value
	// AccessToken, with ExpiresAt in the future, is served until then;
	// empty: the first GetToken refreshes.
	AccessToken secret.Value
	ExpiresAt   time.Time
	Scopes      []string
	// RefreshExpiry, when known, is when the refresh token stops working.
	RefreshExpiry time.Time
}

// ImportGrant stores an imported grant for (connection, account) in place
// of any grant it has, exactly as an authorization would (replaceGrant): the
// old grant's tokens are retired everywhere. Only connections that can
// refresh take imports.
func (b *Broker) ImportGrant(ctx context.Context, in Import) error {
	c, err := b.connection(in.Connection)
	if err != nil {
		return err
	}
	if err := c.checkAccount(in.Account); err != nil {
		return err
	}
	if c.refresher == nil {
		return fmt.Errorf("%w: connection %q (type %s) cannot refresh, so it cannot use an imported grant", providers.ErrNotSupported, c.Name, c.Type)
	}
	if in.RefreshToken.IsZero() {
		return fmt.Errorf("%w: refresh_token is required", ErrInvalidArgument)
	}
	scopes, err := normalizeScopes(in.Scopes)
	if err != nil {
		return err
	}
	if !in.AccessToken.IsZero() && !in.ExpiresAt.After(b.now()) {
		return fmt.Errorf("%w: expires_at must be in the future when access_token is given", ErrInvalidArgument)
	}
	// Like a completion, the replacement finishes once begun, whoever waits.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
	defer cancel()
	return b.replaceGrant(ctx, c, in.Account, "grant imported", func(context.Context) (*providers.Token, error) {
		g := &providers.Grant{RefreshToken: in.RefreshToken, RefreshExpiry: in.RefreshExpiry, Scopes: scopes}
		// Without an access token there is nothing to serve until the
		// first GetToken refreshes.
		return &providers.Token{AccessToken: in.AccessToken, TokenType: "Bearer", Expiry: in.ExpiresAt, Scopes: scopes, Grant: g}, nil
	})
}

// DeleteAccount revokes the grant of (connection, account) at the upstream
// when revokeUpstream (RFC 7009; the provider must be a providers.Revoker),
// then deletes the grant, every token obtained from it (its device secret
// goes with the grant) and the account's index entries; every replica drops
// its L1 copies. It reports whether there was a grant. A failed revocation
// deletes nothing.
func (b *Broker) DeleteAccount(ctx context.Context, connection, account string, revokeUpstream bool) (bool, error) {
	c, err := b.connection(connection)
	if err != nil {
		return false, err
	}
	if err := c.checkAccount(account); err != nil {
		return false, err
	}
	if !c.keepsGrant {
		return false, fmt.Errorf("%w: connection %q (type %s) has no accounts", ErrInvalidArgument, c.Name, c.Type)
	}
	// The revocation and the deletion finish once begun, whoever waits: a
	// grant revoked upstream but still stored would only fail later.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
	defer cancel()
	var lease cache.Lease
	var values [][]byte
	if err := b.waitForLease(ctx, c, lockName(c, account, ""), []string{grantKey(c.Name, account)}, nil, &lease, &values); err != nil {
		return false, fmt.Errorf("%w: take the account's lease: %w", ErrStore, err)
	}
	g, m, err := b.decodeGrant(c, values[0])
	if err != nil {
		_ = lease.Release(ctx)
		return false, err
	}
	if g != nil && revokeUpstream && !g.RefreshToken.IsZero() {
		rv, ok := c.Provider.(providers.Revoker)
		if !ok {
			_ = lease.Release(ctx)
			return false, fmt.Errorf("%w: connection %q has no revocation endpoint (revocation_url); delete without revoke_upstream",
				providers.ErrNotSupported, c.Name)
		}
		stop := b.keepRenewed(ctx, c, lease)
		err := b.oncePolicy.DoWithBreaker(ctx, c.breaker, func(ctx context.Context) error { return rv.Revoke(ctx, g) })
		stop()
		if err != nil {
			_ = lease.Release(ctx)
			return false, fmt.Errorf("revoke at the upstream: %w", err)
		}
	}
	writes := []cache.Write{{Key: grantKey(c.Name, account), Delete: true}}
	keys := append(slices.Clone(m.keys), tokenKey(c.Name, account, c.defaultScopes))
	for _, k := range keys {
		writes = append(writes, cache.Write{Key: k, Delete: true})
	}
	if err := b.commit(ctx, c, lease, writes); err != nil {
		return false, err
	}
	c.takePending(account, nil)
	b.announceAccount(ctx, c, account)
	b.markState(ctx, c, account, 0)
	for _, ix := range []string{accountsKey(c.Name), keepAliveKey(c.Name)} {
		if err := b.store.IndexRemove(ctx, ix, account); err != nil {
			b.cacheTrouble(ctx, "index", "account index entry not removed", err)
		}
	}
	b.log.InfoContext(ctx, "account deleted", "connection", c.Name, "account", account, "revoked_upstream", revokeUpstream && g != nil)
	return g != nil, nil
}

// Keep-alive: grants whose refresh token dies when unused (the upstream
// reports refresh_token_expires_in, or the connection sets
// grant_idle_lifetime) are refreshed in the background before that.

// DefaultKeepAliveEvery is how often each replica looks for due accounts.
const DefaultKeepAliveEvery = time.Second

// keepAliveBatch bounds the refreshes one replica runs at once per
// connection.
const keepAliveBatch = 8

// grantDeath is when g stops working if nobody refreshes it (zero: never).
func (c *conn) grantDeath(g *providers.Grant) time.Time {
	t := g.RefreshExpiry
	if c.GrantIdleLifetime > 0 && !g.UpdatedAt.IsZero() {
		if idle := g.UpdatedAt.Add(c.GrantIdleLifetime); t.IsZero() || idle.Before(t) {
			t = idle
		}
	}
	return t
}

// schedule puts (c, account)'s next keep-alive refresh, for grant g, in the
// connection's schedule: at a jittered point in the second half of what is
// left of the grant's life. A grant that never dies, or is not ready, is
// taken off.
func (b *Broker) schedule(ctx context.Context, c *conn, account string, g *providers.Grant) {
	now := b.now()
	death := c.grantDeath(g)
	if g.State != providers.GrantReady || death.IsZero() || !death.After(now) {
		if err := b.store.IndexRemove(ctx, keepAliveKey(c.Name), account); err != nil {
			b.cacheTrouble(ctx, "index", "keep-alive schedule not updated", err)
		}
		return
	}
	left := death.Sub(now)
	c.m.GrantExpiry(left)
	due := now.Add(left/2 + time.Duration(rand.Int64N(int64(left)/5+1)))
	if err := b.store.IndexAdd(ctx, keepAliveKey(c.Name), account, float64(due.UnixMilli())); err != nil {
		b.cacheTrouble(ctx, "index", "keep-alive schedule not updated", err)
	}
}

// keepAlive refreshes due grants until Close.
func (b *Broker) keepAlive(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.stopSweep:
			return
		case <-t.C:
		}
		for _, name := range b.names {
			if c := b.conns[name]; c.refresher != nil {
				b.keepAliveConn(c)
			}
		}
	}
}

// keepAliveConn refreshes up to keepAliveBatch due accounts of c and waits
// for them.
func (b *Broker) keepAliveConn(c *conn) {
	ctx, cancel := context.WithTimeout(context.Background(), b.fetchTimeout)
	defer cancel()
	due, err := b.store.IndexDue(ctx, keepAliveKey(c.Name), float64(b.now().UnixMilli()), keepAliveBatch)
	if err != nil {
		b.cacheTrouble(ctx, "index", "keep-alive schedule unreadable", err)
		return
	}
	done := make(chan struct{}, len(due))
	for _, account := range due {
		// Claim it for a while, so replicas waking together spread out.
		_ = b.store.IndexAdd(ctx, keepAliveKey(c.Name), account, float64(b.now().Add(b.fetchTimeout).UnixMilli()))
		key := tokenKey(c.Name, account, c.defaultScopes)
		go func() {
			defer func() { done <- struct{}{} }()
			f := b.join(ctx, c, account, key, c.defaultScopes, fetchOptions{force: true, ahead: true})
			<-f.done
			switch {
			case f.err == nil:
				b.log.Debug("grant kept alive", "connection", c.Name, "account", account)
			case errors.Is(f.err, providers.ErrRevoked), errors.Is(f.err, providers.ErrNeedsAuthorization):
				_ = b.store.IndexRemove(ctx, keepAliveKey(c.Name), account)
			default:
				b.log.Warn("keep-alive refresh failed; retrying later", "connection", c.Name, "account", account, "err", f.err)
			}
		}()
	}
	for range due {
		<-done
	}
}

// Accounts in a state other than ready are also listed in one index per
// state, updated on every change of state, so that counting accounts by
// state costs one read per state, not a scan.
var countedStates = []ConnectionState{StateNeedsAuthorization, StateRevoked, StateFailing}

func stateKey(conn string, st ConnectionState) string {
	return fmt.Sprintf("accountstate:{%s}:%d", conn, st)
}

// markState records that (c, account) is now in state st (0: deleted).
func (b *Broker) markState(ctx context.Context, c *conn, account string, st ConnectionState) {
	for _, s := range countedStates {
		var err error
		if s == st {
			err = b.store.IndexAdd(ctx, stateKey(c.Name, s), account, 0)
		} else {
			err = b.store.IndexRemove(ctx, stateKey(c.Name, s), account)
		}
		if err != nil {
			b.cacheTrouble(ctx, "index", "account state index not updated", err)
			return
		}
	}
}

// countAccounts returns how many accounts c has in each state.
func (b *Broker) countAccounts(ctx context.Context, c *conn) (map[ConnectionState]int64, error) {
	total, err := b.store.IndexLen(ctx, accountsKey(c.Name))
	if err != nil {
		return nil, err
	}
	out := map[ConnectionState]int64{}
	for _, s := range countedStates {
		n, err := b.store.IndexLen(ctx, stateKey(c.Name, s))
		if err != nil {
			return nil, err
		}
		out[s] = n
		total -= n
	}
	out[StateReady] = max(total, 0)
	return out, nil
}
