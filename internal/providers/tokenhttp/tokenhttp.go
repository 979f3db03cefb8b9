// Package tokenhttp is the token-endpoint client that every provider uses to
// talk to its upstream: it sends one RFC 6749 access token request (§4.4.2,
// §6, …) as a form POST, authenticates the client (§2.3.1), and turns the
// answer into a *Response (§5.1) or an error classified by the sentinels of
// package providers (§5.2).
//
// It deliberately does not use golang.org/x/oauth2's generic response parser:
// expires_in is handed back raw (see ParseExpiresIn), because its meaning is
// protocol-specific (WX may send an absolute Unix time). Each provider turns
// it into an expiry itself, from Response.Sent.
//
// Error classes, all matched with errors.Is / errors.As:
//
//   - the upstream could not be reached, or the request timed out: wraps
//     providers.ErrUnavailable; a deadline (the caller's or Client.Timeout)
//     also keeps context.DeadlineExceeded in the chain, a cancellation
//     context.Canceled;
//   - HTTP 5xx or 429: a *StatusError (with Retry-After), which unwraps to
//     providers.ErrUnavailable;
//   - HTTP 4xx with an RFC 6749 §5.2 JSON error body: a *providers.OAuthError
//     (so providers.ErrRejected), its Description scrubbed of the request's
//     secrets and truncated;
//   - HTTP 4xx without such a body, or a 3xx (redirects are not followed: a
//     token request is never re-sent elsewhere): wraps providers.ErrRejected,
//     with no *providers.OAuthError in the chain;
//   - HTTP 2xx that is not a JSON object, lacks access_token, has a field
//     of the wrong type, or fails the token checks below; or a body larger
//     than Client.MaxResponseBytes with any status but 5xx and 429 (those
//     need no body): wraps providers.ErrInvalidResponse ("response larger
//     than N bytes").
//
// A 2xx response is checked before anything of it is used, because callers
// put its tokens into HTTP headers and the broker stores them:
//
//   - token_type is required (RFC 6749 §5.1) unless Client.DefaultTokenType
//     stands in for it, and is an RFC 6749 §11.1 type-name
//     (providers.CheckTokenType);
//   - access_token, and refresh_token when present, are non-empty and at
//     most MaxTokenBytes long;
//   - a Bearer access token (token_type compared without case) is an
//     RFC 6750 §2.1 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
//     "+" / "/" ) *"=";
//   - any other access token, and every refresh token, is visible ASCII
//     (%x21-7E): no control character, space or non-ASCII byte.
//
// A failed check names the field and the rule, never the value.
//
// No error message ever contains a secret, a token, or the body of a 2xx
// response.
package tokenhttp

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Defaults used when the corresponding Client field is zero.
const (
	DefaultMaxResponseBytes int64 = 1 << 20
	DefaultTimeout                = 30 * time.Second
)

// MaxTokenBytes is the longest access_token or refresh_token accepted, in
// bytes. Callers send the access token in an Authorization header, and
// common servers and proxies refuse a header line over 8 KiB (nginx's
// large_client_header_buffers, Apache's LimitRequestFieldSize); 4 KiB
// leaves room for the rest of the request and is far above the tokens of
// the supported upstreams.
const MaxTokenBytes = 4096

// maxDescription is the most of an upstream error_description kept, in bytes.
const maxDescription = 200

// maxCode is the most of an upstream error code kept, in bytes.
const maxCode = 64

// AuthStyle says how the client authenticates to the token endpoint.
type AuthStyle int

