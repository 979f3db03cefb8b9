// Package metrics defines the broker's Prometheus metrics. Hot-path
// counters are resolved per connection once, at start-up, so serving a
// cached token costs an atomic add and no label lookup.
package metrics

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "tokenbroker"

// UnknownConnection labels requests for names that are not configured, so
// callers cannot grow the label space.
const UnknownConnection = "(unknown)"

// Outcomes of GetToken besides errors (which are labelled with the gRPC code).
const (
	OutcomeL1Hit     = "l1_hit"
	OutcomeSharedHit = "shared_hit"
	OutcomeFetched   = "fetched"
)

// CacheOps are the op labels of cache errors.
var CacheOps = []string{"get", "set", "lock", "publish", "get_grant"}

// GRPCHandlingBuckets are the buckets of grpc_server_handling_seconds.
var GRPCHandlingBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics holds every metric. Its methods are safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry
	// GRPC are the gRPC server metrics, the series of grpc-ecosystem's
	// Prometheus provider (see ServerMetrics); register its interceptors
	// on the server and call its InitializeMetrics once the services are
	// registered.
	GRPC *ServerMetrics

	getToken        *prometheus.CounterVec
	upstream        *prometheus.CounterVec
	upstreamLatency *prometheus.HistogramVec
	refreshes       *prometheus.CounterVec
	lockWaits       *prometheus.CounterVec
	lockTakeovers   *prometheus.CounterVec
	rejections      *prometheus.CounterVec
	grantsLost      *prometheus.CounterVec
	grantExpiry     *prometheus.HistogramVec
	cacheErrors     *prometheus.CounterVec
	breaker         *prometheus.GaugeVec

	mu    sync.RWMutex
	conns map[string]*Conn
}

// New returns the metrics registered on a fresh registry, with the Go and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		GRPC:     NewServerMetrics(GRPCHandlingBuckets),
		getToken: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "get_token_total",
			Help: "GetToken calls by connection and outcome: l1_hit, shared_hit, fetched, or the gRPC error code."},
			[]string{"connection", "outcome"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "upstream_requests_total",
			Help: "Token endpoint requests by connection, grant type and HTTP status (\"error\" when no response)."},
			[]string{"connection", "grant_type", "status"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "upstream_request_duration_seconds",
			Help: "Token endpoint request latency by connection and grant type.", Buckets: prometheus.DefBuckets},
			[]string{"connection", "grant_type"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "refreshes_total",
			Help: "Upstream fetches by connection and trigger: ahead (background, before the skew point) or on_demand (a caller waited)."},
			[]string{"connection", "trigger"}),
		lockWaits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "lock_waits_total",
			Help: "Fetches that waited for another replica holding the key's lease."}, []string{"connection"}),
		lockTakeovers: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "lock_takeovers_total",
			Help: "Leases taken after waiting without receiving the holder's token (the holder died or failed)."}, []string{"connection"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "request_rejections_total",
			Help: "GetToken calls refused for the request's own sake, by connection and reason (the upstream's OAuth error, such as invalid_scope, or min_ttl): the caller's error, which leaves the connection's state alone."},
			[]string{"connection", "reason"}),
		grantsLost: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "grants_lost_total",
			Help: "Grants the upstream refused on refresh (revoked, expired or spent): an account needs a person or a new import."},
			[]string{"connection"}),
		grantExpiry: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "grant_seconds_until_expiry",
			Help:    "Seconds a grant had left before its refresh token dies when it was last written (refresh_token_expires_in or grant_idle_lifetime).",
			Buckets: []float64{60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400}},
			[]string{"connection"}),
		cacheErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "cache_errors_total",
			Help: "Shared cache operations that failed, by operation."}, []string{"op"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "upstream_breaker_open",
			Help: "1 while the connection's upstream circuit breaker is open or half-open."}, []string{"connection"}),
		conns: map[string]*Conn{},
	}
	// Series exist from the start, so rate() and alerts see a zero, not nothing.
	for _, op := range CacheOps {
		m.cacheErrors.WithLabelValues(op)
	}
	m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.GRPC, m.getToken, m.upstream, m.upstreamLatency, m.refreshes, m.lockWaits, m.lockTakeovers, m.rejections, m.grantsLost, m.grantExpiry, m.cacheErrors, m.breaker)
	return m
}

