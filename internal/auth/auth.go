package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tokenbroker/tokenbroker/internal/incoming"
)

// How a caller was identified.
const (
	ViaAPIKey    = "api_key"
	ViaMTLS      = "mtls"
	ViaAnonymous = "anonymous"
)

// A Caller is an authenticated caller.
type Caller struct {
	// Name is the configured name, or AnonymousName.
	Name string
	// Via is ViaAPIKey, ViaMTLS or ViaAnonymous.
	Via string
}

type callerKey struct{}

// CallerFrom returns the caller the Authenticator put into ctx. It reports
// false outside an authorized call, such as in a health check.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*caller)
	if !ok || c == nil {
		return Caller{}, false
	}
	return c.Caller, true
}

// MayUseConnection reports whether the caller in ctx may use connection
// name under its policy, for responses that list connections. A ctx
// without a caller (an in-process call that did not pass through the
// Authenticator) may use every connection: the interceptor is the gate.
func MayUseConnection(ctx context.Context, name string) bool {
	c, ok := ctx.Value(callerKey{}).(*caller)
	if !ok || c == nil {
		return true
	}
	return matchAny(c.connections, name)
}

// NewContext returns ctx carrying c, allowed every connection.
func NewContext(ctx context.Context, c Caller) context.Context {
	return newContext(ctx, &caller{Caller: c, connections: []string{"*"}})
}

// newContext stores a pointer, which fits in the context's interface value
// without another allocation. *c is immutable: CallerFrom hands out copies.
func newContext(ctx context.Context, c *caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// An Authenticator identifies callers and enforces their policies. It is
// immutable and safe for concurrent use.
type Authenticator struct {
	keys         []apiKey
	uris         map[string]*caller
	dns          map[string]*caller // lower-case names
	anon         *caller            // nil: anonymous callers are refused
	loopbackOnly bool
}

type apiKey struct {
	sum    [sha256.Size]byte
	caller *caller
}

type caller struct {
	Caller
	connections []string
	accounts    []string // nil: any
	scopes      []string // nil: any
	methods     map[string]bool
}

// New checks cfg and returns an Authenticator enforcing it.
func New(cfg Config) (*Authenticator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	a := &Authenticator{uris: map[string]*caller{}, dns: map[string]*caller{}}
	if ac := cfg.AllowAnonymous; ac.Enabled {
		a.anon = newCaller(Caller{Name: AnonymousName, Via: ViaAnonymous}, ac.Policy)
		a.loopbackOnly = ac.LoopbackOnly
	}
	for _, cc := range cfg.Callers {
		c := newCaller(Caller{Name: cc.Name}, cc.Policy)
		for _, h := range cc.APIKeySHA256 {
			k := apiKey{caller: c}
			_, _ = hex.Decode(k.sum[:], []byte(h))
			a.keys = append(a.keys, k)
		}
		for _, u := range cc.URISANs {
			a.uris[u] = c
		}
		for _, d := range cc.DNSSANs {
			a.dns[strings.ToLower(d)] = c
		}
	}
	return a, nil
}

func newCaller(c Caller, p Policy) *caller {
	return &caller{Caller: c, connections: p.Connections, accounts: p.Accounts, scopes: p.Scopes, methods: p.methods()}
}

// exempt reports whether a method is open to everyone: health checks and
// server reflection, which reveal no connection and no token.
func exempt(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// UnaryInterceptor returns an interceptor that refuses a call with
// ErrUnauthenticated when the caller cannot be identified and
// ErrPermissionDenied when its policy does not allow the method, the
// request's connection, or a requested scope; each refusal is a
// *RefusalError, which the interceptor returns as toStatus(err) (the
// service passes server.RefusalStatus, the one place that makes statuses;
// nil returns the *RefusalError itself). An allowed call runs with the
// Caller in its context.
func (a *Authenticator) UnaryInterceptor(toStatus func(error) error) grpc.UnaryServerInterceptor {
	toStatus = orSelf(toStatus)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		adm, err := a.Admit(ctx, info.FullMethod, req)
		if err != nil {
			return nil, toStatus(err)
		}
		return handler(adm.NewContext(ctx), req)
	}
}

// Admit decides a unary call to fullMethod with request req, made with
// ctx, as UnaryInterceptor does, for an interceptor that does more than
// authenticate: it returns the admission to put into the call's context,
// or the refusal, a *RefusalError. A method open to everyone is admitted
// with the zero Admission, which puts nothing into the context.
func (a *Authenticator) Admit(ctx context.Context, fullMethod string, req any) (Admission, error) {
	if exempt(fullMethod) {
		return Admission{}, nil
	}
	c, err := a.authorize(ctx, fullMethod)
	if err != nil {
		return Admission{}, err
	}
	if err := c.checkRequest(req); err != nil {
		return Admission{}, err
	}
	return Admission{c}, nil
}

// An Admission is an admitted call's caller, to be put into the call's
// context so that CallerFrom and MayUseConnection find it.
type Admission struct{ c *caller }

// NewContext returns ctx carrying the admission (ctx itself for the zero
// Admission).
func (d Admission) NewContext(ctx context.Context) context.Context {
	if d.c == nil {
		return ctx
	}
	return newContext(ctx, d.c)
}

// KeyValue returns the key and value that NewContext would put into the
// context with context.WithValue, for a context that holds them next to
// values of its own without another allocation (reqlog.Call.Attach). The
// key is nil for the zero Admission.
func (d Admission) KeyValue() (key, val any) {
	if d.c == nil {
		return nil, nil
	}
	return callerKey{}, d.c
}

// StreamInterceptor is UnaryInterceptor for streaming methods: it checks
// every message the client sends.
func (a *Authenticator) StreamInterceptor(toStatus func(error) error) grpc.StreamServerInterceptor {
	toStatus = orSelf(toStatus)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if exempt(info.FullMethod) {
			return handler(srv, ss)
		}
		c, err := a.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return toStatus(err)
		}
		return handler(srv, &checkedStream{ServerStream: ss, ctx: newContext(ss.Context(), c), c: c, toStatus: toStatus})
	}
}