const (
	// AuthBasicForm sends HTTP Basic with the client id and secret each
	// form-encoded (url.QueryEscape) before they are joined with ':' and
	// base64-encoded, as RFC 6749 §2.3.1 requires. Servers that follow the
	// RFC (Django OAuth Toolkit, oauthlib) form-decode them again, so a
	// secret with '+', '%' or ' ' arrives intact only this way.
	AuthBasicForm AuthStyle = iota
	// AuthBasicRaw sends HTTP Basic with the raw "id:secret" (RFC 7617), as
	// WAX clients do. The client id must not contain ':'.
	AuthBasicRaw
	// AuthBody sends client_id and client_secret as form fields (RFC 6749
	// §2.3.1, the alternative the RFC discourages but allows).
	AuthBody
	// AuthNone adds nothing: the caller puts client_id (and whatever else
	// identifies it) in the form itself. Auth.ClientID and Auth.Secret are
	// ignored.
	AuthNone
)

// String returns the style's name, for messages.
func (s AuthStyle) String() string {
	switch s {
	case AuthBasicForm:
		return "basic-form"
	case AuthBasicRaw:
		return "basic-raw"
	case AuthBody:
		return "body"
	case AuthNone:
		return "none"
	}
	return "AuthStyle(" + strconv.Itoa(int(s)) + ")"
}

// Auth is how one request authenticates the client.
type Auth struct {
	Style AuthStyle
	// ClientID is required for every style but AuthNone.
	ClientID string
	// Secret is the client secret (or a WAX device secret). It may be empty
	// for a public client; it is then sent as an empty password or field.
	Secret secret.Value
}

// A Client sends token requests. The zero Client is ready to use; a Client
// must not be changed once in use, and is then safe for concurrent use.
type Client struct {
	// HTTP sends the requests; nil means http.DefaultClient. Its
	// CheckRedirect is overridden: redirects are never followed.
	HTTP *http.Client
	// MaxResponseBytes bounds the response body read; 0 (or less) means
	// DefaultMaxResponseBytes (1 MiB).
	MaxResponseBytes int64
	// Timeout bounds each request, from sending to reading the whole body,
	// with context.WithTimeout on top of the caller's context; 0 (or less)
	// means DefaultTimeout (30s).
	Timeout time.Duration
	// Now reads the clock; nil means time.Now.
	Now func() time.Time
	// DefaultTokenType stands in for a missing token_type, for upstreams
	// known to omit it; "" (the default) makes a response without one
	// ErrInvalidResponse, as RFC 6749 §5.1 requires the member. It must
	// pass providers.CheckTokenType.
	DefaultTokenType string
}

// A Response is a successful (2xx) token response, RFC 6749 §5.1.
type Response struct {
	// Sent is the clock reading taken just before the request was sent: a
	// relative expires_in counts from here, so the computed expiry is never
	// later than the upstream's.
	Sent time.Time
	// Status is the HTTP status code (2xx).
	Status int
	// AccessToken is never empty, and passed the checks in the package
	// documentation.
	AccessToken secret.Value
	// TokenType as sent ("bearer", "Bearer", …), or Client.DefaultTokenType
	// when absent; never empty.
	TokenType string
	// ExpiresIn is the expires_in value as sent, a JSON number or a numeric
	// string; nil when absent or null. Its meaning (seconds left, or an
	// absolute Unix time) is for the provider to decide.
	ExpiresIn *int64
	// RefreshToken is empty when absent.
	RefreshToken secret.Value
	// RefreshExpiresIn is refresh_token_expires_in as sent (seconds the
	// refresh token has left, as Azure AD, GitHub and others send it; read
	// like expires_in); nil when absent or null. See RefreshLifetime.
	RefreshExpiresIn *int64
	// Scope is the space-separated scope as sent (a JSON array of strings is
	// joined with spaces); "" when absent.
	Scope string
	// Fields holds every top-level member of the response object, for
	// provider-specific fields, except access_token and refresh_token: those
	// are only in AccessToken and RefreshToken, so that printing or logging
	// a Response cannot leak them.
	Fields map[string]json.RawMessage
}

