package broker

import (
	"fmt"
	"slices"
	"strings"
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

// tokenKey is the cache key of a (connection, normalized scopes) pair:
// "token:{conn}:scope1 scope2". Connection names cannot contain ':', '{' or
// '}', and scopes cannot contain ' '. The braces are a Redis Cluster hash
// tag: every key of a connection lives in one slot with its lease.
func tokenKey(conn string, scopes []string) string {
	n := len("token:{") + len(conn) + 2
	for _, s := range scopes {
		n += len(s) + 1
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString("token:{")
	b.WriteString(conn)
	b.WriteString("}:")
	for i, s := range scopes {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s)
	}
	return b.String()
}

func grantKey(conn string) string { return "grant:{" + conn + "}" }
