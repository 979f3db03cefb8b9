package auth

import (
	"context"
	"fmt"
)

// MayUseAccount reports whether the caller in ctx may use account on
// connection under its policy: the connection is one of its connections,
// and the account matches its accounts (any account when the policy lists
// none; "" is the connection's default account). For RPCs that name an
// account and for responses that list accounts. A ctx without a caller (an
// in-process call that did not pass through the Authenticator) may use
// every account, as with MayUseConnection.
func MayUseAccount(ctx context.Context, connection, account string) bool {
	c, ok := ctx.Value(callerKey{}).(*caller)
	if !ok || c == nil {
		return true
	}
	return matchAny(c.connections, connection) && c.mayUseAccount(account)
}

// CheckAccount is MayUseAccount as an error for a handler to return: nil
// when allowed, else a *RefusalError of kind ErrPermissionDenied naming the
// caller and the connection, whose message quotes the account clipped.
func CheckAccount(ctx context.Context, connection, account string) error {
	if MayUseAccount(ctx, connection, account) {
		return nil
	}
	c, _ := ctx.Value(callerKey{}).(*caller)
	if !matchAny(c.connections, connection) {
		return denied(c.Name, connection, fmt.Sprintf("caller %q may not use connection %q", c.Name, clip(connection)))
	}
	return c.accountDenied(connection, account)
}

// accountDenied is the refusal of account of connection.
func (c *caller) accountDenied(connection, account string) error {
	what := fmt.Sprintf("account %q", clip(account))
	if account == "" {
		what = "the default account"
	}
	return denied(c.Name, connection, fmt.Sprintf("caller %q may not use %s of connection %q", c.Name, what, clip(connection)))
}

func (c *caller) mayUseAccount(account string) bool {
	// matchAny: "" matches only "" (and "*"), so "team-a-*" alone keeps the
	// default account out.
	return c.accounts == nil || matchAny(c.accounts, account)
}