func orSelf(toStatus func(error) error) func(error) error {
	if toStatus == nil {
		return func(err error) error { return err }
	}
	return toStatus
}

type checkedStream struct {
	grpc.ServerStream
	ctx      context.Context
	c        *caller
	toStatus func(error) error
}

func (s *checkedStream) Context() context.Context { return s.ctx }

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.c.checkRequest(m); err != nil {
		return s.toStatus(err)
	}
	return nil
}

// authorize identifies the caller and checks that it may call fullMethod.
func (a *Authenticator) authorize(ctx context.Context, fullMethod string) (*caller, error) {
	c, err := a.identify(ctx)
	if err != nil {
		return nil, err
	}
	if !c.methods[fullMethod] {
		_, name := path.Split(fullMethod)
		return nil, denied(c.Name, "",
			fmt.Sprintf("caller %q may not call %s", c.Name, clip(name)))
	}
	return c, nil
}

// identify finds the caller: by API key if the call carries one, else by a
// verified client certificate, else anonymous if allowed. A credential that
// is present but not recognized is refused, never downgraded to anonymous.
func (a *Authenticator) identify(ctx context.Context) (*caller, error) {
	if vals := incoming.Get(ctx, "authorization"); len(vals) > 0 {
		return a.byAPIKey(vals)
	}
	p, _ := peer.FromContext(ctx)
	if p != nil {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			return a.byCertificate(ti)
		}
	}
	if a.anon == nil {
		return nil, unauthenticated("no credentials: send \"authorization: Bearer <API key>\" or a client certificate")
	}
	if a.loopbackOnly && (p == nil || !isLoopback(p.Addr)) {
		return nil, unauthenticated("no credentials: anonymous callers are allowed from loopback only")
	}
	return a.anon, nil
}

