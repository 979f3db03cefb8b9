package broker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// Authorization code grant (RFC 6749 §4.1), run for connections whose
// provider is a providers.Authorizer.
//
// StartAuthorization stores a random state in the shared cache, bound to the
// connection, so that whichever replica receives the redirect can finish it.
// Completing consumes the state atomically, redeems the code once, stores the
// grant durably and caches the token that came with it. The outcome is kept
// for a while under a hash of (state, code), so a repeated callback (a
// browser reload, a retried request) gets the first outcome and never spends
// the code again; a concurrent duplicate waits for the first to finish.

// AuthStateTTL is how long a state from StartAuthorization is accepted.
const AuthStateTTL = 10 * time.Minute

// Limits on an authorization response.
const (
	MaxStateLength = 512
	MaxCodeLength  = 4096
	// An RFC 6749 §4.1.2.1 error code, and its description.
	maxErrorCodeLength   = 128
	maxErrorDescLength   = 200
	authResultTTL        = AuthStateTTL
	authPollInitial      = 10 * time.Millisecond
	authPollMax          = 250 * time.Millisecond
	authStateRandomBytes = 32
)

// An AuthorizationResponse is what the upstream sent back to the redirect
// URI (RFC 6749 §4.1.2): a code on approval, an error (such as
// access_denied) otherwise, and the state either way.
type AuthorizationResponse struct {
	// Connection, when set, must be the one the state is bound to; empty
	// accepts whichever it is (the HTTP callback cannot know).
	Connection string
	// Account, when Connection is set, must be the one the state is
	// bound to ("" the default account); the HTTP callback leaves both
	// empty and takes whichever the state names.
	Account string
	State   string
	Code    string
	// Error and ErrorDescription are the upstream's error response; Error
	// is empty on approval.
	Error            string
	ErrorDescription string
}

// StartAuthorization begins an authorization code grant for connection. It
// returns the URL a person opens to approve access, the single-use state that
// URL carries, and when the state stops being accepted. Connections whose
// provider does not use the grant fail with providers.ErrNotSupported; a
// cache that cannot keep single-use values with ErrStore.
func (b *Broker) StartAuthorization(ctx context.Context, connection, account string) (authURL, state string, expires time.Time, err error) {
	c, az, err := b.authorizer(connection)
	if err != nil {
		return "", "", time.Time{}, err
	}
	if err := c.checkAccount(account); err != nil {
		return "", "", time.Time{}, err
	}
	buf := make([]byte, authStateRandomBytes)
	_, _ = rand.Read(buf) // never fails (crypto/rand, Go 1.24+)
	state = base64.RawURLEncoding.EncodeToString(buf)
	expires = b.now().Add(AuthStateTTL)
	verifier := oauth2.GenerateVerifier() // RFC 7636; used by providers with PKCE on
	rec, _ := json.Marshal(authStateRecord{V: 1, Conn: c.Name, Account: account, Exp: expires.UnixMilli(), Verifier: verifier})
	ok, err := b.store.SetNX(ctx, authStateKey(state), rec, AuthStateTTL)
	switch {
	case err != nil:
		return "", "", time.Time{}, fmt.Errorf("%w: store authorization state: %w", ErrStore, err)
	case !ok:
		return "", "", time.Time{}, fmt.Errorf("%w: authorization state collision", ErrStore)
	}
	b.log.InfoContext(ctx, "authorization started", "connection", c.Name, "account", account, "state_expires_at", expires.UTC())
	return az.AuthCodeURL(state, verifier), state, expires, nil
}

// CompleteAuthorization redeems code, which the upstream returned with
// state, for connection: see HandleAuthorizationResponse.
func (b *Broker) CompleteAuthorization(ctx context.Context, connection, account, code, state string) error {
	c, err := b.connection(connection)
	if err != nil {
		return err
	}
	if err := c.checkAccount(account); err != nil {
		return err
	}
	_, err = b.HandleAuthorizationResponse(ctx, AuthorizationResponse{Connection: connection, Account: account, Code: code, State: state})
	return err
}