// A StatusError is an HTTP 5xx or 429 answer. It unwraps to
// providers.ErrUnavailable: retrying later may succeed.
type StatusError struct {
	Status int
	// RetryAfter is the delay the upstream asked for in Retry-After
	// (delay-seconds or an HTTP-date); 0 when it sent none, an unparsable
	// one, or a date in the past.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("%v: HTTP %d", providers.ErrUnavailable, e.Status)
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// Unwrap makes errors.Is(err, providers.ErrUnavailable) hold.
func (e *StatusError) Unwrap() error { return providers.ErrUnavailable }

// RetryAfterDelay is the wait the upstream asked for (0: none), for retry
// policies (upstream.RetryAfterer).
func (e *StatusError) RetryAfterDelay() time.Duration { return e.RetryAfter }

// secretFields are request form fields whose values must never appear in an
// error: an upstream that echoes the request into error_description would
// otherwise leak them.
var secretFields = []string{
	"client_secret", "refresh_token", "code", "password",
	"code_verifier", "assertion", "client_assertion", "device_secret",
}

// Post sends form to tokenURL as an RFC 6749 access token request,
// authenticated as auth says, and returns the parsed 2xx response or an
// error classified as the package documentation describes. form is not
// modified. The request carries Content-Type
// application/x-www-form-urlencoded and Accept application/json.
func (c *Client) Post(ctx context.Context, tokenURL string, form url.Values, auth Auth) (*Response, error) {
	a, err := c.send(ctx, tokenURL, form, auth)
	if err != nil {
		return nil, err
	}
	return parseSuccess(a.sent, a.status, a.data, c.DefaultTokenType)
}

// Revoke sends form to revocationURL as an RFC 7009 §2.1 revocation request
// (the caller builds the form: token and token_type_hint, or an upstream's
// own fields), authenticated as auth says. Any 2xx is success, whatever its
// body (RFC 7009 §2.2: the body is ignored). Errors are classified as for
// Post: 5xx (RFC 7009 §2.2.1's 503 included) and 429 are a *StatusError, a
// 4xx with an RFC 6749 §5.2 body (unsupported_token_type, invalid_client, …)
// is a *providers.OAuthError, a redirect or another 4xx wraps
// providers.ErrRejected, a transport failure providers.ErrUnavailable.
func (c *Client) Revoke(ctx context.Context, revocationURL string, form url.Values, auth Auth) error {
	_, err := c.send(ctx, revocationURL, form, auth)
	return err
}

// answer is a response that is not an error by its status: 2xx, with its
// body read (at most MaxResponseBytes).
type answer struct {
	sent   time.Time
	status int
	data   []byte
}

// send posts form, authenticated as auth says, and classifies every answer
// but a 2xx.
func (c *Client) send(ctx context.Context, endpoint string, form url.Values, auth Auth) (*answer, error) {
	body := cloneValues(form)
	var basicUser, basicPass string
	useBasic := false
	switch auth.Style {
	case AuthBasicForm:
		if auth.ClientID == "" {
			return nil, errors.New("tokenhttp: client id is required for " + auth.Style.String())
		}
		basicUser, basicPass, useBasic = url.QueryEscape(auth.ClientID), url.QueryEscape(auth.Secret.Reveal()), true
	case AuthBasicRaw:
		if auth.ClientID == "" {
			return nil, errors.New("tokenhttp: client id is required for " + auth.Style.String())
		}
		if strings.Contains(auth.ClientID, ":") {
			return nil, errors.New("tokenhttp: a client id containing ':' cannot be sent in raw HTTP Basic")
		}
		basicUser, basicPass, useBasic = auth.ClientID, auth.Secret.Reveal(), true
	case AuthBody:
		if auth.ClientID == "" {
			return nil, errors.New("tokenhttp: client id is required for " + auth.Style.String())
		}
		body.Set("client_id", auth.ClientID)
		body.Set("client_secret", auth.Secret.Reveal())
	case AuthNone:
	default:
		return nil, fmt.Errorf("tokenhttp: unknown auth style %v", auth.Style)
	}

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(body.Encode()))
	if err != nil {
		return nil, fmt.Errorf("tokenhttp: build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if useBasic {
		req.SetBasicAuth(basicUser, basicPass)
	}

	sent := c.now()
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, unavailable(parent, ctx, timeout, err)
	}
	defer resp.Body.Close()

	limit := c.MaxResponseBytes
	if limit <= 0 {
		limit = DefaultMaxResponseBytes
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, unavailable(parent, ctx, timeout, fmt.Errorf("read response: %w", err))
	}
	tooLarge := int64(len(data)) > limit

	switch st := resp.StatusCode; {
	case st >= 500 || st == http.StatusTooManyRequests:
		// The status says all; the body is not needed, however large.
		return nil, &StatusError{Status: st, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), c.now())}
	case tooLarge:
		return nil, fmt.Errorf("%w: HTTP %d: response larger than %d bytes", providers.ErrInvalidResponse, st, limit)
	case st >= 400:
		return nil, rejected(st, data, scrubList(body, auth, basicUser, basicPass))
	case st >= 300:
		return nil, fmt.Errorf("%w: HTTP %d redirect%s not followed: check the endpoint URL",
			providers.ErrRejected, st, redirectTarget(resp.Header.Get(hiddenLocation), scrubList(body, auth, basicUser, basicPass)))
	case st >= 200:
		return &answer{sent: sent, status: st, data: data}, nil
	default:
		return nil, fmt.Errorf("%w: unexpected HTTP %d", providers.ErrInvalidResponse, st)
	}
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) httpClient() *http.Client {
	base := c.HTTP
	if base == nil {
		base = http.DefaultClient
	}
	hc := *base
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	hc.Transport = hideLocation{rt}
	return &hc
}

