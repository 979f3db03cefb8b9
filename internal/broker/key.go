package broker

import (
	"fmt"
	"slices"
)

// Limits on requests; see normalizeScopes.
const (
	MaxScopes      = 64
	MaxScopeLength = 256
)

// normalizeScopes sorts and de-duplicates scopes and checks them against
// RFC 6749 §3.3 (scope-token = 1*( %x21 / %x23-5B / %x5D-7E )).
func normalizeScopes(scopes []string) ([]string, error) {
	if len(scopes) > MaxScopes {
		return nil, fmt.Errorf("%w: %d scopes; at most %d", ErrInvalidArgument, len(scopes), MaxScopes)
	}
	if len(scopes) == 0 {
		return nil, nil
	}
	for i, s := range scopes {
		if s == "" || len(s) > MaxScopeLength {
			return nil, fmt.Errorf("%w: scopes[%d]: must be 1-%d characters", ErrInvalidArgument, i, MaxScopeLength)
		}
		for j := 0; j < len(s); j++ {
			c := s[j]
			if c < 0x21 || c == 0x22 || c == 0x5c || c > 0x7e {
				return nil, fmt.Errorf("%w: scopes[%d]: invalid character at byte %d", ErrInvalidArgument, i, j)
			}
		}
	}
	if len(scopes) == 1 {
		return scopes, nil
	}
	out := slices.Clone(scopes)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// MaxAccountLength bounds an account id.
const MaxAccountLength = 128

// checkAccount checks an account id: [A-Za-z0-9._@:-], at most 128
// characters; "" is the connection's default account.
func checkAccount(a string) error {
	if len(a) > MaxAccountLength {
		return fmt.Errorf("%w: account: at most %d characters", ErrInvalidArgument, MaxAccountLength)
	}
	for i := 0; i < len(a); i++ {
		switch c := a[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '@', c == ':', c == '-':
		default:
			return fmt.Errorf("%w: account: invalid character at byte %d (allowed: A-Z a-z 0-9 . _ @ : -)", ErrInvalidArgument, i)
		}
	}
	return nil
}

// tag is the Redis Cluster hash tag of (connection, account): the
// connection alone for the default account (the keys of before accounts
// existed), else "conn/account" ('/' is in neither). Every key of one
// account lives in one slot with its lease; accounts spread over slots.
func tag(conn, account string) string {
	if account == "" {
		return conn
	}
	return conn + "/" + account
}

// tokenKey is the cache key of a (connection, account, normalized scopes)
// triple: "token:{tag}:scope1 scope2". Connection names cannot contain ':',
// '{', '}' or '/', accounts neither '{', '}' nor '/', and scopes cannot
// contain ' '.
func tokenKey(conn, account string, scopes []string) string {
	return string(appendTokenKey(make([]byte, 0, tokenKeyLen(conn, account, scopes)), conn, account, scopes))
}

// appendTokenKey appends tokenKey's key to dst. The hit path builds it in a
// buffer on its stack and looks L1 up with it, so a cached GetToken
// allocates no key (issue 16).
func appendTokenKey(dst []byte, conn, account string, scopes []string) []byte {
	dst = append(dst, "token:{"...)
	dst = append(dst, conn...)
	if account != "" {
		dst = append(dst, '/')
		dst = append(dst, account...)
	}
	dst = append(dst, "}:"...)
	for i, s := range scopes {
		if i > 0 {
			dst = append(dst, ' ')
		}
		dst = append(dst, s...)
	}
	return dst
}

func tokenKeyLen(conn, account string, scopes []string) int {
	n := len("token:{") + len(conn) + len("}:")
	if account != "" {
		n += 1 + len(account)
	}
	for _, s := range scopes {
		n += len(s) + 1
	}
	return n
}

func grantKey(conn, account string) string { return "grant:{" + tag(conn, account) + "}" }

// accountsKey is the index of a connection's accounts; keepAliveKey the
// schedule of their refreshes, scored by the Unix ms they are due.
func accountsKey(conn string) string  { return "accounts:{" + conn + "}" }
func keepAliveKey(conn string) string { return "keepalive:{" + conn + "}" }