// HandleAuthorizationResponse finishes the authorization r answers and
// returns the connection its state was bound to.
//
// The state must be one StartAuthorization issued, not expired, not used,
// and bound to r.Connection when that is set; otherwise the error wraps
// ErrInvalidState, nothing is sent upstream, and the connection is "". A
// state bound to another connection is left for its own completion; any
// other use consumes it. An upstream error (access_denied) comes back as a
// *providers.OAuthError under providers.ErrRejected. On approval the code is
// redeemed once: the grant is stored durably and its token cached before
// this returns. Repeating a completion with the same state and code (or
// error) returns the first outcome without calling the upstream again.
func (b *Broker) HandleAuthorizationResponse(ctx context.Context, r AuthorizationResponse) (string, error) {
	if err := r.check(); err != nil {
		return "", err
	}
	if r.Connection != "" {
		if _, _, err := b.authorizer(r.Connection); err != nil {
			return "", err
		}
	}
	key := authResultKey(r)
	pendingTTL := b.fetchTimeout + 30*time.Second
	pending, _ := json.Marshal(authResultRecord{V: 1, Pending: true})
	deadline := time.Now().Add(pendingTTL) // a real wait, not a token's clock
	wait := authPollInitial
	for {
		won, err := b.store.SetNX(ctx, key, pending, pendingTTL)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrStore, err)
		}
		if won {
			// This call owns the completion: it must finish, and record
			// the outcome, even if its caller goes away.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
			defer cancel()
			return b.complete(cctx, r, key)
		}
		raw, err := b.store.Get(ctx, key)
		switch {
		case errors.Is(err, cache.ErrNotFound):
			// The owner gave up without spending anything: try to own it.
		case err != nil:
			return "", fmt.Errorf("%w: %w", ErrStore, err)
		default:
			var rec authResultRecord
			if err := json.Unmarshal(raw, &rec); err != nil || rec.V != 1 {
				return "", fmt.Errorf("%w: authorization outcome unreadable", ErrStore)
			}
			if !rec.Pending {
				if r.Connection != "" && rec.Conn != r.Connection {
					return "", fmt.Errorf("%w: it was issued for another connection", ErrInvalidState)
				}
				return rec.Conn, rec.err()
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%w: a concurrent completion of this authorization did not finish", context.DeadlineExceeded)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, authPollMax)
	}
}

// complete runs the completion this call owns, under the pending marker at
// key, and records its outcome there.
func (b *Broker) complete(ctx context.Context, r AuthorizationResponse, key string) (string, error) {
	name, account, verifier, err := b.consumeState(ctx, r)
	if err != nil {
		// Nothing was spent: drop the marker so it answers for nothing.
		if derr := b.store.Delete(ctx, key); derr != nil {
			b.log.WarnContext(ctx, "could not drop an authorization marker", "err", derr)
		}
		return "", err
	}
	c := b.conns[name] // consumeState checked it exists
	outcome := b.redeem(ctx, c, account, r, verifier)
	if outcome != nil {
		b.log.WarnContext(ctx, "authorization failed", "connection", name, "err", outcome)
	}
	if err := b.store.Set(ctx, key, encodeAuthResult(name, outcome), authResultTTL); err != nil {
		// Repeats now see neither the marker's outcome nor the state:
		// they are refused, which is safe.
		b.log.WarnContext(ctx, "could not record an authorization outcome", "connection", name, "err", err)
	}
	return name, outcome
}

// consumeState checks r's state and removes it, returning its connection,
// account and the PKCE code verifier kept with it. A state bound to another
// connection or account than r names (when it names one) is kept.
func (b *Broker) consumeState(ctx context.Context, r AuthorizationResponse) (connection, account, verifier string, err error) {
	key := authStateKey(r.State)
	raw, err := b.store.Get(ctx, key)
	if errors.Is(err, cache.ErrNotFound) {
		return "", "", "", fmt.Errorf("%w: unknown, expired or already used; start the authorization again", ErrInvalidState)
	}
	if err != nil {
		return "", "", "", fmt.Errorf("%w: %w", ErrStore, err)
	}
	var rec authStateRecord
	if err := json.Unmarshal(raw, &rec); err != nil || rec.V != 1 {
		return "", "", "", fmt.Errorf("%w: authorization state unreadable", ErrStore)
	}
	if r.Connection != "" && (rec.Conn != r.Connection || rec.Account != r.Account) {
		return "", "", "", fmt.Errorf("%w: it was issued for another connection or account", ErrInvalidState)
	}
	if _, err := b.store.GetDel(ctx, key); errors.Is(err, cache.ErrNotFound) {
		return "", "", "", fmt.Errorf("%w: already used; start the authorization again", ErrInvalidState)
	} else if err != nil {
		return "", "", "", fmt.Errorf("%w: %w", ErrStore, err)
	}
	if !b.now().Before(time.UnixMilli(rec.Exp)) {
		return "", "", "", fmt.Errorf("%w: expired; start the authorization again", ErrInvalidState)
	}
	if _, _, err := b.authorizer(rec.Conn); err != nil {
		return "", "", "", fmt.Errorf("%w: bound to a connection that is no longer configured", ErrInvalidState)
	}
	return rec.Conn, rec.Account, rec.Verifier, nil
}