// hiddenLocation is where hideLocation moves a redirect's Location header.
const hiddenLocation = "X-Tokenhttp-Location"

// hideLocation moves the Location header of a 3xx answer out of net/http's
// sight. http.Client parses it before asking CheckRedirect, and on failure
// returns an error quoting the whole header: upstream text, unscrubbed and
// unbounded, that would end up in logs.
type hideLocation struct{ rt http.RoundTripper }

func (h hideLocation) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.rt.RoundTrip(r)
	if err == nil && resp.StatusCode >= 300 && resp.StatusCode < 400 {
		if loc, ok := resp.Header["Location"]; ok {
			delete(resp.Header, "Location")
			resp.Header[hiddenLocation] = loc
		}
	}
	return resp, err
}

// unavailable wraps a transport error. The *url.Error from net/http carries
// the URL without its password and keeps the context's error in its chain;
// the context's error is added explicitly when the transport lost it, and
// the message says when Client.Timeout (not the caller) ended the request.
func unavailable(parent, ctx context.Context, timeout time.Duration, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (%w)", err, cerr)
	}
	if ctx.Err() != nil && parent.Err() == nil {
		return fmt.Errorf("%w: no answer within %v: %w", providers.ErrUnavailable, timeout, err)
	}
	return fmt.Errorf("%w: %w", providers.ErrUnavailable, err)
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v)+2)
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// parseSuccess decodes and checks a 2xx token response; defaultType stands
// in for a missing token_type. Its messages never quote the body.
func parseSuccess(sent time.Time, status int, data []byte, defaultType string) (*Response, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%w: HTTP %d: body is not a JSON object (%d bytes)", providers.ErrInvalidResponse, status, len(data))
	}
	r := &Response{Sent: sent, Status: status}

	at, present, err := stringField(fields, "access_token")
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: HTTP %d: %w", providers.ErrInvalidResponse, status, err)
	case !present || at == "":
		return nil, fmt.Errorf("%w: HTTP %d: no access_token in the response", providers.ErrInvalidResponse, status)
	}
	rt, rtPresent, err := stringField(fields, "refresh_token")
	if err != nil {
		return nil, fmt.Errorf("%w: HTTP %d: %w", providers.ErrInvalidResponse, status, err)
	}
	tt, ttPresent, err := stringField(fields, "token_type")
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: HTTP %d: %w", providers.ErrInvalidResponse, status, err)
	case !ttPresent && defaultType == "":
		return nil, fmt.Errorf("%w: HTTP %d: no token_type in the response (RFC 6749 §5.1 requires it; "+
			"set default_token_type for an upstream known to omit it)", providers.ErrInvalidResponse, status)
	case !ttPresent:
		tt = defaultType
	}
	if err := providers.CheckTokenType(tt); err != nil {
		return nil, fmt.Errorf("%w: HTTP %d: token_type: %w", providers.ErrInvalidResponse, status, err)
	}
	if err := checkToken("access_token", at, strings.EqualFold(tt, "Bearer")); err != nil {
		return nil, fmt.Errorf("%w: HTTP %d: %w", providers.ErrInvalidResponse, status, err)
	}
	if rtPresent {
		if err := checkToken("refresh_token", rt, false); err != nil {
			return nil, fmt.Errorf("%w: HTTP %d: %w", providers.ErrInvalidResponse, status, err)
		}
	}
	r.TokenType = tt
	r.AccessToken = secret.New(at)
	r.RefreshToken = secret.New(rt)

	if r.Scope, err = scopeField(fields["scope"]); err != nil {
		return nil, fmt.Errorf("%w: HTTP %d: %w", providers.ErrInvalidResponse, status, err)
	}
	n, ok, err := ParseExpiresIn(fields["expires_in"])
	if err != nil {
		return nil, fmt.Errorf("HTTP %d: %w", status, err)
	}
	if ok {
		r.ExpiresIn = &n
	}
	rn, ok, err := parseSeconds("refresh_token_expires_in", fields["refresh_token_expires_in"])
	if err != nil {
		return nil, fmt.Errorf("HTTP %d: %w", status, err)
	}
	if ok {
		r.RefreshExpiresIn = &rn
	}

	delete(fields, "access_token")
	delete(fields, "refresh_token")
	r.Fields = fields
	return r, nil
}

