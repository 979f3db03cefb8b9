// Package ccemu emulates an OAuth 2.0 authorization server that issues tokens
// with the client credentials grant (RFC 6749 §4.4) in the style of Django
// OAuth Toolkit: `POST /o/token/`. Tests and the broker's -demo mode use it
// instead of a real upstream.
//
// It checks what it receives as strictly as the real servers do (see
// PROTOCOLS.md §3), so a client bug fails here rather than in production:
//
//   - method POST (else 405) and Content-Type
//     application/x-www-form-urlencoded (else 400 invalid_request); no query
//     parameters and no repeated form fields (400 invalid_request);
//   - grant_type present (else 400 invalid_request) and equal to
//     client_credentials (else 400 unsupported_grant_type);
//   - client credentials in HTTP Basic, form-decoded as RFC 6749 §2.3.1 says
//     (base64-decode, split at the first ':', url.QueryUnescape each part), or
//     in the client_id and client_secret form fields, never both
//     (400 invalid_request); missing or wrong credentials get 401
//     invalid_client with a WWW-Authenticate: Basic header;
//   - no form fields other than grant_type, scope, client_id, client_secret
//     and the keys of Options.RequiredParams, each of which must be present
//     with its value (400 invalid_request);
//   - scope, when sent, a single-space-separated subset of
//     Options.AllowedScopes (else 400 invalid_scope).
//
// A successful answer is {"access_token", "token_type": "Bearer",
// "expires_in", "scope"} with a random opaque token valid for the lifetime.
// Without a scope parameter every allowed scope is granted, as Django OAuth
// Toolkit grants its default scopes.
//
// All methods of a Server are safe for concurrent use.
package ccemu

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// TokenPath is the path of the token endpoint.
const TokenPath = "/o/token/"

// Realm is sent in the WWW-Authenticate header of 401 answers.
const Realm = "ccemu"

// DefaultLifetime is the token lifetime when Options.Lifetime is zero.
const DefaultLifetime = 36000 * time.Second

// DefaultAllowedScopes are granted when Options.AllowedScopes is empty.
func DefaultAllowedScopes() []string { return []string{"read", "write", "admin"} }

// maxBody bounds a token request body.
const maxBody = 64 << 10

// Options configure a Server.
type Options struct {
	// ClientID and ClientSecret are the only credentials accepted. With an
	// empty ClientID every request fails with invalid_client.
	ClientID     string
	ClientSecret string
	// AllowedScopes a client may request; empty means read, write, admin.
	AllowedScopes []string
	// Lifetime of issued tokens, sent as expires_in in whole seconds;
	// 0 means DefaultLifetime (36000s).
	Lifetime time.Duration
	// RequiredParams are extra form fields (such as audience) that every
	// request must carry with exactly these values.
	RequiredParams map[string]string
	// Now reads the clock; nil means time.Now.
	Now func() time.Time
}

// A Failure makes the server misbehave on purpose; see Server.SetFailure.
// The zero Failure is None.
type Failure struct {
	mode  failureMode
	delay time.Duration
}

type failureMode int

const (
	modeNone failureMode = iota
	modeInvalidClient
	modeInvalidScope
	modeServerError
	modeNonJSON200
	modeBadGateway502HTML
	modeSlow
)

// The failures a Server can be told to produce.
var (
	// None: answer normally.
	None = Failure{}
	// InvalidClient: 401 invalid_client, whatever the credentials.
	InvalidClient = Failure{mode: modeInvalidClient}
	// InvalidScope: 400 invalid_scope, whatever the scope.
	InvalidScope = Failure{mode: modeInvalidScope}
	// ServerError: 500 with a JSON {"error":"server_error"} body.
	ServerError = Failure{mode: modeServerError}
	// NonJSON200: 200 with an HTML body, as a misrouted proxy might send.
	NonJSON200 = Failure{mode: modeNonJSON200}
	// BadGateway502HTML: 502 with an HTML body, as a load balancer sends.
	BadGateway502HTML = Failure{mode: modeBadGateway502HTML}
)

// Slow delays each answer by d, or until the request's context is done
// (the client gave up), then answers normally.
func Slow(d time.Duration) Failure { return Failure{mode: modeSlow, delay: d} }

// String names the failure, for test names.
func (f Failure) String() string {
	switch f.mode {
	case modeNone:
		return "None"
	case modeInvalidClient:
		return "InvalidClient"
	case modeInvalidScope:
		return "InvalidScope"
	case modeServerError:
		return "ServerError"
	case modeNonJSON200:
		return "NonJSON200"
	case modeBadGateway502HTML:
		return "BadGateway502HTML"
	case modeSlow:
		return "Slow(" + f.delay.String() + ")"
	}
	return "Failure(" + strconv.Itoa(int(f.mode)) + ")"
}

