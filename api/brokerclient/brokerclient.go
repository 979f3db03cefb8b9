// Package brokerclient lets a Go service take OAuth2 access tokens from a
// tokenbroker instead of talking to the upstream authorization server itself.
//
// The broker holds the client secrets, grants and refresh tokens; a caller
// names a connection (one configured upstream account) and gets back an
// access token over gRPC (tokenbroker.v1.TokenBrokerService/GetToken). This
// package wraps that call in an [oauth2.TokenSource], in the manner of
// golang.org/x/oauth2/clientcredentials:
//
//	conn, err := grpc.NewClient("tokenbroker:9090", grpc.WithTransportCredentials(creds))
//	…
//	ts := brokerclient.TokenSource(conn, "payments", "read")
//	tok, err := ts.Token()
//
// or, for an HTTP client that also handles 401 answers (below):
//
//	cfg := &brokerclient.Config{Connection: "payments", Scopes: []string{"read"}}
//	client := cfg.Client(ctx, conn)
//
// How the caller proves its identity to the broker (TLS client certificate,
// API key as per-RPC credentials) is set on conn when dialing.
//
// The source reuses a token until its expiry minus [Config.Skew], then asks
// the broker again; the broker answers from its own cache, so asking is cheap.
//
// When the upstream API answers 401 Unauthorized, the token was revoked or
// rotated before its expiry. [Config.Transport] (or [Config.Client]) handles
// that: it reports the token with InvalidateToken, so the broker drops it
// from its cache, and retries the request once with a fresh token.
// [Invalidate] does the same report for callers that build their own
// requests. The broker drops a reported token only while it is still the
// cached one, so many callers reporting the same dead token cause one
// upstream refresh (see RFC 6750, section 3.1, for the 401 "invalid_token"
// response).
//
// Errors from the broker keep their gRPC status: status.Code(err) still
// reports codes.NotFound for an unknown connection, codes.Unavailable when
// the upstream is down, and so on. No error of this package contains a token.
package brokerclient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

// DefaultSkew is the [Config.Skew] used when none is set.
const DefaultSkew = 30 * time.Second

// Config names the tokens to get from the broker.
type Config struct {
	// Connection is the name of a connection configured in the broker.
	Connection string

	// Account is the end user the tokens act for, on a connection that
	// keeps one grant per user (an id the caller chooses; empty is the
	// connection's default account).
	Account string

	// Scopes to request; order and duplicates do not matter. Empty means
	// the connection's default scopes.
	Scopes []string

	// MinTTL, when positive, is sent to the broker as min_ttl: every token
	// it returns stays valid for at least this long. The broker answers
	// INVALID_ARGUMENT when the upstream cannot issue tokens that long.
	MinTTL time.Duration

	// Skew is how long before its expiry a token stops being reused: the
	// source asks the broker again once expiry − Skew has passed. Zero or
	// negative means DefaultSkew. A token the broker returns with less
	// than Skew left is handed out once and not reused; set MinTTL above
	// Skew to avoid that.
	Skew time.Duration
}

// TokenSource returns a token source for connection and scopes with the
// default [Config]. It uses context.Background for its broker calls. It is
// the short form of
//
//	(&Config{Connection: connection, Scopes: scopes}).TokenSource(context.Background(), conn)
func TokenSource(conn grpc.ClientConnInterface, connection string, scopes ...string) oauth2.TokenSource {
	c := &Config{Connection: connection, Scopes: scopes}
	return c.TokenSource(context.Background(), conn)
}

// TokenSource returns a token source that gets tokens from the broker
// reached through conn and reuses each one until its expiry minus c.Skew.
// It is safe for concurrent use; concurrent callers wait for one broker call.
//
// ctx is used for every broker call the source makes, for as long as it is
// used, so it should not be a request's context. The source copies c: later
// changes to c do not affect it.
//
// The tokens carry the broker's token type and expiry, and the granted scopes
// as Extra("scope") (space-separated, as in RFC 6749, section 5.1). Their
// Valid method applies the same skew. A failed broker call returns an error
// that keeps the call's gRPC status.
func (c *Config) TokenSource(ctx context.Context, conn grpc.ClientConnInterface) oauth2.TokenSource {
	// oauth2.ReuseTokenSource always renews 10 s before expiry; the
	// WithExpiry form takes our skew and leaves Token.Expiry the true
	// expiry that the broker reported.
	return oauth2.ReuseTokenSourceWithExpiry(nil, c.newTokenSource(ctx, conn), c.skew())
}