// checkToken applies the token checks of the package documentation to the
// member field: b64token when bearer, visible ASCII otherwise. Its messages
// name the field and the rule, and at most the offending byte's offset.
func checkToken(field, tok string, bearer bool) error {
	switch {
	case tok == "":
		return fmt.Errorf("%s is empty", field)
	case len(tok) > MaxTokenBytes:
		return fmt.Errorf("%s is longer than %d bytes", field, MaxTokenBytes)
	}
	if bearer {
		if i := notB64token(tok); i >= 0 {
			return fmt.Errorf("%s is not an RFC 6750 b64token (A-Z a-z 0-9 - . _ ~ + /, then only =): byte %d", field, i)
		}
		return nil
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%s has a byte outside visible ASCII (no control character, space or non-ASCII): byte %d", field, i)
		}
	}
	return nil
}

// notB64token returns the offset of the first byte of tok that breaks
// RFC 6750 §2.1 b64token, 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" /
// "/" ) *"=", or -1 when tok is one.
func notB64token(tok string) int {
	i := 0
	for ; i < len(tok); i++ {
		c := tok[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~+/", c) >= 0) {
			break
		}
	}
	if i == 0 {
		return 0
	}
	for ; i < len(tok); i++ {
		if tok[i] != '=' {
			return i
		}
	}
	return -1
}

// stringField reads an optional string member; null counts as absent.
func stringField(fields map[string]json.RawMessage, name string) (string, bool, error) {
	raw, ok := fields[name]
	if !ok || isNull(raw) {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, fmt.Errorf("%s is not a string", name)
	}
	return s, true, nil
}