// A Server is the emulated authorization server; it is an http.Handler.
type Server struct {
	clientID, clientSecret string
	allowed                []string
	required               map[string]string
	now                    func() time.Time

	mu              sync.Mutex
	lifetime        time.Duration
	failure         Failure
	expiresInString bool
	omitExpiresIn   bool
	requests        int
	issued          int
	lastID          string
	lastSecret      string
	tokens          map[string]time.Time // token → expiry
}

// New returns a Server configured by opts.
func New(opts Options) *Server {
	s := &Server{
		clientID:     opts.ClientID,
		clientSecret: opts.ClientSecret,
		allowed:      slices.Clone(opts.AllowedScopes),
		required:     make(map[string]string, len(opts.RequiredParams)),
		now:          opts.Now,
		lifetime:     opts.Lifetime,
		tokens:       make(map[string]time.Time),
	}
	if len(s.allowed) == 0 {
		s.allowed = DefaultAllowedScopes()
	}
	for k, v := range opts.RequiredParams {
		s.required[k] = v
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.lifetime <= 0 {
		s.lifetime = DefaultLifetime
	}
	return s
}

// SetFailure makes every following request fail as f says (None restores
// normal answers).
func (s *Server) SetFailure(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failure = f
}

// SetExpiresInString makes expires_in a JSON string ("36000") when on.
func (s *Server) SetExpiresInString(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expiresInString = on
}

// SetOmitExpiresIn leaves expires_in out of responses when on. Tokens still
// expire after the lifetime.
func (s *Server) SetOmitExpiresIn(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.omitExpiresIn = on
}

// SetLifetime changes the lifetime of tokens issued from now on; d <= 0
// restores DefaultLifetime.
func (s *Server) SetLifetime(d time.Duration) {
	if d <= 0 {
		d = DefaultLifetime
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// Requests returns how many requests reached the token endpoint, rejected
// ones included.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Issued returns how many tokens were issued.
func (s *Server) Issued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// LastCredentials returns the client id and secret of the last token
// request that carried any, as the server decoded them (from HTTP Basic or
// the form). For tests: never print the secret.
func (s *Server) LastCredentials() (id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastID, s.lastSecret
}

// Valid reports whether token was issued by s and has not expired.
func (s *Server) Valid(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[token]
	return ok && s.now().Before(exp)
}

// ServeHTTP answers token requests at TokenPath and 404 elsewhere.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != TokenPath {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.requests++
	failure := s.failure
	s.mu.Unlock()

	// Read the body before any delay: net/http notices a client that hung
	// up (and cancels r.Context) only once the body has been consumed.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "request body unreadable or too large")
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	if failure.mode == modeSlow {
		t := time.NewTimer(failure.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
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

	id, sec, credErr := credentials(r, form)
	if credErr == nil {
		s.mu.Lock()
		s.lastID, s.lastSecret = id, sec
		s.mu.Unlock()
	}

	switch failure.mode {
	case modeInvalidClient:
		writeInvalidClient(w, "client authentication failed")
		return
	case modeInvalidScope:
		writeError(w, http.StatusBadRequest, "invalid_scope", "the requested scope is not allowed")
		return
	case modeServerError:
		writeError(w, http.StatusInternalServerError, "server_error", "the server failed to handle the request")
		return
	case modeNonJSON200:
		writeHTML(w, http.StatusOK)
		return
	case modeBadGateway502HTML:
		writeHTML(w, http.StatusBadGateway)
		return
	}

	switch gt := form.Get("grant_type"); {
	case gt == "":
		writeError(w, http.StatusBadRequest, "invalid_request", "missing grant_type")
		return
	case gt != "client_credentials":
		writeError(w, http.StatusBadRequest, "unsupported_grant_type", "only client_credentials is supported")
		return
	}
	switch {
	case errors.Is(credErr, errBothCredentials):
		writeError(w, http.StatusBadRequest, "invalid_request", credErr.Error())
		return
	case credErr != nil:
		writeInvalidClient(w, credErr.Error())
		return
	case !s.checkCredentials(id, sec):
		writeInvalidClient(w, "invalid client_id or client_secret")
		return
	}
	for k := range form {
		switch k {
		case "grant_type", "scope", "client_id", "client_secret":
			continue
		}
		if _, ok := s.required[k]; !ok {
			writeError(w, http.StatusBadRequest, "invalid_request", "unsupported parameter "+strconv.Quote(k))
			return
		}
	}
	for k, want := range s.required {
		if got, ok := form[k]; !ok || got[0] != want {
			writeError(w, http.StatusBadRequest, "invalid_request", "parameter "+strconv.Quote(k)+" is missing or wrong")
			return
		}
	}

	scopes := s.allowed
	if vs, ok := form["scope"]; ok {
		var err error
		if scopes, err = s.checkScope(vs[0]); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_scope", err.Error())
			return
		}
	}
	s.issue(w, scopes)
}

// errBothCredentials: the client authenticated twice (RFC 6749 §2.3).
var errBothCredentials = errors.New("client credentials sent both in the Authorization header and in the body")

// credentials returns the client id and secret the request carries.
func credentials(r *http.Request, form url.Values) (id, sec string, err error) {
	_, bodyID := form["client_id"]
	_, bodySecret := form["client_secret"]
	authz := r.Header.Get("Authorization")
	if authz != "" {
		if bodyID || bodySecret {
			return "", "", errBothCredentials
		}
		scheme, payload, _ := strings.Cut(authz, " ")
		if !strings.EqualFold(scheme, "Basic") {
			return "", "", errors.New("only the Basic authentication scheme is supported")
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(payload))
		if err != nil {
			return "", "", errors.New("malformed Basic credentials")
		}
		rawID, rawSecret, ok := strings.Cut(string(raw), ":")
		if !ok {
			return "", "", errors.New("malformed Basic credentials")
		}
		// RFC 6749 §2.3.1: both parts are form-encoded.
		if id, err = url.QueryUnescape(rawID); err != nil {
			return "", "", errors.New("malformed form-encoding in Basic client id")
		}
		if sec, err = url.QueryUnescape(rawSecret); err != nil {
			return "", "", errors.New("malformed form-encoding in Basic client secret")
		}
		return id, sec, nil
	}
	if !bodyID && !bodySecret {
		return "", "", errors.New("no client credentials")
	}
	return form.Get("client_id"), form.Get("client_secret"), nil
}

func (s *Server) checkCredentials(id, sec string) bool {
	if s.clientID == "" {
		return false
	}
	idOK := subtle.ConstantTimeCompare([]byte(id), []byte(s.clientID))
	secOK := subtle.ConstantTimeCompare([]byte(sec), []byte(s.clientSecret))
	return idOK&secOK == 1
}

// checkScope parses a scope parameter strictly: tokens separated by single
// spaces, each allowed. It returns the unique scopes in request order.
func (s *Server) checkScope(scope string) ([]string, error) {
	if scope == "" {
		return nil, errors.New("empty scope")
	}
	var out []string
	for _, sc := range strings.Split(scope, " ") {
		if sc == "" {
			return nil, errors.New("malformed scope: scopes are separated by single spaces")
		}
		if !slices.Contains(s.allowed, sc) {
			return nil, fmt.Errorf("scope %q is not allowed", sc)
		}
		if !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	return out, nil
}

// issue makes a token and writes the success response.
func (s *Server) issue(w http.ResponseWriter, scopes []string) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		writeError(w, http.StatusInternalServerError, "server_error", "no randomness")
		return
	}
	tok := base64.RawURLEncoding.EncodeToString(b)

	s.mu.Lock()
	now := s.now()
	lifetime := s.lifetime
	asString, omit := s.expiresInString, s.omitExpiresIn
	if len(s.tokens) >= 4096 {
		for t, exp := range s.tokens {
			if !now.Before(exp) {
				delete(s.tokens, t)
			}
		}
	}
	s.tokens[tok] = now.Add(lifetime)
	s.issued++
	s.mu.Unlock()

	resp := map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"scope":        strings.Join(scopes, " "),
	}
	if !omit {
		secs := int64(lifetime / time.Second)
		if asString {
			resp["expires_in"] = strconv.FormatInt(secs, 10)
		} else {
			resp["expires_in"] = secs
		}
	}
	writeJSON(w, http.StatusOK, resp)
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

func writeInvalidClient(w http.ResponseWriter, desc string) {
	w.Header().Set("WWW-Authenticate", `Basic realm="`+Realm+`"`)
	writeError(w, http.StatusUnauthorized, "invalid_client", desc)
}

func writeHTML(w http.ResponseWriter, status int) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<html><head><title>%d %s</title></head><body><h1>%s</h1></body></html>\n",
		status, http.StatusText(status), http.StatusText(status))
}