// redeem handles the upstream's answer for (c, account): an error, or a
// code to exchange. On success the new grant replaces the old one whole
// (see replaceGrant).
func (b *Broker) redeem(ctx context.Context, c *conn, account string, r AuthorizationResponse, verifier string) error {
	if r.Error != "" {
		return fmt.Errorf("authorization of %q not granted: %w", c.Name,
			&providers.OAuthError{Code: r.Error, Description: r.ErrorDescription})
	}
	return b.replaceGrant(ctx, c, account, "authorization completed", func(ctx context.Context) (*providers.Token, error) {
		return c.authorizer.Exchange(ctx, r.Code, verifier)
	})
}

// replaceGrant obtains a new grant for (c, account) with get and stores it
// in place of the old one, whole, under the account's lease (waiting for a
// refresh in flight on another replica), in one fenced write with the token
// that came with it (none when get returns no access token: the first
// GetToken refreshes); every token obtained from the old grant is deleted,
// and other replicas drop their L1 copies by announcement. get runs only
// once the lease is held, so nothing single-use is spent before.
func (b *Broker) replaceGrant(ctx context.Context, c *conn, account, what string, get func(context.Context) (*providers.Token, error)) error {
	var lease cache.Lease
	var values [][]byte
	if err := b.waitForLease(ctx, c, lockName(c, account, ""), []string{grantKey(c.Name, account)}, nil, &lease, &values); err != nil {
		// Nothing spent yet: the person can retry with a new authorization.
		return fmt.Errorf("%w: take the account's lease: %w", ErrStore, err)
	}
	_, old, _ := b.decodeGrant(c, values[0]) // an unreadable old grant is replaced all the same
	stopRenewing := b.keepRenewed(ctx, c, lease)
	defer stopRenewing()
	start := b.now()
	t, err := get(ctx)
	withToken := err == nil && !t.AccessToken.IsZero()
	if withToken && !t.Expiry.After(b.now()) {
		err = fmt.Errorf("%w: token expired on arrival (expiry %s)", providers.ErrInvalidResponse, t.Expiry.UTC().Format(time.RFC3339))
	}
	stopRenewing()
	if err != nil {
		_ = lease.Release(ctx)
		return err
	}
	now := b.now()
	if t.Grant == nil {
		t.Grant = &providers.Grant{Scopes: t.Scopes}
	}
	g := b.merge(c, account, nil, t)
	tok := &Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: t.Expiry, Scopes: t.Scopes}
	skew := min(c.Skew, t.Expiry.Sub(start)/2)
	fresh := t.Expiry.Add(-skew)
	// Served to callers asking for the default scopes, and for exactly the
	// granted ones.
	keys := []string{tokenKey(c.Name, account, c.defaultScopes)}
	if scopes, err := normalizeScopes(t.Scopes); err == nil && len(scopes) > 0 {
		keys = append(keys, tokenKey(c.Name, account, scopes))
	}
	var writes []cache.Write
	for _, k := range old.keys {
		if !slices.Contains(keys, k) {
			writes = append(writes, cache.Write{Key: k, Delete: true})
		}
	}
	m := grantMeta{}
	if withToken {
		m.tokenExpiry = t.Expiry
	}
	for _, k := range keys {
		m.addKey(k)
		if ttl := fresh.Sub(now); withToken && ttl > 0 {
			writes = append(writes, cache.Write{Key: k, Value: encodeToken(tok, fresh, c.subjectOf(account)), TTL: ttl})
		} else {
			writes = append(writes, cache.Write{Key: k, Delete: true})
		}
	}
	writes = append(writes, b.grantWrite(c, account, g, m)...)
	if err := b.commit(ctx, c, lease, writes); err != nil {
		return err
	}
	b.announceAccount(ctx, c, account)
	b.indexAccount(ctx, c, account)
	b.markState(ctx, c, account, StateReady)
	b.schedule(ctx, c, account, g)
	if withToken {
		c.served(t.Expiry, t.Expiry.Sub(start))
	}
	b.log.InfoContext(ctx, what, "connection", c.Name, "account", account, "scopes", t.Scopes,
		"refreshable", !g.RefreshToken.IsZero(), "with_token", withToken)
	return nil
}

// authorizer returns the connection and its Authorizer.
func (b *Broker) authorizer(name string) (*conn, providers.Authorizer, error) {
	c, err := b.connection(name)
	if err != nil {
		return nil, nil, err
	}
	az, ok := c.Provider.(providers.Authorizer)
	if !ok {
		return nil, nil, fmt.Errorf("%w: connection %q (type %s) has no authorization code grant",
			providers.ErrNotSupported, c.Name, c.Type)
	}
	return c, az, nil
}

