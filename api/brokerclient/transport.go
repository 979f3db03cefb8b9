package brokerclient

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

// Client returns an HTTP client whose requests carry tokens from the broker
// reached through conn; see [Config.Transport]. It sends them with
// http.DefaultTransport.
func (c *Config) Client(ctx context.Context, conn grpc.ClientConnInterface) *http.Client {
	return &http.Client{Transport: c.Transport(ctx, conn, nil)}
}

// Transport returns an [http.RoundTripper] that sends each request through
// base (nil means http.DefaultTransport) with an "Authorization: <type>
// <token>" header, the token coming from a source like
// [Config.TokenSource].
//
// When the response is 401 Unauthorized, the transport reports the token it
// sent with InvalidateToken and stops reusing it. Then, if the request can be
// sent again (it has no body, or GetBody is set, as http.NewRequest does for
// bytes and strings readers), it retries once with a fresh token and returns
// that second response, whatever its status. Otherwise, or when the report
// fails or the broker returns the same token, it returns the 401 response
// unchanged; the next request asks the broker for a token again.
// A second 401 is returned as it is: no request is sent more than twice.
//
// ctx is used for every broker call, as in [Config.TokenSource]. The
// transport is safe for concurrent use; when many requests fail with the
// same token, it fetches one new token.
func (c *Config) Transport(ctx context.Context, conn grpc.ClientConnInterface, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	cfg := *c
	cfg.Scopes = slices.Clone(c.Scopes)
	return &transport{
		base:   base,
		ctx:    ctx,
		conn:   conn,
		client: tokenbrokerv1.NewTokenBrokerServiceClient(conn),
		cfg:    &cfg,
		src:    cfg.TokenSource(ctx, conn),
	}
}

type transport struct {
	base   http.RoundTripper
	ctx    context.Context
	conn   grpc.ClientConnInterface
	client tokenbrokerv1.TokenBrokerServiceClient
	cfg    *Config

	mu  sync.Mutex
	src oauth2.TokenSource // reuses one token; replaced to drop it
	gen uint64             // counts replacements of src
}

func (t *transport) source() (oauth2.TokenSource, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.src, t.gen
}

// drop stops reusing the token of source generation gen. Requests that failed
// with that same token find the source already replaced and leave it be.
func (t *transport) drop(gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen == gen {
		t.src = t.cfg.TokenSource(t.ctx, t.conn)
		t.gen++
	}
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	src, gen := t.source()
	tok, err := src.Token()
	if err != nil {
		if req.Body != nil {
			req.Body.Close() // a RoundTripper always closes the body
		}
		return nil, err
	}
	resp, err := t.base.RoundTrip(withToken(req, req.Body, tok))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}

	// Report before dropping, so the fetch that follows does not get the
	// same token back from the broker's cache.
	err = invalidate(t.ctx, t.client, t.cfg.Connection, t.cfg.Account, t.cfg.Scopes, tok.AccessToken)
	t.drop(gen)
	if err != nil || !replayable(req) {
		return resp, nil
	}
	src, _ = t.source()
	fresh, err := src.Token()
	if err != nil || fresh.AccessToken == tok.AccessToken {
		return resp, nil
	}
	body := req.Body
	if body != nil && body != http.NoBody {
		if body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	// Let the connection be reused; an error body worth reading is short.
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
	return t.base.RoundTrip(withToken(req, body, fresh))
}

// CloseIdleConnections closes the idle connections of the base transport,
// if it has that method.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// replayable reports whether req can be sent a second time.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// withToken returns a copy of req with body and tok's Authorization header;
// a RoundTripper must not modify its request.
func withToken(req *http.Request, body io.ReadCloser, tok *oauth2.Token) *http.Request {
	r := req.Clone(req.Context())
	r.Body = body
	tok.SetAuthHeader(r)
	return r
}
