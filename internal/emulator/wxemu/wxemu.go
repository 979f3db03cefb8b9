// Package wxemu emulates the WX Network gateway token endpoint,
// `POST /v1/oauth2/token` (PROTOCOLS.md §1): the signed password grant
// (RFC 6749 §4.3) and the refresh token grant (RFC 6749 §6). Tests and the
// broker's -demo mode use it instead of the real gateway.
//
// It checks what it receives as strictly as the gateway is documented to:
//
//   - method POST (else 405) and Content-Type
//     application/x-www-form-urlencoded (else 400 invalid_request); no query
//     parameters, no repeated and no unknown form fields (400
//     invalid_request);
//   - grant_type password or refresh_token (else 400
//     unsupported_grant_type);
//   - client_id equal to Options.ClientID (else 401 invalid_client);
//   - scope equal to "general" (else 400 invalid_scope);
//   - password grant: username a base58 public key and password
//     "<expiry>:<base58 signature>", where the signature verifies with
//     wavescrypto.Verify over wavescrypto.TokenMessage(Options.Chain,
//     client_id, expiry), and the expiry is in the future and at most
//     Options.MaxLifetime (a week) ahead; anything else is 400 invalid_grant;
//   - refresh grant: a refresh token this server issued to client_id, not
//     expired, not revoked and, with rotation on, not already replaced
//     (else 400 invalid_grant). Presenting a replaced one is counted, see
//     ReusedRefreshTokens.
//
// A success is {"access_token", "token_type": "bearer", "expires_in",
// "refresh_token", "scope": "general"}. Both tokens are JWT-shaped
// (base64url header.payload.signature, the signature random bytes, not a real
// RS256 signature): the access token's exp claim is the signed expiry for a
// password grant, and now plus that grant's lifetime for a refresh; the
// refresh token's exp is now plus the refresh-token lifetime (30 days by
// default). expires_in is the absolute expiry in Unix seconds, as the
// documents say, or the seconds left, as the gateway was seen to send: see
// SetExpiresIn.
//
// IssueAppTokens hands out a token pair the way the WX Network app does
// ("Get Access Token in WX Network App" in specs/): an access token and its
// refresh token for an address, without a signed password grant. The
// refresh token is then redeemed at the token endpoint like any other, with
// rotation when it is on. AddressOf maps an access token back to its
// address.
//
// All methods of a Server are safe for concurrent use.
package wxemu

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mr-tron/base58"

	"github.com/tokenbroker/tokenbroker/internal/wavescrypto"
)

// TokenPath is the path of the token endpoint.
const TokenPath = "/v1/oauth2/token"

// Defaults used for zero Options fields.
const (
	DefaultChain           = 'W'
	DefaultMaxLifetime     = 7 * 24 * time.Hour
	DefaultRefreshLifetime = 30 * 24 * time.Hour
)

// Grant types, as sent in grant_type and counted by Count.
const (
	GrantPassword     = "password"
	GrantRefreshToken = "refresh_token"
)

// scope is the only scope the gateway knows.
const scope = "general"

// maxBody bounds a token request body.
const maxBody = 64 << 10

// maxRefreshTokens bounds the refresh tokens remembered; expired ones are
// dropped first when it is reached.
const maxRefreshTokens = 1 << 16

// Options configure a Server.
type Options struct {
	// ClientID is the only client_id accepted. With an empty ClientID every
	// request fails with invalid_client.
	ClientID string
	// Chain is the network byte signed messages must carry; 0 means 'W'.
	Chain byte
	// MaxLifetime is how far ahead a signed expiry may lie; 0 means a week.
	MaxLifetime time.Duration
	// RefreshLifetime of issued refresh tokens; 0 means 30 days.
	RefreshLifetime time.Duration
	// Rotation, when on, issues a new refresh token on every refresh and
	// retires the one presented. See SetRotation.
	Rotation bool
	// ExpiresIn is the initial expires_in form (the zero value: absolute).
	ExpiresIn ExpiresIn
	// Now reads the clock; nil means time.Now.
	Now func() time.Time
}

// ExpiresIn says how a Server writes expires_in.
type ExpiresIn int

const (
	// Absolute: the expiry in Unix seconds, as the documents say.
	Absolute ExpiresIn = iota
	// Relative: the whole seconds left, as the gateway was seen to send.
	Relative
	// Omitted: no expires_in; only the access token's exp tells.
	Omitted
)

func (e ExpiresIn) String() string {
	switch e {
	case Absolute:
		return "Absolute"
	case Relative:
		return "Relative"
	case Omitted:
		return "Omitted"
	}
	return "ExpiresIn(" + strconv.Itoa(int(e)) + ")"
}