// scopeField accepts the RFC's space-separated string and, leniently, a JSON
// array of strings.
func scopeField(raw json.RawMessage) (string, error) {
	if raw == nil || isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		return strings.Join(list, " "), nil
	}
	return "", errors.New("scope is neither a string nor a list of strings")
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// ParseExpiresIn reads an expires_in member as sent: a JSON number (3600,
// or an integral 3600.0) or a numeric string ("3600"). It returns the value
// and true; 0 and false when raw is nil (absent) or null. A negative,
// fractional, non-numeric or out-of-range value is an error wrapping
// providers.ErrInvalidResponse; the message quotes no more than the field name.
// What the number means (seconds left or an absolute time) is the caller's
// business.
func ParseExpiresIn(raw json.RawMessage) (int64, bool, error) {
	return parseSeconds("expires_in", raw)
}

// parseSeconds is ParseExpiresIn for the member named field.
func parseSeconds(field string, raw json.RawMessage) (int64, bool, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false, nil
	}
	var text string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &text); err != nil {
			return 0, false, fmt.Errorf("%w: %s is not a valid JSON string", providers.ErrInvalidResponse, field)
		}
		text = strings.TrimSpace(text)
		// A string must hold plain digits: no sign, exponent or fraction.
		if text == "" || strings.TrimLeft(text, "0123456789") != "" {
			return 0, false, fmt.Errorf("%w: %s string is not a non-negative integer", providers.ErrInvalidResponse, field)
		}
	} else {
		var num json.Number
		if err := json.Unmarshal(raw, &num); err != nil {
			return 0, false, fmt.Errorf("%w: %s is neither a number nor a numeric string", providers.ErrInvalidResponse, field)
		}
		text = num.String()
	}
	if n, err := strconv.ParseInt(text, 10, 64); err == nil {
		if n < 0 {
			return 0, false, fmt.Errorf("%w: %s is negative", providers.ErrInvalidResponse, field)
		}
		return n, true, nil
	}
	f, err := strconv.ParseFloat(text, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange):
		return 0, false, fmt.Errorf("%w: %s is not a number", providers.ErrInvalidResponse, field)
	case f < 0:
		return 0, false, fmt.Errorf("%w: %s is negative", providers.ErrInvalidResponse, field)
	case err != nil || f >= math.MaxInt64:
		return 0, false, fmt.Errorf("%w: %s is out of range", providers.ErrInvalidResponse, field)
	case f != math.Trunc(f):
		return 0, false, fmt.Errorf("%w: %s is not an integer", providers.ErrInvalidResponse, field)
	}
	return int64(f), true, nil
}

