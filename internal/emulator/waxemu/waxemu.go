// Package waxemu emulates WAX All Access, an OAuth 2.0 authorization server
// with the authorization code grant (RFC 6749 §4.1) and HTTP Basic client
// authentication (PROTOCOLS.md §2). Tests and the broker's -demo mode use it
// instead of the real upstream.
//
// Endpoints:
//
//   - GET /v1/authorize: checks client_id, response_type=code, a non-empty
//     state, the scope (space-separated, each allowed; default
//     identity_basic) and duration; a redirect_uri parameter is refused (WAX
//     fixes it at registration). Then, without asking anybody, it approves
//     or denies as SetApprove says and answers 302 to the registered
//     redirect URL with code and state, or error=access_denied and state.
//   - POST /v1/access_token: form body, HTTP Basic with the raw
//     "client_id:secret" (no form-decoding, as WAX does). grant_type
//     authorization_code redeems a single-use code (a reused, unknown or
//     expired code is 400 invalid_grant); refresh_token redeems a refresh
//     token. Tokens live 1800 s; a refresh token comes only when the code was
//     issued with duration=permanent, and is replaced on each refresh when
//     rotation is on.
//   - POST /v1/revoke_token: revokes a refresh token, authenticated as the
//     token endpoint is. It takes WAX's form, token_type=refresh&token=<rt>,
//     or RFC 7009's, token=<t> with an optional token_type_hint
//     (refresh_token or access_token). Revoking a refresh token ends its
//     grant and every access token issued from it (RFC 7009 §2.1); an
//     unknown or already revoked token is answered 200 all the same
//     (RFC 7009 §2.2). Revocations are counted and Revoked tells which
//     refresh tokens went.
//
// The emulator approves on behalf of a person: the one named by the
// authorization URL's login_hint parameter (OpenID Connect's name for it;
// WAX ignores it), else the one SetUser named, else DefaultUser. Each code,
// grant and token belongs to that person, and UserOf maps an access token
// back to them, so a test can tell alice's token from bob's.
//
// With a refresh-token lifetime (Options.RefreshTokenLifetime,
// SetRefreshTokenLifetime) a grant's refresh token dies when it has not been
// used for that long: every token response of a permanent grant carries
// refresh_token_expires_in, each refresh restarts the lifetime, and a
// refresh after it is 400 invalid_grant.
//
// A client with a secret (Options.ClientSecret) must send it on every token
// request. A public client (no ClientSecret) sends a device secret instead:
// the one that redeemed a code is remembered with the grant, and every
// refresh of that grant must send the same one (else 401 invalid_client,
// counted in Counts.DeviceSecretMismatches).
//
// A public client (Options.PublicClient; RFC 6749 §2.1, RFC 8252), which
// WAX itself does not have, keeps no secret of any kind: it sends client_id
// in the form body and no Authorization header, and PKCE S256 is required.
// With it the server stands in for a generic authorization server.
//
// All methods of a Server are safe for concurrent use.
package waxemu

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Paths of the endpoints.
const (
	AuthorizePath = "/v1/authorize"
	TokenPath     = "/v1/access_token"
	RevokePath    = "/v1/revoke_token"
)

// Lifetimes.
const (
	TokenLifetime = 1800 * time.Second
	CodeLifetime  = 10 * time.Minute
)

// DefaultScope is granted when the authorization URL names none.
const DefaultScope = "identity_basic"

// DefaultUser approves authorizations when neither login_hint nor SetUser
// names someone.
const DefaultUser = "user"

// DefaultAllowedScopes may be asked for when Options.AllowedScopes is empty.
func DefaultAllowedScopes() []string {
	return []string{"identity", "identity_basic", "items", "trades"}
}

// invalidGrantRefresh is the real service's description of a bad refresh token.
const invalidGrantRefresh = "Provided refresh token does not exist, has been revoked, or does not belong to this client"

const maxBody = 64 << 10

// Options configure a Server.
type Options struct {
	// ClientID is the only client accepted.
	ClientID string
	// ClientSecret is the secret of a secret-keeping client. Empty makes
	// the client public: it authenticates with a device secret per grant.
	ClientSecret string
	// RedirectURL is the registered redirect URI: where /v1/authorize sends
	// the browser. SetRedirectURL changes it.
	RedirectURL string
	// AllowedScopes a client may ask for; empty means DefaultAllowedScopes.
	AllowedScopes []string
	// PKCE makes the server require RFC 7636 with the S256 method, as a
	// generic authorization server may (WAX itself does not use PKCE): a
	// code_challenge on every authorization and the matching code_verifier
	// at the exchange. Without it, PKCE parameters are refused.
	PKCE bool
	// PublicClient makes the client public with no secret at all:
	// client_id in the body of every token and revocation request, no
	// Authorization header, and PKCE required (PKCE is implied).
	// ClientSecret must be empty.
	PublicClient bool
	// RefreshTokenLifetime is how long a refresh token lives unused; 0
	// means for ever, and no refresh_token_expires_in is sent.
	RefreshTokenLifetime time.Duration
	// Now reads the clock; nil means time.Now.
	Now func() time.Time
}