func (r *AuthorizationResponse) check() error {
	switch {
	case r.State == "":
		return fmt.Errorf("%w: state is required", ErrInvalidArgument)
	case len(r.State) > MaxStateLength:
		return fmt.Errorf("%w: longer than any state this broker issues", ErrInvalidState)
	case r.Code == "" && r.Error == "":
		return fmt.Errorf("%w: code is required", ErrInvalidArgument)
	case r.Code != "" && r.Error != "":
		return fmt.Errorf("%w: code and error are mutually exclusive", ErrInvalidArgument)
	case len(r.Code) > MaxCodeLength:
		return fmt.Errorf("%w: code: longer than %d bytes", ErrInvalidArgument, MaxCodeLength)
	case len(r.Error) > maxErrorCodeLength:
		return fmt.Errorf("%w: error: longer than %d bytes", ErrInvalidArgument, maxErrorCodeLength)
	}
	// RFC 6749 §4.1.2.1: error = 1*( %x20-21 / %x23-5B / %x5D-7E ).
	for i := 0; i < len(r.Error); i++ {
		if ch := r.Error[i]; ch < 0x20 || ch == '"' || ch == '\\' || ch > 0x7e {
			return fmt.Errorf("%w: error: invalid character at byte %d", ErrInvalidArgument, i)
		}
	}
	// The description only goes into messages: keep printable ASCII.
	d := strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, r.ErrorDescription)
	r.ErrorDescription = d[:min(len(d), maxErrorDescLength)]
	return nil
}

// authStateKey stores a state under its hash: someone who can read the
// store's key names must not learn a live state and finish the
// authorization with a code of their own.
func authStateKey(state string) string {
	sum := sha256.Sum256([]byte(state))
	return "authstate:" + hex.EncodeToString(sum[:])
}

// authResultKey names the outcome of one (state, code or error) answer. The
// hash keeps the code out of the key.
func authResultKey(r AuthorizationResponse) string {
	h := sha256.Sum256([]byte(r.State + "\x00" + r.Code + "\x00" + r.Error))
	return "authresult:" + hex.EncodeToString(h[:])
}

type authStateRecord struct {
	V    int    `json:"v"`
	Conn string `json:"conn"`
	// Account the authorization is for ("" the default).
	Account string `json:"acct,omitempty"`
	Exp     int64  `json:"exp"` // Unix ms
	// Verifier is the RFC 7636 code verifier made for this authorization.
	Verifier string `json:"pv,omitempty"`
}

// authResultRecord is a completion's outcome, or a marker that it is
// running. An error is kept as its message and the sentinels it matched, so
// a repeat gets an error that maps to the same status.
type authResultRecord struct {
	V       int          `json:"v"`
	Pending bool         `json:"pending,omitempty"`
	Conn    string       `json:"conn,omitempty"`
	Err     string       `json:"err,omitempty"`
	Kinds   []string     `json:"kinds,omitempty"`
	OAuth   *oauthRecord `json:"oauth,omitempty"`
}

type oauthRecord struct {
	Code   string `json:"code"`
	Desc   string `json:"desc,omitempty"`
	Status int    `json:"status,omitempty"`
}

// outcomeKinds are the sentinels an outcome's error is matched against.
var outcomeKinds = []struct {
	name string
	err  error
}{
	{"invalid_argument", ErrInvalidArgument},
	{"invalid_state", ErrInvalidState},
	{"store", ErrStore},
	{"rejected", providers.ErrRejected},
	{"unavailable", providers.ErrUnavailable},
	{"invalid_response", providers.ErrInvalidResponse},
	{"needs_authorization", providers.ErrNeedsAuthorization},
	{"revoked", providers.ErrRevoked},
	{"not_supported", providers.ErrNotSupported},
	{"deadline", context.DeadlineExceeded},
	{"canceled", context.Canceled},
}

func encodeAuthResult(conn string, err error) []byte {
	rec := authResultRecord{V: 1, Conn: conn}
	if err != nil {
		rec.Err = err.Error()
		for _, k := range outcomeKinds {
			if errors.Is(err, k.err) {
				rec.Kinds = append(rec.Kinds, k.name)
			}
		}
		var oe *providers.OAuthError
		if errors.As(err, &oe) {
			rec.OAuth = &oauthRecord{Code: oe.Code, Desc: oe.Description, Status: oe.HTTPStatus}
		}
	}
	raw, _ := json.Marshal(rec)
	return raw
}

func (r *authResultRecord) err() error {
	if r.Err == "" {
		return nil
	}
	e := &storedError{msg: r.Err}
	for _, k := range outcomeKinds {
		if slices.Contains(r.Kinds, k.name) {
			e.kinds = append(e.kinds, k.err)
		}
	}
	if r.OAuth != nil {
		e.kinds = append(e.kinds, &providers.OAuthError{Code: r.OAuth.Code, Description: r.OAuth.Desc, HTTPStatus: r.OAuth.Status})
	}
	return e
}

// storedError is a recorded outcome: the first completion's message, and
// the sentinels (and *providers.OAuthError) it matched.
type storedError struct {
	msg   string
	kinds []error
}

func (e *storedError) Error() string   { return e.msg }
func (e *storedError) Unwrap() []error { return e.kinds }