// A Failure makes the server misbehave on purpose; see SetFailure. The zero
// Failure is None.
type Failure int

const (
	// None: answer normally.
	None Failure = iota
	// InvalidClient: 401 invalid_client, whatever the request.
	InvalidClient
	// ServerError: 500 with {"error": "server_error"}.
	ServerError
)

func (f Failure) String() string {
	switch f {
	case None:
		return "None"
	case InvalidClient:
		return "InvalidClient"
	case ServerError:
		return "ServerError"
	}
	return "Failure(" + strconv.Itoa(int(f)) + ")"
}

// A Server is the emulated gateway; it is an http.Handler.
type Server struct {
	clientID    string
	chain       byte
	maxLifetime time.Duration
	now         func() time.Time

	mu              sync.Mutex
	refreshLifetime time.Duration
	rotation        bool
	expiresIn       ExpiresIn
	failure         Failure
	jwtOffset       time.Duration
	expiresInOffset time.Duration
	opaque          bool
	counts          map[string]int
	issued          map[string]int
	reused          int
	refresh         map[string]*refreshToken
	access          map[string]issuedAccess
}

type issuedAccess struct {
	expiry  time.Time
	address string
}

// account is what a password grant established and its refresh tokens carry.
type account struct {
	clientID  string
	publicKey string
	address   string
	// lifetime of the access token the password grant signed for; refreshed
	// access tokens live as long.
	lifetime time.Duration
}

type refreshToken struct {
	acct    *account
	expiry  time.Time
	retired bool // replaced by rotation
	revoked bool
}