// Counts are what the server has seen since it started.
type Counts struct {
	// Authorize counts requests to /v1/authorize; Approved and Denied the
	// ones that redirected with a code or with access_denied.
	Authorize, Approved, Denied int
	// TokenRequests counts every request to /v1/access_token;
	// CodeExchanges and Refreshes those with grant_type
	// authorization_code and refresh_token, whatever their outcome.
	TokenRequests, CodeExchanges, Refreshes int
	// Issued counts access tokens issued.
	Issued int
	// ReusedCodes counts attempts to redeem a code a second time.
	ReusedCodes int
	// DeviceSecretMismatches counts refreshes whose device secret was not
	// the one that redeemed the grant's code.
	DeviceSecretMismatches int
	// InvalidClient counts 401 answers.
	InvalidClient int
	// InvalidGrant counts 400 invalid_grant answers.
	InvalidGrant int
	// PKCEFailures counts exchanges whose code_verifier was missing or did
	// not match the code's challenge.
	PKCEFailures int
	// RevokeRequests counts every request to /v1/revoke_token;
	// Revocations those that revoked a live refresh or access token.
	RevokeRequests, Revocations int
}

// A Server is the emulated WAX All Access; it is an http.Handler.
type Server struct {
	clientID, clientSecret string
	allowed                []string
	pkce                   bool
	public                 bool
	now                    func() time.Time

	mu          sync.Mutex
	redirectURL string
	deny        bool
	rotate      bool
	user        string
	rtLifetime  time.Duration
	counts      Counts
	codes       map[string]*code
	grants      map[string]*grant // refresh token → grant
	tokens      map[string]*access
	revoked     map[string]bool // refresh tokens revoked at /v1/revoke_token
	seen        []string        // every code, token and device secret, for leak checks
}

type code struct {
	scopes    string
	permanent bool
	expires   time.Time
	used      bool
	challenge string // RFC 7636 S256 code_challenge, with Options.PKCE
	user      string
}

type grant struct {
	scopes       string
	deviceSecret string // "" for a secret-keeping client
	// revoked: its refresh token was revoked, which ends its access tokens.
	revoked bool
	user    string
	// refreshExpires is when the refresh token dies unused; zero: never.
	refreshExpires time.Time
}

// access is an issued access token.
type access struct {
	expires time.Time
	grant   *grant
}

// New returns a Server configured by opts; it approves every authorization
// and does not rotate refresh tokens.
func New(opts Options) *Server {
	s := &Server{
		clientID:     opts.ClientID,
		clientSecret: opts.ClientSecret,
		allowed:      slices.Clone(opts.AllowedScopes),
		pkce:         opts.PKCE || opts.PublicClient,
		public:       opts.PublicClient,
		now:          opts.Now,
		redirectURL:  opts.RedirectURL,
		user:         DefaultUser,
		rtLifetime:   opts.RefreshTokenLifetime,
		codes:        map[string]*code{},
		grants:       map[string]*grant{},
		tokens:       map[string]*access{},
		revoked:      map[string]bool{},
	}
	if len(s.allowed) == 0 {
		s.allowed = DefaultAllowedScopes()
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// SetRedirectURL changes the registered redirect URI.
func (s *Server) SetRedirectURL(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.redirectURL = u
}

// SetUser names the person who approves authorizations that carry no
// login_hint; "" restores DefaultUser.
func (s *Server) SetUser(name string) {
	if name == "" {
		name = DefaultUser
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.user = name
}

// SetRefreshTokenLifetime changes the unused lifetime of refresh tokens from
// their next issue or use on; 0 means for ever.
func (s *Server) SetRefreshTokenLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rtLifetime = d
}

// UserOf returns the person an access token s issued was approved by, even
// after it expired or was revoked; "" for a token s did not issue (or has
// forgotten, long after it expired).
func (s *Server) UserOf(accessToken string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.tokens[accessToken]; ok {
		return a.grant.user
	}
	return ""
}

// SetApprove makes /v1/authorize approve (true, the default) or deny.
func (s *Server) SetApprove(approve bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deny = !approve
}

// SetRotate makes every refresh return a new refresh token and invalidate
// the old one (true), or keep the refresh token and send none (false, the
// default).
func (s *Server) SetRotate(rotate bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotate = rotate
}

// RevokeAll revokes every grant: their refresh tokens get invalid_grant.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.grants)
}

// Counts returns what the server has seen so far.
func (s *Server) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts
}

