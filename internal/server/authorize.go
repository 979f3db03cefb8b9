package server

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// StartAuthorization implements the RPC.
func (s *Service) StartAuthorization(ctx context.Context, req *tokenbrokerv1.StartAuthorizationRequest) (*tokenbrokerv1.StartAuthorizationResponse, error) {
	if err := checkConnection(req.GetConnection()); err != nil {
		return nil, s.toStatus(ctx, "StartAuthorization", req.GetConnection(), err)
	}
	u, state, exp, err := s.b.StartAuthorization(ctx, req.GetConnection(), req.GetAccount())
	if err != nil {
		return nil, s.toStatus(ctx, "StartAuthorization", req.GetConnection(), err)
	}
	return &tokenbrokerv1.StartAuthorizationResponse{
		AuthorizationUrl: u,
		State:            state,
		ExpiresAt:        timestamppb.New(exp),
	}, nil
}

// CompleteAuthorization implements the RPC: an operator pastes the code the
// upstream returned. The answer describes the connection afterwards.
func (s *Service) CompleteAuthorization(ctx context.Context, req *tokenbrokerv1.CompleteAuthorizationRequest) (*tokenbrokerv1.CompleteAuthorizationResponse, error) {
	name := req.GetConnection()
	if err := checkConnection(name); err != nil {
		return nil, s.toStatus(ctx, "CompleteAuthorization", name, err)
	}
	switch {
	case req.GetCode() == "":
		return nil, s.toStatus(ctx, "CompleteAuthorization", name, invalid("code: required"))
	case len(req.GetCode()) > broker.MaxCodeLength:
		return nil, s.toStatus(ctx, "CompleteAuthorization", name, invalid("code: longer than %d bytes", broker.MaxCodeLength))
	case req.GetState() == "":
		return nil, s.toStatus(ctx, "CompleteAuthorization", name, invalid("state: required"))
	}
	if err := s.b.CompleteAuthorization(ctx, name, req.GetAccount(), req.GetCode(), req.GetState()); err != nil {
		return nil, s.toStatus(ctx, "CompleteAuthorization", name, err)
	}
	resp := &tokenbrokerv1.CompleteAuthorizationResponse{}
	for _, info := range s.b.Connections(ctx) {
		if info.Name == name {
			resp.Connection = connectionProto(info)
		}
	}
	return resp, nil
}