// retryAfter parses a Retry-After header (RFC 9110 §10.2.3).
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > int64(math.MaxInt64/time.Second) {
			return time.Duration(math.MaxInt64)
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// redirectTarget names where a redirect pointed: scheme, host and path,
// without user info, query or fragment, scrubbed of secrets like an
// error_description and as short.
func redirectTarget(loc string, secrets []string) string {
	u, err := url.Parse(loc)
	if loc == "" || err != nil {
		return ""
	}
	target := u.Host + u.Path
	if u.Scheme != "" {
		target = u.Scheme + "://" + target
	}
	if target = clean(target, secrets, maxDescription); target == "" {
		return ""
	}
	return " to " + strconv.Quote(target)
}

// oauthErrorBody is RFC 6749 §5.2.
type oauthErrorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// rejected classifies a 4xx answer.
func rejected(status int, data []byte, secrets []string) error {
	var eb oauthErrorBody
	if err := json.Unmarshal(data, &eb); err != nil {
		var probe any
		if json.Unmarshal(data, &probe) == nil {
			return fmt.Errorf("%w: HTTP %d with a JSON body that is not an OAuth error (%d bytes)", providers.ErrRejected, status, len(data))
		}
		return fmt.Errorf("%w: HTTP %d with non-JSON body (%d bytes)", providers.ErrRejected, status, len(data))
	}
	if eb.Error == "" {
		return fmt.Errorf("%w: HTTP %d with a JSON body that is not an OAuth error (%d bytes)", providers.ErrRejected, status, len(data))
	}
	return &providers.OAuthError{
		Code:        clean(eb.Error, secrets, maxCode),
		Description: clean(eb.ErrorDescription, secrets, maxDescription),
		HTTPStatus:  status,
	}
}

// scrubList returns every secret the request carried, in the forms an
// upstream might echo, longest first so a secret that contains another is
// replaced whole.
func scrubList(form url.Values, auth Auth, basicUser, basicPass string) []string {
	seen := map[string]bool{}
	add := func(s string) {
		if s == "" {
			return
		}
		for _, v := range []string{s, url.QueryEscape(s), url.PathEscape(s)} {
			seen[v] = true
		}
	}
	add(auth.Secret.Reveal())
	for _, k := range secretFields {
		for _, v := range form[k] {
			add(v)
		}
	}
	if basicUser != "" || basicPass != "" {
		seen[base64.StdEncoding.EncodeToString([]byte(basicUser+":"+basicPass))] = true
	}
	delete(seen, "")
	list := make([]string, 0, len(seen))
	for s := range seen {
		list = append(list, s)
	}
	sort.Slice(list, func(i, j int) bool {
		if len(list[i]) != len(list[j]) {
			return len(list[i]) > len(list[j])
		}
		return list[i] < list[j]
	})
	return list
}

// clean makes upstream text safe to put in an error: control characters
// replaced by spaces, invalid UTF-8 dropped, then secrets replaced by
// secret.Redacted, and the result cut to at most limit bytes on a character
// boundary. Secrets are replaced after the other changes, which could
// otherwise rebuild one (a tab sent for a secret's space, an invalid byte
// inside it), and before cutting, so no cut can leave a recognisable part
// of one.
func clean(s string, secrets []string, limit int) string {
	s = printable(s)
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, secret.Redacted)
		if p := printable(sec); p != sec && p != "" {
			s = strings.ReplaceAll(s, p, secret.Redacted)
		}
	}
	s = strings.TrimSpace(s)
	if len(s) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// printable drops invalid UTF-8 and U+FFFD from s and turns control
// characters into spaces.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == utf8.RuneError:
			return -1
		case unicode.IsControl(r):
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, ""))
}

// MaxExpiresIn is the longest relative expires_in believed (ten years):
// beyond it the upstream most likely sent an absolute time, and the
// duration would overflow.
const MaxExpiresIn = 10 * 366 * 24 * 60 * 60

// Lifetime is the token's lifetime from a relative expires_in (RFC 6749
// §5.1), or fallback when the response has none. An expires_in of 0 or
// beyond MaxExpiresIn is ErrInvalidResponse.
func (r *Response) Lifetime(fallback time.Duration) (time.Duration, error) {
	if r.ExpiresIn == nil {
		return fallback, nil
	}
	switch n := *r.ExpiresIn; {
	case n == 0:
		return 0, fmt.Errorf("%w: expires_in is 0", providers.ErrInvalidResponse)
	case n > MaxExpiresIn:
		return 0, fmt.Errorf("%w: expires_in %d is more than ten years", providers.ErrInvalidResponse, n)
	default:
		return time.Duration(n) * time.Second, nil
	}
}

// RefreshLifetime is how long the refresh token has left, from
// refresh_token_expires_in; ok is false when the response has none. A value
// of 0 or beyond MaxExpiresIn is ErrInvalidResponse, as for expires_in.
func (r *Response) RefreshLifetime() (d time.Duration, ok bool, err error) {
	if r.RefreshExpiresIn == nil {
		return 0, false, nil
	}
	switch n := *r.RefreshExpiresIn; {
	case n == 0:
		return 0, false, fmt.Errorf("%w: refresh_token_expires_in is 0", providers.ErrInvalidResponse)
	case n > MaxExpiresIn:
		return 0, false, fmt.Errorf("%w: refresh_token_expires_in %d is more than ten years", providers.ErrInvalidResponse, n)
	default:
		return time.Duration(n) * time.Second, true, nil
	}
}
