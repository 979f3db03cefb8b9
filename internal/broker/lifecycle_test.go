package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/cachetest"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// fakeUpstream is a provider whose answers the test controls: each call can
// be held at a gate, scopes can be refused, and, as a Refresher and
// Authorizer, it rotates refresh tokens the way a strict upstream does
// (the old one is revoked when the new one is issued, before the answer).
type fakeUpstream struct {
	now  func() time.Time
	life time.Duration

	mu      sync.Mutex
	gate    chan struct{} // nil: answer at once
	started chan struct{} // when not nil, gets one value per call
	reject  map[string]error
	calls   int
	done    int
	current string // the one valid refresh token
	invalid int    // invalid_grant answers
}

func (u *fakeUpstream) enter() (int, chan struct{}) {
	u.mu.Lock()
	u.calls++
	n, gate, started := u.calls, u.gate, u.started
	u.mu.Unlock()
	if started != nil {
		started <- struct{}{}
	}
	return n, gate
}

// wait holds the call at gate; the upstream has committed whatever the call
// did already.
func (u *fakeUpstream) wait(ctx context.Context, gate chan struct{}) error {
	defer func() {
		u.mu.Lock()
		u.done++
		u.mu.Unlock()
	}()
	if gate == nil {
		return nil
	}
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", providers.ErrUnavailable, ctx.Err())
	}
}

func (u *fakeUpstream) token(n int, scopes []string) *providers.Token {
	return &providers.Token{AccessToken: secret.New(fmt.Sprintf("tok-%d", n)), TokenType: "Bearer",
		Expiry: u.now().Add(u.life), Scopes: scopes}
}

func (u *fakeUpstream) Token(ctx context.Context, req providers.Request) (*providers.Token, error) {
	n, gate := u.enter()
	if err := u.wait(ctx, gate); err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range req.Scopes {
		if err := u.reject[s]; err != nil {
			return nil, err
		}
	}
	return u.token(n, req.Scopes), nil
}

func (u *fakeUpstream) counts() (calls, done, invalid int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls, u.done, u.invalid
}

// rotating is fakeUpstream as a Refresher and Authorizer.
type rotating struct{ *fakeUpstream }

func (u rotating) Token(context.Context, providers.Request) (*providers.Token, error) {
	return nil, providers.ErrNeedsAuthorization
}

func (u rotating) Refresh(ctx context.Context, req providers.Request, g *providers.Grant) (*providers.Token, error) {
	n, gate := u.enter()
	u.mu.Lock()
	if g.RefreshToken.Reveal() != u.current {
		u.invalid++
		u.mu.Unlock()
		_ = u.wait(ctx, nil)
		return nil, fmt.Errorf("refresh: %w", &providers.OAuthError{Code: providers.CodeInvalidGrant, HTTPStatus: 400})
	}
	u.current = fmt.Sprintf("rt-%d", n) // committed: the old one is dead
	t := u.token(n, req.Scopes)
	t.Grant = &providers.Grant{RefreshToken: secret.New(u.current)}
	u.mu.Unlock()
	if err := u.wait(ctx, gate); err != nil {
		return nil, err // the answer is lost; the rotation is not undone
	}
	return t, nil
}

func (u rotating) AuthCodeURL(state, _ string) string {
	return "https://upstream.example/authorize?state=" + state
}

func (u rotating) Exchange(ctx context.Context, code, _ string) (*providers.Token, error) {
	n, gate := u.enter()
	u.mu.Lock()
	u.current = "rt-code-" + code
	t := u.token(n, nil)
	t.Grant = &providers.Grant{RefreshToken: secret.New(u.current)}
	u.mu.Unlock()
	if err := u.wait(ctx, gate); err != nil {
		return nil, err
	}
	return t, nil
}

type fixture struct {
	clk   *cachetest.Clock
	store cache.Cache
	up    *fakeUpstream
	b     *Broker
}