func (a *Authenticator) byAPIKey(vals []string) (*caller, error) {
	if len(vals) != 1 {
		return nil, unauthenticated("more than one authorization header")
	}
	scheme, key, ok := strings.Cut(vals[0], " ")
	key = strings.TrimSpace(key)
	if !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return nil, unauthenticated("authorization header must be \"Bearer <API key>\"")
	}
	sum := sha256.Sum256([]byte(key))
	// Compare with every key, so the time taken says nothing about which
	// one, if any, matched.
	var found *caller
	for i := range a.keys {
		if subtle.ConstantTimeCompare(sum[:], a.keys[i].sum[:]) == 1 {
			found = a.keys[i].caller
		}
	}
	if found == nil {
		return nil, unauthenticated("unknown API key")
	}
	c := *found
	c.Via = ViaAPIKey
	return &c, nil
}

// byCertificate matches the SANs of a verified client certificate. A
// certificate naming two different callers identifies neither.
func (a *Authenticator) byCertificate(ti credentials.TLSInfo) (*caller, error) {
	leaf := ti.State.VerifiedChains[0][0]
	var found *caller
	match := func(c *caller) error {
		if c == nil || c == found {
			return nil
		}
		if found != nil {
			return unauthenticated(fmt.Sprintf("client certificate names two callers, %q and %q", found.Name, c.Name))
		}
		found = c
		return nil
	}
	for _, u := range leaf.URIs {
		if err := match(a.uris[u.String()]); err != nil {
			return nil, err
		}
	}
	for _, d := range leaf.DNSNames {
		if err := match(a.dns[strings.ToLower(d)]); err != nil {
			return nil, err
		}
	}
	if found == nil {
		return nil, unauthenticated("client certificate names no configured caller")
	}
	c := *found
	c.Via = ViaMTLS
	return &c, nil
}

func isLoopback(addr net.Addr) bool {
	if addr == nil {
		return false
	}
	if a, ok := addr.(*net.TCPAddr); ok && a != nil && a.Zone == "" {
		// What the parse below finds, without formatting the address.
		ip, ok := netip.AddrFromSlice(a.IP)
		return ok && ip.Unmap().IsLoopback()
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// checkRequest checks the connection, account and scopes a request names,
// if any.
// The request is read through small interfaces, so any message with
// GetConnection or GetScopes is covered.
func (c *caller) checkRequest(req any) error {
	var conn string
	if r, ok := req.(interface{ GetConnection() string }); ok {
		conn = r.GetConnection()
		if !matchAny(c.connections, conn) {
			return denied(c.Name, conn,
				fmt.Sprintf("caller %q may not use connection %q", c.Name, clip(conn)))
		}
	}
	if r, ok := req.(interface{ GetAccount() string }); ok && !c.mayUseAccount(r.GetAccount()) {
		return c.accountDenied(conn, r.GetAccount())
	}
	r, ok := req.(interface{ GetScopes() []string })
	if !ok || c.scopes == nil {
		return nil
	}
	scopes := r.GetScopes()
	if len(scopes) == 0 {
		return denied(c.Name, conn,
			fmt.Sprintf("caller %q may request only some scopes on connection %q: name them in scopes", c.Name, clip(conn)))
	}
	for _, s := range scopes {
		if !matchAny(c.scopes, s) {
			return denied(c.Name, conn,
				fmt.Sprintf("caller %q may not request scope %q on connection %q", c.Name, clip(s), clip(conn)))
		}
	}
	return nil
}

func matchAny(globs []string, s string) bool {
	for _, g := range globs {
		if g == "*" {
			// path.Match("*", s), without the pattern walk.
			if !strings.Contains(s, "/") {
				return true
			}
			continue
		}
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

// clip shortens a caller-supplied string before it is quoted in an error.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// unauthenticated and denied build every refusal. Messages never contain a
// credential.
func unauthenticated(msg string) error {
	return &RefusalError{Kind: ErrUnauthenticated, Message: msg}
}

func denied(callerName, connection, msg string) error {
	return &RefusalError{Kind: ErrPermissionDenied, Caller: callerName, Connection: connection, Message: msg}
}