// SetBuildInfo exports tokenbroker_build_info{version,revision,goversion} 1,
// so dashboards can tell which build each replica runs. Call it once.
func (m *Metrics) SetBuildInfo(version, revision, goVersion string) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	}, func() float64 { return 1 }))
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Conn is one connection's pre-resolved counters.
type Conn struct {
	name                          string
	m                             *Metrics
	l1Hit, sharedHit, fetched     prometheus.Counter
	refreshAhead, refreshOnDemand prometheus.Counter
	lockWait, lockTakeover        prometheus.Counter
}

// Connection returns name's counters, creating them on first use for a
// configured name. Call it at start-up for every connection; at run time
// unknown names share the UnknownConnection entry.
func (m *Metrics) Connection(name string) *Conn {
	m.mu.RLock()
	c := m.conns[name]
	m.mu.RUnlock()
	if c != nil {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c = m.conns[name]; c == nil {
		c = &Conn{name: name, m: m,
			l1Hit: m.getToken.WithLabelValues(name, OutcomeL1Hit), sharedHit: m.getToken.WithLabelValues(name, OutcomeSharedHit),
			fetched: m.getToken.WithLabelValues(name, OutcomeFetched), refreshAhead: m.refreshes.WithLabelValues(name, "ahead"),
			refreshOnDemand: m.refreshes.WithLabelValues(name, "on_demand"), lockWait: m.lockWaits.WithLabelValues(name),
			lockTakeover: m.lockTakeovers.WithLabelValues(name)}
		m.breaker.WithLabelValues(name).Set(0)
		// The usual reasons exist from the start, so rate() sees a zero.
		m.rejections.WithLabelValues(name, "invalid_scope")
		m.rejections.WithLabelValues(name, "min_ttl")
		m.grantsLost.WithLabelValues(name)
		m.grantExpiry.WithLabelValues(name)
		m.conns[name] = c
	}
	return c
}

// Lookup returns the counters of a configured connection, or of
// UnknownConnection.
func (m *Metrics) Lookup(name string) *Conn {
	m.mu.RLock()
	c := m.conns[name]
	m.mu.RUnlock()
	if c == nil {
		return m.Connection(UnknownConnection)
	}
	return c
}

// Served counts a GetToken answered with outcome (one of the Outcome constants).
func (c *Conn) Served(outcome string) {
	switch outcome {
	case OutcomeL1Hit:
		c.l1Hit.Inc()
	case OutcomeSharedHit:
		c.sharedHit.Inc()
	default:
		c.fetched.Inc()
	}
}

// Failed counts a GetToken that failed with the gRPC code name.
func (c *Conn) Failed(code string) { c.m.getToken.WithLabelValues(c.name, code).Inc() }

// Refreshed counts an upstream fetch, ahead of time or on demand.
func (c *Conn) Refreshed(ahead bool) {
	if ahead {
		c.refreshAhead.Inc()
	} else {
		c.refreshOnDemand.Inc()
	}
}

// Rejected counts a request refused for its own sake (reason: an OAuth
// error code, or "min_ttl"). Off the hit path: the label lookup is fine.
func (c *Conn) Rejected(reason string) { c.m.rejections.WithLabelValues(c.name, reason).Inc() }

// GrantLost counts a grant the upstream refused on refresh.
func (c *Conn) GrantLost() { c.m.grantsLost.WithLabelValues(c.name).Inc() }

// GrantExpiry observes how long a grant just written has left.
func (c *Conn) GrantExpiry(left time.Duration) {
	c.m.grantExpiry.WithLabelValues(c.name).Observe(left.Seconds())
}

// LockWaited counts a fetch that found the lease held by another replica.
func (c *Conn) LockWaited() { c.lockWait.Inc() }

// LockTakenOver counts a lease taken after waiting in vain.
func (c *Conn) LockTakenOver() { c.lockTakeover.Inc() }

// BreakerChanged records the connection's breaker state.
func (c *Conn) BreakerChanged(state string) {
	v := 0.0
	if state != "closed" {
		v = 1
	}
	c.m.breaker.WithLabelValues(c.name).Set(v)
}

// CacheError counts a failed shared-cache operation.
func (m *Metrics) CacheError(op string) { m.cacheErrors.WithLabelValues(op).Inc() }

// Transport wraps base so every token endpoint request of connection is
// counted by grant type and status and timed.
func (m *Metrics) Transport(connection string, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripper{m: m, conn: connection, base: base}
}

type roundTripper struct {
	m    *Metrics
	conn string
	base http.RoundTripper
}

func (t roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	grant := grantType(r)
	start := time.Now()
	resp, err := t.base.RoundTrip(r)
	t.m.upstreamLatency.WithLabelValues(t.conn, grant).Observe(time.Since(start).Seconds())
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	t.m.upstream.WithLabelValues(t.conn, grant, status).Inc()
	return resp, err
}

// grantType reads grant_type from a replayable form body without consuming it.
func grantType(r *http.Request) string {
	if r.GetBody == nil {
		return "unknown"
	}
	body, err := r.GetBody()
	if err != nil {
		return "unknown"
	}
	defer body.Close()
	var buf [4096]byte
	n, _ := body.Read(buf[:])
	form, err := url.ParseQuery(string(buf[:n]))
	if err != nil || form.Get("grant_type") == "" {
		return "unknown"
	}
	switch g := form.Get("grant_type"); g {
	case "client_credentials", "password", "refresh_token", "authorization_code":
		return g
	default:
		return "other"
	}
}

// ConnectionState is what the state collector reports per connection.
type ConnectionState struct {
	Name string
	// State is "ready", "needs_authorization", "revoked" or "failing".
	State       string
	TokenExpiry time.Time
	// Accounts by state ("ready", …), for connections with accounts.
	Accounts map[string]int64
}

var states = []string{"ready", "needs_authorization", "revoked", "failing"}

// WatchConnections registers a collector that asks list at every scrape:
// seconds until the last token's expiry and the grant state per connection.
func (m *Metrics) WatchConnections(list func(ctx context.Context) []ConnectionState) {
	m.Registry.MustRegister(&stateCollector{list: list,
		expiry: prometheus.NewDesc(namespace+"_token_seconds_until_expiry",
			"Seconds until the last token this replica handed out for the connection expires (negative: expired).", []string{"connection"}, nil),
		state: prometheus.NewDesc(namespace+"_connection_state",
			"1 for the connection's current state (ready, needs_authorization, revoked, failing).", []string{"connection", "state"}, nil),
		accounts: prometheus.NewDesc(namespace+"_accounts",
			"Accounts (end users) of a connection that keeps grants, by state.", []string{"connection", "state"}, nil),
	})
}

type stateCollector struct {
	list                    func(ctx context.Context) []ConnectionState
	expiry, state, accounts *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.expiry
	ch <- c.state
	ch <- c.accounts
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	now := time.Now()
	for _, s := range c.list(ctx) {
		if !s.TokenExpiry.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, s.TokenExpiry.Sub(now).Seconds(), s.Name)
		}
		if s.Accounts != nil {
			for _, st := range states {
				ch <- prometheus.MustNewConstMetric(c.accounts, prometheus.GaugeValue, float64(s.Accounts[st]), s.Name, st)
			}
		}
		for _, st := range states {
			v := 0.0
			if st == s.State {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, s.Name, st)
		}
	}
}