// Valid reports whether token is an access token s issued that has not
// expired.
func (s *Server) Valid(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.tokens[token]
	return ok && s.now().Before(a.expires) && !a.grant.revoked
}

// Revoked reports whether refreshToken was revoked at /v1/revoke_token.
func (s *Server) Revoked(refreshToken string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.revoked[refreshToken]
}

// Secrets returns every code, access token and refresh token issued and
// every device secret and PKCE verifier received, for tests that check
// none of them leaked.
func (s *Server) Secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

// ServeHTTP routes to the endpoints and answers 404 elsewhere.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case AuthorizePath:
		s.authorize(w, r)
	case TokenPath:
		s.token(w, r)
	case RevokePath:
		s.revoke(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.counts.Authorize++
	s.mu.Unlock()
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method must be GET", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	for k, vs := range q {
		if len(vs) > 1 {
			http.Error(w, "parameter "+strconv.Quote(k)+" sent more than once", http.StatusBadRequest)
			return
		}
	}
	switch {
	case q.Get("client_id") == "" || q.Get("client_id") != s.clientID:
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	case q.Get("response_type") != "code":
		http.Error(w, "response_type must be code", http.StatusBadRequest)
		return
	case q.Get("state") == "":
		http.Error(w, "state is required", http.StatusBadRequest)
		return
	case q.Has("redirect_uri"):
		http.Error(w, "redirect_uri is fixed at client registration and must not be sent", http.StatusBadRequest)
		return
	}
	scope := DefaultScope
	if q.Has("scope") {
		scope = q.Get("scope")
		if err := s.checkScope(scope); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	challenge := q.Get("code_challenge")
	switch {
	case !s.pkce && (q.Has("code_challenge") || q.Has("code_challenge_method")):
		http.Error(w, "PKCE is not supported by this server", http.StatusBadRequest)
		return
	case s.pkce && q.Get("code_challenge_method") != "S256":
		http.Error(w, "code_challenge_method must be S256", http.StatusBadRequest)
		return
	case s.pkce && !pkceChallenge.MatchString(challenge):
		http.Error(w, "code_challenge must be 43 base64url characters (RFC 7636 §4.2)", http.StatusBadRequest)
		return
	}
	permanent := false
	switch d := q.Get("duration"); d {
	case "permanent":
		permanent = true
	case "", "temporary":
	default:
		http.Error(w, "duration must be permanent or temporary", http.StatusBadRequest)
		return
	}

	s.mu.Lock()
	deny, target, user := s.deny, s.redirectURL, s.user
	s.mu.Unlock()
	if q.Has("login_hint") {
		user = q.Get("login_hint")
	}
	u, err := url.Parse(target)
	if target == "" || err != nil {
		http.Error(w, "the client has no usable redirect URL registered", http.StatusInternalServerError)
		return
	}
	back := u.Query()
	back.Set("state", q.Get("state"))
	if deny {
		back.Set("error", "access_denied")
		s.mu.Lock()
		s.counts.Denied++
		s.mu.Unlock()
	} else {
		c := random()
		s.mu.Lock()
		s.codes[c] = &code{scopes: scope, permanent: permanent, expires: s.now().Add(CodeLifetime), challenge: challenge, user: user}
		s.seen = append(s.seen, c)
		s.counts.Approved++
		s.mu.Unlock()
		back.Set("code", c)
	}
	u.RawQuery = back.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (s *Server) checkScope(scope string) error {
	if scope == "" {
		return errors.New("empty scope")
	}
	for _, sc := range strings.Split(scope, " ") {
		if sc == "" {
			return errors.New("malformed scope: scopes are separated by single spaces")
		}
		if !slices.Contains(s.allowed, sc) {
			return errors.New("scope " + strconv.Quote(sc) + " is not allowed")
		}
	}
	return nil
}

// parseForm reads a token or revoke request's form, or writes the error
// and returns false.
func (s *Server) parseForm(w http.ResponseWriter, r *http.Request) (url.Values, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "method must be POST")
		return nil, false
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		writeError(w, http.StatusBadRequest, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
		return nil, false
	}
	if r.URL.RawQuery != "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "parameters must be sent in the request body")
		return nil, false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "malformed form body")
		return nil, false
	}
	for k, vs := range r.PostForm {
		if len(vs) > 1 {
			writeError(w, http.StatusBadRequest, "invalid_request", "parameter "+strconv.Quote(k)+" sent more than once")
			return nil, false
		}
	}
	if r.PostForm.Has("client_secret") || (!s.public && r.PostForm.Has("client_id")) {
		writeError(w, http.StatusBadRequest, "invalid_request", "client credentials are accepted only in HTTP Basic")
		return nil, false
	}
	return r.PostForm, true
}