// New returns a Server configured by opts.
func New(opts Options) *Server {
	s := &Server{
		clientID:        opts.ClientID,
		chain:           opts.Chain,
		maxLifetime:     opts.MaxLifetime,
		now:             opts.Now,
		refreshLifetime: opts.RefreshLifetime,
		rotation:        opts.Rotation,
		expiresIn:       opts.ExpiresIn,
		counts:          make(map[string]int),
		issued:          make(map[string]int),
		refresh:         make(map[string]*refreshToken),
		access:          make(map[string]issuedAccess),
	}
	if s.chain == 0 {
		s.chain = DefaultChain
	}
	if s.maxLifetime <= 0 {
		s.maxLifetime = DefaultMaxLifetime
	}
	if s.refreshLifetime <= 0 {
		s.refreshLifetime = DefaultRefreshLifetime
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// SetRotation turns refresh-token rotation on or off. With it off, a refresh
// answers with the refresh token it was given.
func (s *Server) SetRotation(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotation = on
}

// SetExpiresIn changes how expires_in is written from now on.
func (s *Server) SetExpiresIn(e ExpiresIn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expiresIn = e
}

// SetRefreshLifetime changes the lifetime of refresh tokens issued from now
// on; d <= 0 restores DefaultRefreshLifetime.
func (s *Server) SetRefreshLifetime(d time.Duration) {
	if d <= 0 {
		d = DefaultRefreshLifetime
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshLifetime = d
}

// RevokeRefreshTokens revokes every refresh token issued so far: the next
// refresh with any of them gets 400 invalid_grant.
func (s *Server) RevokeRefreshTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rt := range s.refresh {
		rt.revoked = true
	}
}

// SetFailure makes every following request fail as f says (None restores
// normal answers). Failed requests are still counted.
func (s *Server) SetFailure(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failure = f
}

// SetExpiryOffsets makes the server lie about expiries from now on: the
// access token's exp claim is moved by jwtExp and expires_in by expiresIn
// from the true expiry (zero offsets restore honest answers). For testing
// how clients cross-check the two.
func (s *Server) SetExpiryOffsets(jwtExp, expiresIn time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jwtOffset, s.expiresInOffset = jwtExp, expiresIn
}

// SetOpaqueAccessTokens makes access tokens random strings rather than JWTs
// when on, so only expires_in tells their expiry.
func (s *Server) SetOpaqueAccessTokens(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opaque = on
}

// Count returns how many requests with this grant_type reached the token
// endpoint, rejected ones included.
func (s *Server) Count(grantType string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[grantType]
}

// Issued returns how many tokens were issued by grants of this type.
func (s *Server) Issued(grantType string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued[grantType]
}

// ReusedRefreshTokens returns how many refresh requests presented a refresh
// token that rotation had already replaced: a client that loses the new one
// (or stores it too late) shows up here.
func (s *Server) ReusedRefreshTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reused
}

// Valid reports whether accessToken was issued by s and has not expired.
func (s *Server) Valid(accessToken string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.access[accessToken]
	return ok && s.now().Before(a.expiry)
}

// AddressOf returns the address an access token s issued acts for, even
// after it expired; "" for a token s did not issue (or has forgotten).
func (s *Server) AddressOf(accessToken string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.access[accessToken].address
}

// GrantApp counts the token pairs IssueAppTokens handed out, for Issued.
const GrantApp = "app"

// AppTokens are what the WX Network app shows its user.
type AppTokens struct {
	AccessToken  string
	RefreshToken string
	// Expiry of the access token.
	Expiry time.Time
}

// IssueAppTokens issues a token pair for address as the WX Network app
// does, to client_id Options.ClientID. The access token lives lifetime (at
// most Options.MaxLifetime; 0 means that maximum), the refresh token the
// refresh-token lifetime. The address is taken as given: the app has
// checked the user's key.
func (s *Server) IssueAppTokens(address string, lifetime time.Duration) AppTokens {
	if lifetime <= 0 || lifetime > s.maxLifetime {
		lifetime = s.maxLifetime
	}
	acct := &account{clientID: s.clientID, publicKey: address, address: address, lifetime: lifetime}
	exp := s.now().Add(lifetime)
	resp := s.mint(GrantApp, acct, exp, "")
	return AppTokens{AccessToken: resp["access_token"].(string), RefreshToken: resp["refresh_token"].(string), Expiry: exp}
}

// ServeHTTP answers token requests at TokenPath and 404 elsewhere.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != TokenPath {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "method must be POST")
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		writeError(w, http.StatusBadRequest, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
		return
	}
	if r.URL.RawQuery != "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "parameters must be sent in the request body, not the URL")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "malformed form body")
		return
	}
	form := r.PostForm
	for k, vs := range form {
		if len(vs) > 1 {
			writeError(w, http.StatusBadRequest, "invalid_request", "parameter "+strconv.Quote(k)+" sent more than once")
			return
		}
	}
	grantType := form.Get("grant_type")

	s.mu.Lock()
	switch grantType {
	case GrantPassword, GrantRefreshToken:
		s.counts[grantType]++
	}
	failure := s.failure
	s.mu.Unlock()

	switch failure {
	case InvalidClient:
		writeError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	case ServerError:
		writeError(w, http.StatusInternalServerError, "server_error", "the server failed to handle the request")
		return
	}

	var allowed []string
	switch grantType {
	case "":
		writeError(w, http.StatusBadRequest, "invalid_request", "missing grant_type")
		return
	case GrantPassword:
		allowed = []string{"grant_type", "scope", "client_id", "username", "password"}
	case GrantRefreshToken:
		allowed = []string{"grant_type", "scope", "client_id", "refresh_token"}
	default:
		writeError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be password or refresh_token")
		return
	}
	for _, k := range allowed {
		if _, ok := form[k]; !ok {
			writeError(w, http.StatusBadRequest, "invalid_request", "missing parameter "+strconv.Quote(k))
			return
		}
	}
	for k := range form {
		if !slices.Contains(allowed, k) {
			writeError(w, http.StatusBadRequest, "invalid_request", "unsupported parameter "+strconv.Quote(k))
			return
		}
	}
	clientID := form.Get("client_id")
	if s.clientID == "" || clientID != s.clientID {
		writeError(w, http.StatusUnauthorized, "invalid_client", "unknown client_id")
		return
	}
	if form.Get("scope") != scope {
		writeError(w, http.StatusBadRequest, "invalid_scope", "scope must be "+strconv.Quote(scope))
		return
	}

	if grantType == GrantPassword {
		s.passwordGrant(w, clientID, form.Get("username"), form.Get("password"))
	} else {
		s.refreshGrant(w, clientID, form.Get("refresh_token"))
	}
}

func (s *Server) passwordGrant(w http.ResponseWriter, clientID, username, password string) {
	pk, err := wavescrypto.ParsePublicKey(username)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_grant", "username is not a base58 public key")
		return
	}
	expText, sigText, ok := strings.Cut(password, ":")
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_grant", "password must be <expiry>:<signature>")
		return
	}
	expiry, err := strconv.ParseInt(expText, 10, 64)
	if err != nil || expiry <= 0 {
		writeError(w, http.StatusBadRequest, "invalid_grant", "password expiry is not a Unix time")
		return
	}
	sig, err := base58.Decode(sigText)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_grant", "password signature is not base58")
		return
	}
	now := s.now()
	exp := time.Unix(expiry, 0)
	switch {
	case !exp.After(now):
		writeError(w, http.StatusBadRequest, "invalid_grant", "the signed expiry is in the past")
		return
	case exp.After(now.Add(s.maxLifetime)):
		writeError(w, http.StatusBadRequest, "invalid_grant",
			fmt.Sprintf("the signed expiry is more than %v ahead", s.maxLifetime))
		return
	}
	if !wavescrypto.Verify(pk, wavescrypto.TokenMessage(s.chain, clientID, expiry), sig) {
		writeError(w, http.StatusBadRequest, "invalid_grant", "the signature does not verify (wrong key, chain, client_id or expiry)")
		return
	}
	acct := &account{
		clientID:  clientID,
		publicKey: pk.String(),
		address:   wavescrypto.NewAddress(pk, s.chain).String(),
		lifetime:  exp.Sub(now),
	}
	s.issue(w, GrantPassword, acct, exp, "")
}