// newFixture is a broker with connection "c" over p (nil: up itself),
// sharing store (nil: a fresh memory cache) under the fake clock.
func newFixture(t *testing.T, store cache.Cache, wrap func(*fakeUpstream) providers.Provider, o Options) *fixture {
	t.Helper()
	clk := cachetest.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	if store == nil {
		mc, err := memory.New(memory.Options{Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		store = mc
		t.Cleanup(func() { _ = mc.Close() })
	}
	up := &fakeUpstream{now: clk.Now, life: time.Hour, reject: map[string]error{}}
	var p providers.Provider = up
	if wrap != nil {
		p = wrap(up)
	}
	o.Cache, o.Now, o.DisableRefreshAhead = store, clk.Now, true
	o.Connections = []Connection{{Name: "c", Type: "fake", Provider: p, Skew: time.Minute}}
	if o.Upstream == nil {
		o.Upstream = &upstream.Policy{MaxAttempts: 1}
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return &fixture{clk: clk, store: store, up: up, b: b}
}

// storeGrant stores a ready grant with refresh token rt in c, as the one
// the upstream knows.
func (f *fixture) storeGrant(t *testing.T, c cache.Cache, rt string) {
	t.Helper()
	f.up.current = rt
	raw, _ := encodeGrant(&providers.Grant{State: providers.GrantReady, RefreshToken: secret.New(rt)}, grantMeta{})
	if err := c.Set(t.Context(), grantKey("c", ""), raw, 0); err != nil {
		t.Fatal(err)
	}
}

// hold makes every upstream call wait until the returned release is called.
func (f *fixture) hold() (release func()) {
	gate := make(chan struct{})
	f.up.mu.Lock()
	f.up.gate, f.up.started = gate, make(chan struct{}, 100)
	f.up.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

func (f *fixture) awaitCall(t *testing.T) {
	t.Helper()
	select {
	case <-f.up.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream was never called")
	}
}

// awaitWaiters waits until n callers wait for the flight of key.
func (f *fixture) awaitWaiters(t *testing.T, key string, n int32) {
	t.Helper()
	for range 1000 {
		f.b.flights.mu.Lock()
		fl := f.b.flights.m[key]
		f.b.flights.mu.Unlock()
		if fl != nil && fl.waiters.Load() >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("fewer than %d callers joined the flight of %q", n, key)
}

// awaitDone waits until the upstream has answered n calls and the flights
// that made them have finished (their results stored): a test that moves
// the clock next must not overtake a flight still checking its answer.
func (f *fixture) awaitDone(t *testing.T, n int) {
	t.Helper()
	for range 1000 {
		if _, done, _ := f.up.counts(); done >= n && f.noFlights() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the upstream did not answer %d calls, or their flights did not finish", n)
}

func (f *fixture) noFlights() bool {
	f.b.flights.mu.Lock()
	defer f.b.flights.mu.Unlock()
	return len(f.b.flights.m) == 0
}

type result struct {
	tok *Token
	err error
}

func (f *fixture) getAsync(ctx context.Context, req Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		t, err := f.b.GetToken(ctx, req)
		ch <- result{t, err}
	}()
	return ch
}

// A caller that leaves early does not take the shared fetch with it: the
// token the upstream issued is stored and served to the next caller.
func TestSharedFetchOutlivesItsFirstCaller(t *testing.T) {
	f := newFixture(t, nil, nil, Options{})
	release := f.hold()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	first := f.getAsync(ctx, Request{Connection: "c"})
	f.awaitCall(t)
	if r := <-first; !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("GetToken(deadline passed) = %v; want DeadlineExceeded", r.err)
	}
	second := f.getAsync(context.Background(), Request{Connection: "c"})
	release()
	r := <-second
	if r.err != nil {
		t.Fatalf("GetToken(second caller) = %v; want the token of the shared fetch", r.err)
	}
	if got := r.tok.AccessToken.Reveal(); got != "tok-1" {
		t.Errorf("second caller got %s; want tok-1 (one upstream call)", got)
	}
	if calls, _, _ := f.up.counts(); calls != 1 {
		t.Errorf("upstream calls = %d; want 1", calls)
	}
}

// A rotating refresh token spent for a caller who left is still stored: the
// next caller does not present the revoked one, and the grant survives.
func TestRotationSurvivesAnImpatientCaller(t *testing.T) {
	f := newFixture(t, nil, func(u *fakeUpstream) providers.Provider { return rotating{u} }, Options{})
	f.storeGrant(t, f.store, "rt-0")
	release := f.hold()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	first := f.getAsync(ctx, Request{Connection: "c"})
	f.awaitCall(t)
	<-first
	release()
	f.awaitDone(t, 1)
	for i := range 3 {
		f.clk.Advance(time.Hour) // each call needs a refresh
		if _, err := f.b.GetToken(t.Context(), Request{Connection: "c"}); err != nil {
			t.Fatalf("GetToken #%d after the impatient caller = %v", i+1, err)
		}
	}
	if _, _, invalid := f.up.counts(); invalid != 0 {
		t.Errorf("upstream saw %d spent refresh tokens; want 0", invalid)
	}
	if st := f.b.Connections(t.Context())[0].State; st != StateReady {
		t.Errorf("connection state = %v; want ready", st)
	}
}

// Each caller judges a shared flight's token by its own min_ttl.
func TestMinTTLIsEachCallers(t *testing.T) {
	f := newFixture(t, nil, nil, Options{})
	release := f.hold()
	long := f.getAsync(context.Background(), Request{Connection: "c", MinTTL: 2 * time.Hour})
	f.awaitCall(t)
	short := f.getAsync(context.Background(), Request{Connection: "c"})
	f.awaitWaiters(t, tokenKey("c", "", nil), 2)
	release()
	if r := <-short; r.err != nil {
		t.Errorf("GetToken(min_ttl 0) = %v; want a token", r.err)
	}
	if r := <-long; !errors.Is(r.err, ErrInvalidArgument) {
		t.Errorf("GetToken(min_ttl 2h, tokens live 1h) = %v; want %v", r.err, ErrInvalidArgument)
	}
	if st := f.b.Connections(t.Context())[0].State; st != StateReady {
		t.Errorf("connection state after a min_ttl refusal = %v; want ready", st)
	}
}

// Callers leaving early never count against the upstream: a slow but
// healthy upstream keeps its breaker closed.
func TestCallerDeadlinesDoNotOpenTheBreaker(t *testing.T) {
	var opened atomic.Int32
	pol := &upstream.Policy{MaxAttempts: 1, Breaker: upstream.BreakerConfig{FailureThreshold: 5,
		OnStateChange: func(_, to string) {
			if to == upstream.StateOpen {
				opened.Add(1)
			}
		}}}
	f := newFixture(t, nil, nil, Options{Upstream: pol})
	release := f.hold()
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		r := f.getAsync(ctx, Request{Connection: "c", Scopes: []string{fmt.Sprint("s", i)}})
		f.awaitCall(t)
		if r := <-r; !errors.Is(r.err, context.DeadlineExceeded) {
			t.Fatalf("GetToken #%d = %v; want the caller's DeadlineExceeded", i, r.err)
		}
		cancel()
	}
	release()
	f.awaitDone(t, 5)
	if _, err := f.b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"next"}}); err != nil {
		t.Fatalf("GetToken after five impatient callers = %v; want a token", err)
	}
	if n := opened.Load(); n != 0 {
		t.Errorf("breaker opened %d times; want 0", n)
	}
}