// deviceSecrets reports whether the client authenticates with a device
// secret per grant.
func (s *Server) deviceSecrets() bool { return s.clientSecret == "" && !s.public }

// authenticate checks the raw Basic credentials (WAX does not form-decode
// them) and returns the password: the client secret or a device secret. A
// public client sends client_id in form instead, and no password. On
// failure it writes 401 invalid_client and returns false.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, form url.Values) (string, bool) {
	if s.public {
		if r.Header.Get("Authorization") != "" || subtle.ConstantTimeCompare([]byte(form.Get("client_id")), []byte(s.clientID)) != 1 {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.invalidClientLocked(w, "a public client sends its client_id in the body and no Authorization header")
			return "", false
		}
		return "", true
	}
	id, sec, basic := r.BasicAuth()
	if !basic || id == "" || sec == "" || subtle.ConstantTimeCompare([]byte(id), []byte(s.clientID)) != 1 ||
		(s.clientSecret != "" && subtle.ConstantTimeCompare([]byte(sec), []byte(s.clientSecret)) != 1) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.invalidClientLocked(w, "client authentication failed")
		return "", false
	}
	return sec, true
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.counts.TokenRequests++
	s.mu.Unlock()
	form, ok := s.parseForm(w, r)
	if !ok {
		return
	}
	gt := form.Get("grant_type")
	s.mu.Lock()
	switch gt {
	case "authorization_code":
		s.counts.CodeExchanges++
	case "refresh_token":
		s.counts.Refreshes++
	}
	s.mu.Unlock()
	sec, ok := s.authenticate(w, r, form)
	if !ok {
		return
	}
	for k := range form {
		switch k {
		case "grant_type", "code", "refresh_token", "client_id":
		case "code_verifier":
			if s.pkce && gt == "authorization_code" {
				break
			}
			fallthrough
		default:
			writeError(w, http.StatusBadRequest, "invalid_request", "unsupported parameter "+strconv.Quote(k))
			return
		}
	}
	switch gt {
	case "authorization_code":
		s.exchange(w, form.Get("code"), sec, form.Get("code_verifier"))
	case "refresh_token":
		s.refresh(w, form.Get("refresh_token"), sec)
	case "":
		writeError(w, http.StatusBadRequest, "invalid_request", "missing grant_type")
	default:
		writeError(w, http.StatusBadRequest, "unsupported_grant_type", "unsupported grant_type")
	}
}

func (s *Server) exchange(w http.ResponseWriter, c, sec, verifier string) {
	if c == "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "missing code")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cd, ok := s.codes[c]
	switch {
	case !ok:
		s.invalidGrant(w, "Provided authorization code is invalid")
		return
	case cd.used:
		s.counts.ReusedCodes++
		s.invalidGrant(w, "Provided authorization code has already been used")
		return
	case !s.now().Before(cd.expires):
		s.invalidGrant(w, "Provided authorization code has expired")
		return
	case cd.challenge != "" && !pkceVerifier.MatchString(verifier):
		s.counts.PKCEFailures++
		s.invalidGrant(w, "code_verifier is missing or malformed (RFC 7636 §4.1)")
		return
	case cd.challenge != "" && subtle.ConstantTimeCompare([]byte(s256(verifier)), []byte(cd.challenge)) != 1:
		s.counts.PKCEFailures++
		s.invalidGrant(w, "code_verifier does not match the code_challenge")
		return
	}
	cd.used = true
	if verifier != "" {
		s.seen = append(s.seen, verifier)
	}
	g := &grant{scopes: cd.scopes, user: cd.user}
	if s.deviceSecrets() {
		g.deviceSecret = sec
		s.seen = append(s.seen, sec)
	}
	rt := ""
	if cd.permanent {
		rt = random()
		s.grants[rt] = g
		s.seen = append(s.seen, rt)
		s.startRefreshLifetimeLocked(g)
	}
	s.issueLocked(w, g, rt)
}

