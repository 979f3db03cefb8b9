package server

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// ListAccounts implements the RPC. A caller sees only the accounts its
// policy lets it use.
func (s *Service) ListAccounts(ctx context.Context, req *tokenbrokerv1.ListAccountsRequest) (*tokenbrokerv1.ListAccountsResponse, error) {
	name := req.GetConnection()
	if err := checkConnection(name); err != nil {
		return nil, s.toStatus(ctx, "ListAccounts", name, err)
	}
	infos, next, err := s.b.ListAccounts(ctx, name, int(req.GetPageSize()), req.GetPageToken(), brokerState(req.GetState()))
	if err != nil {
		return nil, s.toStatus(ctx, "ListAccounts", name, err)
	}
	resp := &tokenbrokerv1.ListAccountsResponse{NextPageToken: next, Accounts: make([]*tokenbrokerv1.Account, 0, len(infos))}
	for _, info := range infos {
		if auth.MayUseAccount(ctx, name, info.Account) {
			resp.Accounts = append(resp.Accounts, accountProto(info))
		}
	}
	return resp, nil
}

// DeleteAccount implements the RPC.
func (s *Service) DeleteAccount(ctx context.Context, req *tokenbrokerv1.DeleteAccountRequest) (*tokenbrokerv1.DeleteAccountResponse, error) {
	name := req.GetConnection()
	if err := checkConnection(name); err != nil {
		return nil, s.toStatus(ctx, "DeleteAccount", name, err)
	}
	deleted, err := s.b.DeleteAccount(ctx, name, req.GetAccount(), req.GetRevokeUpstream())
	if err != nil {
		return nil, s.toStatus(ctx, "DeleteAccount", name, err)
	}
	return &tokenbrokerv1.DeleteAccountResponse{Deleted: deleted}, nil
}

// ImportGrant implements the RPC. The tokens travel only in the request and
// are stored sealed like every grant.
func (s *Service) ImportGrant(ctx context.Context, req *tokenbrokerv1.ImportGrantRequest) (*tokenbrokerv1.ImportGrantResponse, error) {
	name := req.GetConnection()
	if err := checkConnection(name); err != nil {
		return nil, s.toStatus(ctx, "ImportGrant", name, err)
	}
	switch {
	case len(req.GetRefreshToken()) > MaxTokenLength:
		return nil, s.toStatus(ctx, "ImportGrant", name, invalid("refresh_token: longer than %d bytes", MaxTokenLength))
	case len(req.GetAccessToken()) > MaxTokenLength:
		return nil, s.toStatus(ctx, "ImportGrant", name, invalid("access_token: longer than %d bytes", MaxTokenLength))
	case req.GetAccessToken() != "" && req.GetExpiresAt() == nil:
		return nil, s.toStatus(ctx, "ImportGrant", name, invalid("expires_at: required with access_token"))
	}
	in := broker.Import{Connection: name, Account: req.GetAccount(), RefreshToken: secret.New(req.GetRefreshToken()),
		AccessToken: secret.New(req.GetAccessToken()), Scopes: req.GetScopes()}
	for _, ts := range []struct {
		field string
		pb    *timestamppb.Timestamp
		dst   *time.Time
	}{{"expires_at", req.GetExpiresAt(), &in.ExpiresAt}, {"refresh_expires_at", req.GetRefreshExpiresAt(), &in.RefreshExpiry}} {
		if ts.pb == nil {
			continue
		}
		if err := ts.pb.CheckValid(); err != nil {
			return nil, s.toStatus(ctx, "ImportGrant", name, invalid("%s: %v", ts.field, err))
		}
		*ts.dst = ts.pb.AsTime()
	}
	if err := s.b.ImportGrant(ctx, in); err != nil {
		return nil, s.toStatus(ctx, "ImportGrant", name, err)
	}
	info, err := s.b.Account(ctx, name, req.GetAccount())
	if err != nil {
		return nil, s.toStatus(ctx, "ImportGrant", name, err)
	}
	return &tokenbrokerv1.ImportGrantResponse{Account: accountProto(info)}, nil
}

func accountProto(info broker.AccountInfo) *tokenbrokerv1.Account {
	a := &tokenbrokerv1.Account{
		Account:       info.Account,
		State:         stateProto(info.State),
		GrantedScopes: info.GrantedScopes,
		LastError:     info.LastError,
	}
	for _, ts := range []struct {
		t   time.Time
		dst **timestamppb.Timestamp
	}{{info.TokenExpiry, &a.TokenExpiresAt}, {info.GrantExpiry, &a.GrantExpiresAt}, {info.LastRefresh, &a.LastRefresh}} {
		if !ts.t.IsZero() {
			*ts.dst = timestamppb.New(ts.t)
		}
	}
	return a
}
