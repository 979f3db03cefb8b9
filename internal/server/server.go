// Package server exposes the broker as tokenbroker.v1.TokenBrokerService.
// It checks requests, calls the broker, and maps every error to a gRPC
// status in one place (statusOf in status.go), auth's refusals included
// (RefusalStatus).
package server

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

// Limits on request fields, beyond the broker's own checks.
const (
	MaxConnectionName = 64
	MaxTokenLength    = 16 << 10
)

// Config holds the service's dependencies.
type Config struct {
	Broker *broker.Broker
	Logger *slog.Logger
	// Metrics counts failed GetToken calls by gRPC code (nil: not counted).
	Metrics *metrics.Metrics
}

// Service implements tokenbrokerv1.TokenBrokerServiceServer.
type Service struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	b       *broker.Broker
	log     *slog.Logger
	metrics *metrics.Metrics
}

// New returns the service.
func New(c Config) *Service {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := c.Metrics
	if m == nil {
		m = metrics.New()
	}
	return &Service{b: c.Broker, log: log, metrics: m}
}

// GetToken implements the RPC.
func (s *Service) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	t, err := s.getToken(ctx, req)
	if err != nil {
		return nil, err
	}
	return response(t), nil
}

// getToken is GetToken up to the broker's token; it counts failures.
func (s *Service) getToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*broker.Token, error) {
	t, err := s.token(ctx, req)
	if err != nil {
		s.metrics.Lookup(req.GetConnection()).Failed(status.Code(err).String())
	}
	return t, err
}

func (s *Service) token(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*broker.Token, error) {
	if err := checkConnection(req.GetConnection()); err != nil {
		return nil, s.toStatus(ctx, "GetToken", req.GetConnection(), err)
	}
	var minTTL time.Duration
	if d := req.GetMinTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, s.toStatus(ctx, "GetToken", req.GetConnection(), invalid("min_ttl: %v", err))
		}
		minTTL = d.AsDuration()
	}
	t, err := s.b.GetToken(ctx, broker.Request{
		Connection:   req.GetConnection(),
		Account:      req.GetAccount(),
		Scopes:       req.GetScopes(),
		MinTTL:       minTTL,
		ForceRefresh: req.GetForceRefresh(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "GetToken", req.GetConnection(), err)
	}
	return t, nil
}

// response is t as GetToken answers it: one allocation for the response
// and its timestamp (as timestamppb.New would fill it).
func response(t *broker.Token) *tokenbrokerv1.GetTokenResponse {
	r := new(getTokenResponse)
	r.expiresAt.Seconds, r.expiresAt.Nanos = t.Expiry.Unix(), int32(t.Expiry.Nanosecond())
	r.resp.AccessToken = t.AccessToken.Reveal()
	r.resp.TokenType = t.TokenType
	r.resp.ExpiresAt = &r.expiresAt
	r.resp.Scopes = t.Scopes
	return &r.resp
}

type getTokenResponse struct {
	resp      tokenbrokerv1.GetTokenResponse
	expiresAt timestamppb.Timestamp
}

// InvalidateToken implements the RPC.
func (s *Service) InvalidateToken(ctx context.Context, req *tokenbrokerv1.InvalidateTokenRequest) (*tokenbrokerv1.InvalidateTokenResponse, error) {
	if err := checkConnection(req.GetConnection()); err != nil {
		return nil, s.toStatus(ctx, "InvalidateToken", req.GetConnection(), err)
	}
	if len(req.GetAccessToken()) > MaxTokenLength {
		return nil, s.toStatus(ctx, "InvalidateToken", req.GetConnection(), invalid("access_token: longer than %d bytes", MaxTokenLength))
	}
	done, err := s.b.Invalidate(ctx, req.GetConnection(), req.GetAccount(), req.GetScopes(), req.GetAccessToken())
	if err != nil {
		return nil, s.toStatus(ctx, "InvalidateToken", req.GetConnection(), err)
	}
	return &tokenbrokerv1.InvalidateTokenResponse{Invalidated: done}, nil
}

// ListConnections implements the RPC.
func (s *Service) ListConnections(ctx context.Context, _ *tokenbrokerv1.ListConnectionsRequest) (*tokenbrokerv1.ListConnectionsResponse, error) {
	infos := s.b.Connections(ctx)
	resp := &tokenbrokerv1.ListConnectionsResponse{Connections: make([]*tokenbrokerv1.Connection, 0, len(infos))}
	for _, info := range infos {
		// A caller sees only the connections its policy lets it use.
		if auth.MayUseConnection(ctx, info.Name) {
			resp.Connections = append(resp.Connections, connectionProto(info))
		}
	}
	return resp, nil
}

func connectionProto(info broker.ConnectionInfo) *tokenbrokerv1.Connection {
	c := &tokenbrokerv1.Connection{
		Name:          info.Name,
		Provider:      info.Type,
		State:         stateProto(info.State),
		GrantedScopes: info.GrantedScopes,
		Details:       info.Details,
		LastError:     info.LastError,
	}
	if !info.TokenExpiry.IsZero() {
		c.TokenExpiresAt = timestamppb.New(info.TokenExpiry)
	}
	return c
}

// states pairs the broker's connection and account states with the API's.
var states = []struct {
	b broker.ConnectionState
	p tokenbrokerv1.ConnectionState
}{
	{broker.StateReady, tokenbrokerv1.ConnectionState_CONNECTION_STATE_READY},
	{broker.StateNeedsAuthorization, tokenbrokerv1.ConnectionState_CONNECTION_STATE_NEEDS_AUTHORIZATION},
	{broker.StateRevoked, tokenbrokerv1.ConnectionState_CONNECTION_STATE_REVOKED},
	{broker.StateFailing, tokenbrokerv1.ConnectionState_CONNECTION_STATE_FAILING},
}

func stateProto(s broker.ConnectionState) tokenbrokerv1.ConnectionState {
	for _, st := range states {
		if st.b == s {
			return st.p
		}
	}
	return tokenbrokerv1.ConnectionState_CONNECTION_STATE_UNSPECIFIED
}

// brokerState is stateProto's inverse; UNSPECIFIED is 0 (any state).
func brokerState(s tokenbrokerv1.ConnectionState) broker.ConnectionState {
	for _, st := range states {
		if st.p == s {
			return st.b
		}
	}
	return 0
}

func checkConnection(name string) error {
	if name == "" {
		return invalid("connection: required")
	}
	if len(name) > MaxConnectionName {
		return invalid("connection: longer than %d bytes", MaxConnectionName)
	}
	if !validName(name) {
		return invalid("connection: must match %s", config.NamePattern)
	}
	return nil
}

// validName reports whether name matches config.NamePattern,
// ^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$, without running the regexp.
func validName(name string) bool {
	n := len(name)
	if n == 0 || n > 64 || !lowerOrDigit(name[0]) || !lowerOrDigit(name[n-1]) {
		return false
	}
	for i := 1; i < n-1; i++ {
		if c := name[i]; !lowerOrDigit(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func lowerOrDigit(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