func (c *Config) skew() time.Duration {
	if c.Skew <= 0 {
		return DefaultSkew
	}
	return c.Skew
}

func (c *Config) newTokenSource(ctx context.Context, conn grpc.ClientConnInterface) *tokenSource {
	return &tokenSource{
		ctx:        ctx,
		client:     tokenbrokerv1.NewTokenBrokerServiceClient(conn),
		connection: c.Connection,
		account:    c.Account,
		scopes:     slices.Clone(c.Scopes),
		minTTL:     c.MinTTL,
	}
}

// tokenSource asks the broker for a token on every call; the reuse is
// oauth2's.
type tokenSource struct {
	ctx        context.Context
	client     tokenbrokerv1.TokenBrokerServiceClient
	connection string
	account    string
	scopes     []string
	minTTL     time.Duration
}

// errEmptyToken is returned for a GetToken answer without an access token,
// which no broker should send.
var errEmptyToken = errors.New("broker returned no access token")

func (s *tokenSource) Token() (*oauth2.Token, error) {
	req := &tokenbrokerv1.GetTokenRequest{Connection: s.connection, Account: s.account, Scopes: s.scopes}
	if s.minTTL > 0 {
		req.MinTtl = durationpb.New(s.minTTL)
	}
	resp, err := s.client.GetToken(s.ctx, req)
	if err == nil && resp.GetAccessToken() == "" {
		err = errEmptyToken
	}
	if err != nil {
		return nil, fmt.Errorf("brokerclient: get token for %q: %w", s.connection, err)
	}
	tok := &oauth2.Token{AccessToken: resp.GetAccessToken(), TokenType: resp.GetTokenType()}
	if resp.GetExpiresAt() != nil {
		tok.Expiry = resp.GetExpiresAt().AsTime()
	}
	if len(resp.GetScopes()) > 0 {
		tok = tok.WithExtra(map[string]any{"scope": strings.Join(resp.GetScopes(), " ")})
	}
	return tok, nil
}

// Invalidate reports accessToken, a token of connection and scopes that an
// upstream API rejected, to the broker reached through conn. The broker drops
// it from its cache if it is still the cached token, so its next GetToken
// for connection and scopes returns a new one. Token sources keep their own
// copy: get a new source, or use [Config.Transport], which drops it too.
//
// An empty accessToken drops whatever token is cached. A failed call returns
// an error that keeps the call's gRPC status.
func Invalidate(ctx context.Context, conn grpc.ClientConnInterface, connection string, scopes []string, accessToken string) error {
	return invalidate(ctx, tokenbrokerv1.NewTokenBrokerServiceClient(conn), connection, "", scopes, accessToken)
}

// Invalidate is [Invalidate] for c's connection, account and scopes.
func (c *Config) Invalidate(ctx context.Context, conn grpc.ClientConnInterface, accessToken string) error {
	return invalidate(ctx, tokenbrokerv1.NewTokenBrokerServiceClient(conn), c.Connection, c.Account, c.Scopes, accessToken)
}

func invalidate(ctx context.Context, client tokenbrokerv1.TokenBrokerServiceClient, connection, account string, scopes []string, accessToken string) error {
	_, err := client.InvalidateToken(ctx, &tokenbrokerv1.InvalidateTokenRequest{
		Connection:  connection,
		Account:     account,
		Scopes:      scopes,
		AccessToken: accessToken,
	})
	if err != nil {
		return fmt.Errorf("brokerclient: invalidate token for %q: %w", connection, err)
	}
	return nil
}
