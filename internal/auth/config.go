// Package auth decides who is calling the broker and what they may do.
//
// A caller is identified by an API key (gRPC metadata "authorization:
// Bearer <key>", configured only as the key's SHA-256) or by the client
// certificate of a mutual-TLS connection (a URI SAN such as a SPIFFE ID, or
// a DNS SAN). A caller without credentials is anonymous, and anonymous
// callers are refused unless the configuration allows them. Each caller has
// a Policy: the RPCs it may call, the connections it may use, and the scopes
// it may ask for. The Authenticator enforces all of this in a gRPC
// interceptor, before any handler runs.
package auth

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
)

// Config is the auth section of the broker configuration.
type Config struct {
	// AllowAnonymous lets callers without credentials in. Off by default.
	AllowAnonymous AnonymousConfig `yaml:"allow_anonymous"`
	// Callers are the known callers.
	Callers []CallerConfig `yaml:"callers"`
}

// AnonymousConfig says whether, from where, and for what callers without
// credentials are let in.
type AnonymousConfig struct {
	Enabled bool `yaml:"enabled"`
	// LoopbackOnly admits anonymous callers only from a loopback address.
	LoopbackOnly bool   `yaml:"loopback_only"`
	Policy       Policy `yaml:"policy"`
}

// CallerConfig describes one caller and the credentials that identify it.
// At least one credential is required.
type CallerConfig struct {
	// Name identifies the caller in logs and errors.
	Name string `yaml:"name"`
	// APIKeySHA256 are the lower- or upper-case hex SHA-256 digests of the
	// caller's API keys; several allow rotation without downtime.
	APIKeySHA256 []string `yaml:"api_key_sha256"`
	// URISANs are client-certificate URI SANs that identify the caller,
	// such as the SPIFFE ID "spiffe://example.org/ns/pay/sa/api".
	URISANs []string `yaml:"uri_sans"`
	// DNSSANs are client-certificate DNS SANs that identify the caller.
	DNSSANs []string `yaml:"dns_sans"`
	Policy  Policy   `yaml:"policy"`
}

// Policy is what a caller may do.
type Policy struct {
	// Connections are the connection names the caller may use: exact
	// names or path.Match globs such as "pay-*" or "*". Empty allows none.
	Connections []string `yaml:"connections"`
	// Accounts are the accounts (end users of an authorization-code, wax
	// or wx connection) the caller may use on its connections, as
	// path.Match globs such as "team-a-*"; "" names a connection's default
	// account. Absent allows every account, the default one included.
	// When set, the default account is allowed only when listed as "" or
	// matched by "*" ("team-a-*" alone does not allow it). An empty list is
	// refused: it would allow no account at all. Checked with the connection
	// and scopes for every call that names an account (the default one
	// included); ListAccounts lists only the allowed ones (MayUseAccount).
	Accounts []string `yaml:"accounts"`
	// Scopes are the scopes the caller may request, as globs such as
	// "read:*". Empty allows any scope. When set, a request must name its
	// scopes: the connection's default scopes are not checked here.
	Scopes []string `yaml:"scopes"`
	// RPCs are the methods the caller may call: GetToken, InvalidateToken,
	// ListConnections, StartAuthorization, CompleteAuthorization,
	// ListAccounts, DeleteAccount, ImportGrant, or the roles "service"
	// (GetToken) and "operator" (all of them). Empty means "service".
	RPCs []string `yaml:"rpcs"`
}

// Roles usable in Policy.RPCs.
const (
	RoleService  = "service"
	RoleOperator = "operator"
)

// AnonymousName is the Caller name of a caller without credentials. No
// configured caller may use it.
const AnonymousName = "anonymous"

const serviceName = "tokenbroker.v1.TokenBrokerService"

// rpcNames are the methods of tokenbroker.v1.TokenBrokerService.
var rpcNames = []string{"GetToken", "InvalidateToken", "ListConnections", "StartAuthorization", "CompleteAuthorization",
	"ListAccounts", "DeleteAccount", "ImportGrant"}

var roles = map[string][]string{
	RoleService:  {"GetToken"},
	RoleOperator: rpcNames,
}

var callerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}$`)

// Validate reports every problem at once, each prefixed with its path, such
// as "callers[1].api_key_sha256[0]: must be 64 hex characters". It reads
// nothing.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.AllowAnonymous.Enabled {
		errs = append(errs, c.AllowAnonymous.Policy.validate("allow_anonymous.policy")...)
		if len(c.AllowAnonymous.Policy.Connections) == 0 {
			// Without it every call is PERMISSION_DENIED: surely not meant.
			add("allow_anonymous.policy.connections: required when enabled (without it anonymous callers may use no connection), e.g. [\"*\"]")
		}
	}
	names := map[string]string{}
	keys := map[string]string{}
	uris := map[string]string{}
	dns := map[string]string{}
	for i, cc := range c.Callers {
		p := fmt.Sprintf("callers[%d]", i)
		switch {
		case cc.Name == "":
			add("%s.name: required", p)
		case cc.Name == AnonymousName:
			add("%s.name: %q is reserved for callers without credentials", p, AnonymousName)
		case !callerName.MatchString(cc.Name):
			add("%s.name: %q must be 1 to 128 letters, digits and ._@:/- starting with a letter or digit", p, cc.Name)
		default:
			if prev, ok := names[cc.Name]; ok {
				add("%s.name: %q is also the name of %s", p, cc.Name, prev)
			} else {
				names[cc.Name] = p
			}
		}
		if len(cc.APIKeySHA256)+len(cc.URISANs)+len(cc.DNSSANs) == 0 {
			add("%s: no credential: set api_key_sha256, uri_sans or dns_sans", p)
		}
		for j, h := range cc.APIKeySHA256 {
			q := fmt.Sprintf("%s.api_key_sha256[%d]", p, j)
			b, err := hex.DecodeString(h)
			if err != nil || len(b) != 32 {
				add("%s: must be 64 hex characters (the SHA-256 of the key, e.g. from `printf %%s \"$KEY\" | sha256sum`)", q)
				continue
			}
			k := hex.EncodeToString(b)
			if prev, ok := keys[k]; ok {
				add("%s: same key as %s", q, prev)
			} else {
				keys[k] = q
			}
		}
		for j, s := range cc.URISANs {
			q := fmt.Sprintf("%s.uri_sans[%d]", p, j)
			u, err := url.Parse(s)
			if err != nil || u.Scheme == "" || s != u.String() {
				add("%s: %q must be an absolute URI in canonical form, such as spiffe://example.org/svc/a", q, s)
				continue
			}
			if prev, ok := uris[s]; ok {
				add("%s: %q is also %s", q, s, prev)
			} else {
				uris[s] = q
			}
		}
		for j, s := range cc.DNSSANs {
			q := fmt.Sprintf("%s.dns_sans[%d]", p, j)
			if s == "" || strings.ContainsAny(s, " \t/:@") {
				add("%s: %q must be a DNS name", q, s)
				continue
			}
			k := strings.ToLower(s)
			if prev, ok := dns[k]; ok {
				add("%s: %q is also %s", q, s, prev)
			} else {
				dns[k] = q
			}
		}
		errs = append(errs, cc.Policy.validate(p+".policy")...)
	}
	return errors.Join(errs...)
}

func (p Policy) validate(at string) []error {
	var errs []error
	checkGlobs := func(key string, globs []string) {
		for i, g := range globs {
			q := fmt.Sprintf("%s.%s[%d]", at, key, i)
			if g == "" {
				errs = append(errs, fmt.Errorf("%s: must not be empty", q))
			} else if _, err := path.Match(g, ""); err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a valid glob", q, g))
			}
		}
	}
	checkGlobs("connections", p.Connections)
	checkGlobs("scopes", p.Scopes)
	if p.Accounts != nil && len(p.Accounts) == 0 {
		errs = append(errs, fmt.Errorf(`%s.accounts: an empty list allows no account: omit it to allow every account, or list "" for the default account only`, at))
	}
	for i, g := range p.Accounts {
		if _, err := path.Match(g, ""); err != nil {
			errs = append(errs, fmt.Errorf("%s.accounts[%d]: %q is not a valid glob", at, i, g))
		}
	}
	for i, r := range p.RPCs {
		if _, ok := roles[r]; !ok && !slices.Contains(rpcNames, r) {
			errs = append(errs, fmt.Errorf("%s.rpcs[%d]: unknown RPC %q (known: %s, %s, %s)",
				at, i, r, RoleService, RoleOperator, strings.Join(rpcNames, ", ")))
		}
	}
	return errs
}

// methods returns the full gRPC method names the policy allows.
func (p Policy) methods() map[string]bool {
	rpcs := p.RPCs
	if len(rpcs) == 0 {
		rpcs = []string{RoleService}
	}
	m := map[string]bool{}
	for _, r := range rpcs {
		names, ok := roles[r]
		if !ok {
			names = []string{r}
		}
		for _, n := range names {
			m["/"+serviceName+"/"+n] = true
		}
	}
	return m
}