// A scope the upstream refuses is the caller's error: the connection stays
// ready, and a looping caller makes one upstream request per window.
func TestRequestRejectionIsTheCallers(t *testing.T) {
	f := newFixture(t, nil, nil, Options{})
	f.up.reject["bogus"] = fmt.Errorf("cc: %w", &providers.OAuthError{Code: providers.CodeInvalidScope, HTTPStatus: 400})
	for i := range 5 {
		_, err := f.b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"bogus"}})
		if providers.OAuthCode(err) != providers.CodeInvalidScope || !errors.Is(err, providers.ErrRejected) {
			t.Fatalf("GetToken(bogus) #%d = %v; want invalid_scope under ErrRejected", i+1, err)
		}
	}
	if calls, _, _ := f.up.counts(); calls != 1 {
		t.Errorf("upstream calls for 5 identical refused requests = %d; want 1", calls)
	}
	if _, err := f.b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"read"}}); err != nil {
		t.Fatalf("GetToken(read) = %v", err)
	}
	if info := f.b.Connections(t.Context())[0]; info.State != StateReady || info.LastError != "" {
		t.Errorf("connection state = %v (%q); want ready", info.State, info.LastError)
	}
	f.clk.Advance(DefaultRejectionTTL + time.Second)
	_, _ = f.b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"bogus"}})
	if calls, _, _ := f.up.counts(); calls != 3 {
		t.Errorf("upstream calls after the rejection window = %d; want 3", calls)
	}
}

// A connection fault (credentials rejected) does mark the connection.
func TestConnectionFaultMarksTheConnection(t *testing.T) {
	f := newFixture(t, nil, nil, Options{})
	f.up.reject["x"] = &providers.OAuthError{Code: providers.CodeInvalidClient, HTTPStatus: 401}
	if _, err := f.b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"x"}}); providers.OAuthCode(err) != providers.CodeInvalidClient {
		t.Fatalf("GetToken = %v; want invalid_client", err)
	}
	if st := f.b.Connections(t.Context())[0].State; st != StateFailing {
		t.Errorf("connection state after invalid_client = %v; want failing", st)
	}
}