func (s *Server) refreshGrant(w http.ResponseWriter, clientID, token string) {
	s.mu.Lock()
	rt, ok := s.refresh[token]
	now := s.now()
	var problem string
	switch {
	case !ok:
		problem = "unknown refresh token"
	case rt.retired:
		s.reused++
		problem = "the refresh token has already been used"
	case rt.revoked:
		problem = "the refresh token has been revoked"
	case !now.Before(rt.expiry):
		problem = "the refresh token has expired"
	case rt.acct.clientID != clientID:
		problem = "the refresh token was issued to another client"
	}
	rotation := s.rotation
	if problem == "" && rotation {
		rt.retired = true
	}
	s.mu.Unlock()
	if problem != "" {
		writeError(w, http.StatusBadRequest, "invalid_grant", problem)
		return
	}
	keep := token
	if rotation {
		keep = ""
	}
	s.issue(w, GrantRefreshToken, rt.acct, now.Add(rt.acct.lifetime), keep)
}

// issue writes a token response for acct with an access token expiring at
// exp, and a new refresh token unless keep names the one to send back.
func (s *Server) issue(w http.ResponseWriter, grantType string, acct *account, exp time.Time, keep string) {
	writeJSON(w, http.StatusOK, s.mint(grantType, acct, exp, keep))
}

// mint issues the tokens issue writes and returns the response.
func (s *Server) mint(grantType string, acct *account, exp time.Time, keep string) map[string]any {
	s.mu.Lock()
	now := s.now()
	jwtExp := exp.Add(s.jwtOffset)
	expiresAt := exp.Add(s.expiresInOffset)
	mode, opaque := s.expiresIn, s.opaque
	refreshExp := now.Add(s.refreshLifetime)
	s.mu.Unlock()

	var access string
	if opaque {
		access = randomText(32)
	} else {
		access = jwt(map[string]any{
			"sub":       acct.publicKey,
			"address":   acct.address,
			"client_id": acct.clientID,
			"scope":     scope,
			"iat":       now.Unix(),
			"exp":       jwtExp.Unix(),
			"jti":       randomText(12),
		})
	}
	refresh := keep
	if refresh == "" {
		refresh = jwt(map[string]any{
			"sub":       acct.publicKey,
			"client_id": acct.clientID,
			"iat":       now.Unix(),
			"exp":       refreshExp.Unix(),
			"jti":       randomText(12),
			"typ":       "refresh",
		})
	}

	s.mu.Lock()
	s.prune(now)
	s.access[access] = issuedAccess{expiry: exp, address: acct.address}
	if keep == "" {
		s.refresh[refresh] = &refreshToken{acct: acct, expiry: refreshExp}
	}
	s.issued[grantType]++
	s.mu.Unlock()

	resp := map[string]any{
		"access_token":  access,
		"token_type":    "bearer",
		"refresh_token": refresh,
		"scope":         scope,
	}
	switch mode {
	case Absolute:
		resp["expires_in"] = expiresAt.Unix()
	case Relative:
		resp["expires_in"] = max(int64(expiresAt.Sub(now)/time.Second), 0)
	}
	return resp
}

// prune drops expired tokens once the maps are large. Called with s.mu held.
func (s *Server) prune(now time.Time) {
	if len(s.refresh) >= maxRefreshTokens {
		for t, rt := range s.refresh {
			if !now.Before(rt.expiry) {
				delete(s.refresh, t)
			}
		}
	}
	if len(s.access) >= maxRefreshTokens {
		for t, a := range s.access {
			if !now.Before(a.expiry) {
				delete(s.access, t)
			}
		}
	}
}

// jwt returns a JWT-shaped token with the given claims. The signature part is
// random bytes: clients cannot verify the gateway's RS256 signature anyway.
func jwt(claims map[string]any) string {
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`))
	payload, _ := json.Marshal(claims)
	return header + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + randomText(64)
}

func randomText(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}