func (s *Server) refresh(w http.ResponseWriter, rt, sec string) {
	if rt == "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "missing refresh_token")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.grants[rt]
	if ok && !g.refreshExpires.IsZero() && !s.now().Before(g.refreshExpires) {
		delete(s.grants, rt)
		ok = false
	}
	if !ok {
		s.invalidGrant(w, invalidGrantRefresh)
		return
	}
	if s.deviceSecrets() && subtle.ConstantTimeCompare([]byte(sec), []byte(g.deviceSecret)) != 1 {
		s.counts.DeviceSecretMismatches++
		s.invalidClientLocked(w, "the device secret does not match the one this grant was issued to")
		return
	}
	s.startRefreshLifetimeLocked(g)
	newRT := ""
	if s.rotate {
		delete(s.grants, rt)
		newRT = random()
		s.grants[newRT] = g
		s.seen = append(s.seen, newRT)
	}
	s.issueLocked(w, g, newRT)
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.counts.RevokeRequests++
	s.mu.Unlock()
	form, ok := s.parseForm(w, r)
	if !ok {
		return
	}
	sec, ok := s.authenticate(w, r, form)
	if !ok {
		return
	}
	for k := range form {
		if k != "token" && k != "token_type" && k != "token_type_hint" && k != "client_id" {
			writeError(w, http.StatusBadRequest, "invalid_request", "unsupported parameter "+strconv.Quote(k))
			return
		}
	}
	tok := form.Get("token")
	switch {
	case tok == "":
		writeError(w, http.StatusBadRequest, "invalid_request", "token is required")
		return
	case form.Has("token_type") && form.Has("token_type_hint"):
		writeError(w, http.StatusBadRequest, "invalid_request", "token_type (WAX) and token_type_hint (RFC 7009) are exclusive")
		return
	case form.Has("token_type") && form.Get("token_type") != "refresh":
		writeError(w, http.StatusBadRequest, "unsupported_token_type", "token_type must be refresh")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.grants[tok]; ok && (s.clientSecret != "" || g.deviceSecret == sec) {
		delete(s.grants, tok)
		g.revoked = true
		s.revoked[tok] = true
		s.counts.Revocations++
	} else if a, ok := s.tokens[tok]; ok && !form.Has("token_type") && (s.clientSecret != "" || a.grant.deviceSecret == sec) {
		delete(s.tokens, tok)
		s.counts.Revocations++
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

// issueLocked writes a token response for g; s.mu is held. rt is the
// refresh token to send, "" for none.
func (s *Server) issueLocked(w http.ResponseWriter, g *grant, rt string) {
	at := random()
	now := s.now()
	if len(s.tokens) >= 4096 {
		for t, a := range s.tokens {
			if !now.Before(a.expires) {
				delete(s.tokens, t)
			}
		}
	}
	s.tokens[at] = &access{expires: now.Add(TokenLifetime), grant: g}
	s.seen = append(s.seen, at)
	s.counts.Issued++
	resp := map[string]any{
		"access_token": at,
		"token_type":   "bearer",
		"expires_in":   int64(TokenLifetime / time.Second),
		"scope":        g.scopes,
	}
	if rt != "" {
		resp["refresh_token"] = rt
	}
	if !g.refreshExpires.IsZero() {
		resp["refresh_token_expires_in"] = int64(g.refreshExpires.Sub(now) / time.Second)
	}
	writeJSON(w, http.StatusOK, resp)
}

// startRefreshLifetimeLocked (re)starts the unused lifetime of g's refresh
// token; s.mu is held.
func (s *Server) startRefreshLifetimeLocked(g *grant) {
	g.refreshExpires = time.Time{}
	if s.rtLifetime > 0 {
		g.refreshExpires = s.now().Add(s.rtLifetime)
	}
}

func (s *Server) invalidGrant(w http.ResponseWriter, desc string) {
	s.counts.InvalidGrant++
	writeError(w, http.StatusBadRequest, "invalid_grant", desc)
}

func (s *Server) invalidClientLocked(w http.ResponseWriter, desc string) {
	s.counts.InvalidClient++
	w.Header().Set("WWW-Authenticate", `Basic realm="waxemu"`)
	writeError(w, http.StatusUnauthorized, "invalid_client", desc)
}

// RFC 7636 §4.1 and §4.2: a verifier is 43-128 unreserved characters; an
// S256 challenge is the unpadded base64url SHA-256 of it, 43 characters.
var (
	pkceVerifier  = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)
	pkceChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
)

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// random returns 32 random bytes, base64url: codes and tokens.
func random() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
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