// A completion waits for a refresh in flight on another replica and its
// grant is the one that stays: the refresh never overwrites it.
func TestCompletionWaitsForTheLease(t *testing.T) {
	f := newFixture(t, nil, func(u *fakeUpstream) providers.Provider { return rotating{u} }, Options{})
	f.storeGrant(t, f.store, "rt-0")
	release := f.hold()
	refresh := f.getAsync(context.Background(), Request{Connection: "c"})
	f.awaitCall(t)
	done := make(chan error, 1)
	go func() {
		done <- f.b.redeem(context.Background(), f.b.conns["c"], "", AuthorizationResponse{Code: "new"}, "")
	}()
	select {
	case err := <-done:
		t.Fatalf("completion finished (%v) while a refresh held the lease", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if r := <-refresh; r.err != nil {
		t.Fatalf("refresh = %v", r.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("completion = %v", err)
	}
	raw, err := f.store.Get(t.Context(), grantKey("c", ""))
	if err != nil {
		t.Fatal(err)
	}
	g, _, _ := decodeGrant(raw)
	if got := g.RefreshToken.Reveal(); got != "rt-code-new" {
		t.Errorf("stored refresh token = %s; want the completion's", got)
	}
	tok, err := f.b.GetToken(t.Context(), Request{Connection: "c"})
	if err != nil || tok.AccessToken.Reveal() != "tok-2" {
		t.Errorf("GetToken after the completion = %v; want the completion's token tok-2", err)
	}
}

// roundTrips counts the commands a go-redis client sends.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (r *roundTrips) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if cmd.Name() != "hello" && cmd.Name() != "client" {
			r.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmds)
	}
}

// A cold miss in Redis mode costs at most three round trips: the read, the
// lease (which reads again in the same step) and the fenced write that
// releases it; for a connection with a grant too.
func TestColdMissRoundTrips(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		name string
		wrap func(*fakeUpstream) providers.Provider
	}{
		{"client credentials", nil},
		{"grant", func(u *fakeUpstream) providers.Provider { return rotating{u} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := rediscache.NewClient(rediscache.ClientConfig{Addrs: []string{srv.Addr()}})
			rt := &roundTrips{}
			client.AddHook(rt)
			rc, err := rediscache.New(rediscache.Options{Client: client, Prefix: "rt:" + tc.name + ":"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = rc.Close() })
			f := newFixture(t, rc, tc.wrap, Options{})
			f.storeGrant(t, rc, "rt-0")
			// Load the scripts first: the first run of each sends it whole.
			if _, err := f.b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"warm"}}); err != nil {
				t.Fatal(err)
			}
			rt.n.Store(0)
			if _, err := f.b.GetToken(t.Context(), Request{Connection: "c", Scopes: []string{"cold"}}); err != nil {
				t.Fatal(err)
			}
			if got := rt.n.Load(); got > 3 {
				t.Errorf("a cold miss made %d shared-store round trips; want at most 3", got)
			}
			t.Logf("cold miss: %d round trips", rt.n.Load())
		})
	}
}

// failingCommits is a store whose leases refuse to commit while fail is set.
type failingCommits struct {
	cache.Cache
	fail atomic.Bool
}

func (s *failingCommits) TryLock(ctx context.Context, name string, ttl time.Duration, keys ...string) (cache.Lease, [][]byte, error) {
	l, v, err := s.Cache.TryLock(ctx, name, ttl, keys...)
	if l != nil {
		l = failingLease{l, s}
	}
	return l, v, err
}

type failingLease struct {
	cache.Lease
	s *failingCommits
}

func (l failingLease) Commit(ctx context.Context, w ...cache.Write) error {
	if l.s.fail.Load() {
		_ = l.Lease.Release(ctx)
		return fmt.Errorf("%w: injected", cache.ErrUnavailable)
	}
	return l.Lease.Commit(ctx, w...)
}

// A refresh token spent while the store refuses writes is not lost: the
// new grant is kept and written by the next fetch, which refreshes with it.
func TestGrantKeptWhenTheStoreRefusesItsWrite(t *testing.T) {
	clk := cachetest.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	mc, err := memory.New(memory.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	store := &failingCommits{Cache: mc}
	f := newFixture(t, store, func(u *fakeUpstream) providers.Provider { return rotating{u} }, Options{})
	f.clk = clk
	f.up.now = clk.Now
	f.b.now = clk.Now
	f.storeGrant(t, mc, "rt-0")
	store.fail.Store(true)
	if _, err := f.b.GetToken(t.Context(), Request{Connection: "c"}); err != nil {
		t.Fatalf("GetToken while the store refuses writes = %v; want the refreshed token", err)
	}
	store.fail.Store(false)
	clk.Advance(time.Hour)
	if _, err := f.b.GetToken(t.Context(), Request{Connection: "c"}); err != nil {
		t.Fatalf("GetToken once the store is back = %v", err)
	}
	if _, _, invalid := f.up.counts(); invalid != 0 {
		t.Errorf("the upstream saw %d spent refresh tokens; want 0", invalid)
	}
	raw, _ := mc.Get(t.Context(), grantKey("c", ""))
	if g, _, _ := decodeGrant(raw); g.RefreshToken.Reveal() != f.up.current {
		t.Errorf("stored refresh token is not the upstream's current one")
	}
}
