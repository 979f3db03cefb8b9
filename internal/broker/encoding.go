package broker

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// cachedToken is a Token with the moment it stops being served.
type cachedToken struct {
	Token
	freshUntil time.Time
	// subject: the account it was issued for (providers.AccountBound).
	subject string
}

// tokenRecord is the stored form of a token. Field names are short because
// there is one record per cached token.
type tokenRecord struct {
	V int      `json:"v"`
	A string   `json:"a"`
	T string   `json:"t,omitempty"`
	E int64    `json:"e"` // expiry, Unix ms
	F int64    `json:"f"` // fresh until, Unix ms
	S []string `json:"s,omitempty"`
	U string   `json:"u,omitempty"` // subject
	// X, instead of a token: a terminal upstream rejection remembered for
	// a while (Options.RejectionTTL).
	X *rejectionRecord `json:"x,omitempty"`
}

type rejectionRecord struct {
	Err   string      `json:"err"`
	OAuth oauthRecord `json:"oauth"`
}

func encodeToken(t *Token, freshUntil time.Time, subject string) []byte {
	b, _ := json.Marshal(tokenRecord{V: 1, A: t.AccessToken.Reveal(), T: t.TokenType,
		E: t.Expiry.UnixMilli(), F: freshUntil.UnixMilli(), S: t.Scopes, U: subject})
	return b
}

// encodeRejection is the record of err, whose *OAuthError is oe.
func encodeRejection(err error, oe *providers.OAuthError) []byte {
	b, _ := json.Marshal(tokenRecord{V: 1, X: &rejectionRecord{Err: err.Error(),
		OAuth: oauthRecord{Code: oe.Code, Desc: oe.Description, Status: oe.HTTPStatus}}})
	return b
}

// decodeToken decodes a token record: a token, or a remembered rejection
// (rej), which matches providers.ErrRejected and carries the upstream's
// *providers.OAuthError like the original error.
func decodeToken(raw []byte) (ct *cachedToken, rej error, err error) {
	var r tokenRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, nil, fmt.Errorf("decode token record: %w", err)
	}
	if r.V == 1 && r.X != nil {
		return nil, &storedError{msg: r.X.Err, kinds: []error{&providers.OAuthError{
			Code: r.X.OAuth.Code, Description: r.X.OAuth.Desc, HTTPStatus: r.X.OAuth.Status}}}, nil
	}
	if r.V != 1 || r.A == "" {
		return nil, nil, fmt.Errorf("decode token record: unsupported version %d or empty token", r.V)
	}
	return &cachedToken{
		Token: Token{AccessToken: secret.New(r.A), TokenType: r.T,
			Expiry: time.UnixMilli(r.E), Scopes: r.S},
		freshUntil: time.UnixMilli(r.F),
		subject:    r.U,
	}, nil, nil
}

// grantMeta is what the broker keeps with a grant about its use.
type grantMeta struct {
	// keys are the token keys obtained from the grant, so replacing or
	// deleting it retires them all.
	keys []string
	// tokenExpiry is the expiry of the last token obtained from it.
	tokenExpiry time.Time
	// lastError is the last fault refreshing it, "" since a success.
	lastError string
}

// maxGrantKeys bounds grantMeta.keys: a grant used with more scope sets
// forgets the oldest, whose tokens then just expire.
const maxGrantKeys = 64

func (m *grantMeta) addKey(key string) {
	if slices.Contains(m.keys, key) {
		return
	}
	m.keys = append(m.keys, key)
	if len(m.keys) > maxGrantKeys {
		m.keys = m.keys[len(m.keys)-maxGrantKeys:]
	}
}

type grantRecord struct {
	V             int      `json:"v"`
	State         string   `json:"state"`
	RefreshToken  string   `json:"rt,omitempty"`
	RefreshExpiry int64    `json:"rt_exp,omitempty"` // Unix ms
	DeviceSecret  string   `json:"ds,omitempty"`
	Scopes        []string `json:"scopes,omitempty"`
	Subject       string   `json:"sub,omitempty"`
	UpdatedAt     int64    `json:"updated"` // Unix ms
	Keys          []string `json:"k,omitempty"`
	TokenExpiry   int64    `json:"te,omitempty"` // Unix ms
	LastError     string   `json:"err,omitempty"`
}

func encodeGrant(g *providers.Grant, m grantMeta) ([]byte, error) {
	r := grantRecord{V: 1, State: string(g.State), RefreshToken: g.RefreshToken.Reveal(),
		DeviceSecret: g.DeviceSecret.Reveal(), Scopes: g.Scopes, Subject: g.Subject, UpdatedAt: g.UpdatedAt.UnixMilli(),
		Keys: m.keys, LastError: m.lastError}
	if !m.tokenExpiry.IsZero() {
		r.TokenExpiry = m.tokenExpiry.UnixMilli()
	}
	if !g.RefreshExpiry.IsZero() {
		r.RefreshExpiry = g.RefreshExpiry.UnixMilli()
	}
	return json.Marshal(r)
}

func decodeGrant(raw []byte) (*providers.Grant, grantMeta, error) {
	var r grantRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, grantMeta{}, fmt.Errorf("decode grant record: %w", err)
	}
	if r.V != 1 {
		return nil, grantMeta{}, fmt.Errorf("decode grant record: unsupported version %d", r.V)
	}
	m := grantMeta{keys: r.Keys, lastError: r.LastError}
	if r.TokenExpiry != 0 {
		m.tokenExpiry = time.UnixMilli(r.TokenExpiry)
	}
	g := &providers.Grant{State: providers.GrantState(r.State), RefreshToken: secret.New(r.RefreshToken),
		DeviceSecret: secret.New(r.DeviceSecret), Scopes: r.Scopes, Subject: r.Subject, UpdatedAt: time.UnixMilli(r.UpdatedAt)}
	if r.RefreshExpiry != 0 {
		g.RefreshExpiry = time.UnixMilli(r.RefreshExpiry)
	}
	return g, m, nil
}
