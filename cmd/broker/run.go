package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/cache"
	"github.com/tokenbroker/tokenbroker/internal/cache/memory"
	rediscache "github.com/tokenbroker/tokenbroker/internal/cache/redis"
	"github.com/tokenbroker/tokenbroker/internal/cache/sealed"
	"github.com/tokenbroker/tokenbroker/internal/config"
	healthcheck "github.com/tokenbroker/tokenbroker/internal/health"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/builtin"
	"github.com/tokenbroker/tokenbroker/internal/reqlog"
	"github.com/tokenbroker/tokenbroker/internal/secret"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/tlsutil"
	"github.com/tokenbroker/tokenbroker/internal/tracing"
)

// version and revision are set at build time with -ldflags
// "-X main.version=… -X main.revision=…" (the Makefile and Dockerfile do).
// Without a revision, the one go build stamped (vcs.revision) is used.
var (
	version  = "dev"
	revision = ""
)

type options struct {
	configFile    string
	checkConfig   bool
	demo          bool
	showVersion   bool
	grpcAddr      string
	adminAddr     string
	callbackAddr  string
	shutdownDelay time.Duration
	drainTimeout  time.Duration
	cpuProfile    string
	memProfile    string
	health        healthCheckOptions
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configFile, "config", "", "configuration `file` (YAML)")
	fs.BoolVar(&o.checkConfig, "check-config", false, "validate the configuration, read its secrets, and exit")
	fs.BoolVar(&o.demo, "demo", false, "serve tokens from built-in upstream emulators (connections demo-*)")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	fs.StringVar(&o.grpcAddr, "grpc-addr", "", "gRPC listen `address` (overrides listen.grpc; default "+config.DefaultGRPCAddr+")")
	fs.StringVar(&o.adminAddr, "admin-addr", "", "admin HTTP listen `address` (overrides listen.admin; default "+config.DefaultAdminAddr+")")
	fs.StringVar(&o.callbackAddr, "callback-addr", "", "OAuth callback listen `address` (overrides listen.callback; \"off\" turns it off)")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 0, "on SIGTERM, report not ready and keep serving this long before draining")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 25*time.Second, "on SIGTERM, wait this long for in-flight calls")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile to `file` until the broker stops (for benchmarks)")
	fs.StringVar(&o.memProfile, "memprofile", "", "write a heap profile to `file` when the broker stops: what was live at the last collection while serving (for benchmarks)")
	o.health.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.configFile == "" && !o.demo && !o.showVersion && o.health.addr == "" {
		return nil, errors.New("one of -config FILE or -demo is required")
	}
	return &o, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		// The live heap is small (tokens, grants, gRPC buffers: a few MB),
		// so GOGC=100 collects very often under load; 400 costs a few MB and
		// saves CPU on every call (BENCHMARKS.md). GOGC in the environment wins.
		debug.SetGCPercent(config.DefaultGCPercent)
	}
	if o.showVersion {
		fmt.Fprintln(stderr, "tokenbroker", buildVersion())
		return nil
	}
	if o.health.addr != "" {
		return o.health.run(ctx, stderr)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	if o.memProfile != "" {
		f, err := os.Create(o.memProfile)
		if err != nil {
			return fmt.Errorf("memprofile: %w", err)
		}
		// No collection first: the profile's live heap is as of the last
		// one while serving, not after the broker let go of everything.
		defer func() { _ = pprof.Lookup("heap").WriteTo(f, 0); _ = f.Close() }()
	}
	reg := builtin.Registry()
	var cfg *config.Config
	if o.configFile != "" {
		data, err := os.ReadFile(o.configFile)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		if cfg, err = config.ParseAndCheckSecrets(data, reg, secret.Loader{}); err != nil {
			return fmt.Errorf("config %s has problems:\n%w", o.configFile, err)
		}
	}
	loader := secret.Loader{}
	level := "info"
	if cfg != nil {
		level = cfg.Log.Level
	}
	log := newLogger(stderr, level)
	var permErr error // secret files readable by too many people
	if cfg != nil {
		permErr = secretPermissions(cfg, log)
	}
	var callbackListening func(net.Addr) // the demo's emulators redirect there
	if o.demo {
		d, err := startDemo(ctx, log)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		defer d.Close()
		cfg = d.merge(cfg)
		loader = d.loader()
		callbackListening = d.setCallbackAddr
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("demo config: %w", err)
		}
	}
	if o.grpcAddr != "" {
		cfg.Listen.GRPC = o.grpcAddr
	}
	if o.adminAddr != "" {
		cfg.Listen.Admin = o.adminAddr
	}
	if o.callbackAddr != "" {
		cfg.Listen.Callback = o.callbackAddr
	}
	m := metrics.New()
	m.SetBuildInfo(version, buildRevision(), runtime.Version())
	tcfg := cfg.Tracing
	if o.checkConfig {
		tcfg.Enabled = false // -check-config validates; it sets up no exporter
	}
	tr, err := tracing.Start(ctx, tcfg, version)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tr.Shutdown(sctx)
	}()
	conns, err := openConnections(cfg, loader, log, m, tr)
	if o.checkConfig {
		// Serving would fail on these when it opens the cache; say so now,
		// with the connections' problems.
		errs := append([]error{err}, config.CheckServiceSecrets(cfg, loader)...)
		err = errors.Join(append(errs, checkTLSFiles(cfg, log)...)...)
	}
	if err = errors.Join(err, permErr); err != nil {
		return fmt.Errorf("config has problems:\n%w", err)
	}
	callbackAddr := cfg.Listen.CallbackAddr(needsCallback(conns))
	if o.checkConfig {
		fmt.Fprintf(stderr, "configuration OK: %d connections\n", len(conns))
		return nil
	}
	c, err := openCache(cfg, loader, log)
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := broker.New(broker.Options{
		Cache: c, Connections: conns, Logger: log, Metrics: m,
		// A cached token's GetToken response is marshaled once (issue 16),
		// and sent as it is by server.Codec.
		Encode:              server.EncodeToken,
		FetchTimeout:        cfg.Broker.FetchTimeout.Duration,
		LeaseTTL:            cfg.Broker.LeaseTTL.Duration,
		L1MaxAge:            cfg.Broker.L1MaxAge.Duration,
		RejectionTTL:        cfg.Broker.RememberRejections.Duration,
		DisableRefreshAhead: !*cfg.Broker.RefreshAhead,
	})
	if err != nil {
		return err
	}
	defer b.Close()
	m.WatchConnections(func(ctx context.Context) []metrics.ConnectionState {
		infos := b.Connections(ctx)
		out := make([]metrics.ConnectionState, len(infos))
		for i, info := range infos {
			out[i] = metrics.ConnectionState{Name: info.Name, State: stateName(info.State), TokenExpiry: info.TokenExpiry}
			if info.Accounts != nil {
				out[i].Accounts = make(map[string]int64, len(info.Accounts))
				for st, n := range info.Accounts {
					out[i].Accounts[stateName(st)] = n
				}
			}
		}
		return out
	})
	return serve(ctx, o, cfg, b, c, log, m, tr, callbackAddr, callbackListening)
}

// needsCallback reports whether a connection gets its grant through a
// browser redirect (an authorization-code connection).
func needsCallback(conns []broker.Connection) bool {
	for _, c := range conns {
		if _, ok := c.Provider.(providers.Authorizer); ok {
			return true
		}
	}
	return false
}

// secretPermissions logs a warning for each secret file readable by more
// people than need it, or returns them all as an error with
// secrets.strict_permissions.
func secretPermissions(cfg *config.Config, log *slog.Logger) error {
	errs := config.CheckSecretPermissions(cfg)
	if cfg.Secrets.StrictPermissions {
		return errors.Join(errs...)
	}
	for _, err := range errs {
		log.Warn("secret file readable by more than the broker (secrets.strict_permissions: true makes this an error)", "problem", err.Error())
	}
	return nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(reqlog.NewHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l, ReplaceAttr: reqlog.ReplaceAttr})))
}

// openConnections opens every connection's provider, reading its secrets,
// and reports every failure at once.
func openConnections(cfg *config.Config, loader secret.Loader, log *slog.Logger, m *metrics.Metrics, tr *tracing.Tracing) ([]broker.Connection, error) {
	base := tr.Transport(http.DefaultTransport.(*http.Transport).Clone())
	var conns []broker.Connection
	var errs []error
	for i, cc := range cfg.Connections {
		p, err := cc.Provider.Open(providers.Env{
			Name:       cc.Name,
			Now:        time.Now,
			HTTPClient: &http.Client{Transport: m.Transport(cc.Name, base)},
			Logger:     log.With("connection", cc.Name),
			Secrets:    loader,
		})
		if err != nil {
			errs = append(errs, config.OpenError(i, cc.Name, err))
			continue
		}
		conns = append(conns, broker.Connection{Name: cc.Name, Type: cc.Type, Provider: p, Skew: cc.Skew.Duration,
			GrantIdleLifetime: cc.GrantIdleLifetime.Duration})
	}
	return conns, errors.Join(errs...)
}

// openCache opens the shared store and, when keys are configured, wraps it
// so every value is encrypted at rest.
func openCache(cfg *config.Config, loader secret.Loader, log *slog.Logger) (cache.Cache, error) {
	var kr *sealed.Keyring
	if cfg.Encryption.Enabled() {
		var err error
		if kr, err = cfg.Encryption.Load(loader); err != nil {
			return nil, fmt.Errorf("encryption: %w", err)
		}
	}
	var c cache.Cache
	switch cfg.Cache.Type {
	case "redis":
		r := cfg.Cache.Redis
		rc := rediscache.ClientConfig{
			Addrs: r.Addrs, MasterName: r.MasterName, Cluster: r.Cluster,
			Username: r.Username, SentinelUsername: r.SentinelUsername, DB: r.DB,
			DialTimeout: r.DialTimeout.Duration, OpTimeout: r.OpTimeout.Duration,
		}
		if !r.Password.IsZero() {
			pw, err := loader.Load(r.Password)
			if err != nil {
				return nil, fmt.Errorf("cache.redis.password: %w", err)
			}
			rc.Password = pw.Reveal()
		}
		if !r.SentinelPassword.IsZero() {
			pw, err := loader.Load(r.SentinelPassword)
			if err != nil {
				return nil, fmt.Errorf("cache.redis.sentinel_password: %w", err)
			}
			rc.SentinelPassword = pw.Reveal()
		}
		if r.TLS.Enabled {
			tc, err := r.TLS.TLSConfig()
			if err != nil {
				return nil, fmt.Errorf("cache.redis.tls: %w", err)
			}
			rc.TLS = tc
		}
		rcache, err := rediscache.New(rediscache.Options{Client: rediscache.NewClient(rc), Prefix: r.KeyPrefix})
		if err != nil {
			return nil, err
		}
		c = rcache
		if kr == nil {
			log.Warn("encryption.insecure_plaintext is set: tokens, refresh tokens and device secrets are stored in Redis in plaintext")
		}
	default:
		mc, err := memory.New(memory.Options{StateFile: cfg.Cache.StateFile})
		if err != nil {
			return nil, fmt.Errorf("cache.state_file: %w", err)
		}
		c = mc
		if kr == nil && cfg.Cache.StateFile != "" {
			log.Warn("cache.state_file without encryption.keys: refresh tokens and device secrets are written to the state file in plaintext (mode 0600)")
		}
	}
	if kr != nil {
		log.Info("encryption at rest on", "keys", kr.IDs(), "primary", kr.Primary())
		c = sealed.New(c, kr, nil)
	}
	return c, nil
}

// checkTLSFiles loads the certificates and keys the configuration names, as
// serving would.
func checkTLSFiles(cfg *config.Config, log *slog.Logger) []error {
	var errs []error
	if cfg.TLS.Enabled() {
		r, err := tlsutil.NewReloader(cfg.TLS, log)
		if err != nil {
			errs = append(errs, fmt.Errorf("tls: %w", err))
		} else {
			r.Close()
		}
	}
	if rt := cfg.Cache.Redis.TLS; cfg.Cache.Type == "redis" && rt.Enabled {
		if _, err := rt.TLSConfig(); err != nil {
			errs = append(errs, fmt.Errorf("cache.redis.tls: %w", err))
		}
	}
	return errs
}

// serve runs the gRPC, admin and (unless callbackAddr is "") callback
// servers until ctx is done. callbackListening, if not nil, learns the
// callback server's address once it listens.
func serve(ctx context.Context, o *options, cfg *config.Config, b *broker.Broker, c cache.Cache, log *slog.Logger,
	m *metrics.Metrics, tr *tracing.Tracing, callbackAddr string, callbackListening func(net.Addr)) error {
	grpcLis, err := net.Listen("tcp", cfg.Listen.GRPC)
	if err != nil {
		return fmt.Errorf("listen.grpc: %w", err)
	}
	defer grpcLis.Close()
	adminLis, err := net.Listen("tcp", cfg.Listen.Admin)
	if err != nil {
		return fmt.Errorf("listen.admin: %w", err)
	}
	defer adminLis.Close()
	var callbackLis net.Listener
	if callbackAddr != "" {
		if callbackLis, err = net.Listen("tcp", callbackAddr); err != nil {
			return fmt.Errorf("listen.callback: %w", err)
		}
		defer callbackLis.Close()
		if callbackListening != nil {
			callbackListening(callbackLis.Addr())
		}
	}

	authn, err := auth.New(cfg.Auth)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(64 << 10),
		grpc.ForceServerCodecV2(server.Codec()),
		// reqlog, the gRPC metrics and auth folded into one (issue 16).
		grpc.ChainUnaryInterceptor(server.UnaryInterceptor(log, m.GRPC, authn)),
		grpc.ChainStreamInterceptor(m.GRPC.StreamServerInterceptor(), authn.StreamInterceptor(server.RefusalStatus)),
	}
	if n := cfg.Listen.GRPCStreamWorkers; n != nil && *n > 0 {
		sopts = append(sopts, grpc.NumStreamWorkers(uint32(*n)))
	}
	sopts = append(sopts, tr.ServerOptions()...)
	var adminTLS *tls.Config
	if cfg.TLS.Enabled() {
		grpcTLS, err := tlsutil.NewReloader(cfg.TLS, log)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		defer grpcTLS.Close()
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(grpcTLS.TLSConfig())))
		// The admin port shares the certificate but asks for no client
		// certificate: kubelet probes and Prometheus have none.
		adminCfg := cfg.TLS
		adminCfg.ClientCAFile, adminCfg.ClientAuth = "", ""
		adminReloader, err := tlsutil.NewReloader(adminCfg, log)
		if err != nil {
			return fmt.Errorf("tls (admin): %w", err)
		}
		defer adminReloader.Close()
		adminTLS = adminReloader.TLSConfig()
	}
	if adminTLS != nil {
		adminLis = tls.NewListener(adminLis, adminTLS)
		if callbackLis != nil {
			callbackLis = tls.NewListener(callbackLis, adminTLS)
		}
	}
	gs := grpc.NewServer(sopts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	server.RegisterService(gs, server.New(server.Config{Broker: b, Logger: log, Metrics: m}))
	m.GRPC.InitializeMetrics(gs)
	hs.SetServingStatus(tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	var draining atomic.Bool
	cacheHealth := watchCache(ctx, c, hs, log)
	defer cacheHealth.Stop()
	admin := &http.Server{
		Handler:           adminHandler(cacheHealth, m, &draining),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// The callback has a port of its own, so that publishing it (the
	// browser must reach it) publishes nothing else.
	callback := &http.Server{
		Handler:           callbackHandler(b, log),
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 3)
	go func() { errc <- gs.Serve(grpcLis) }()
	go func() { errc <- admin.Serve(adminLis) }()
	callbackShown := config.CallbackOff
	if callbackLis != nil {
		go func() { errc <- callback.Serve(callbackLis) }()
		callbackShown = callbackLis.Addr().String()
	}
	log.Info("serving", "grpc_addr", grpcLis.Addr().String(), "admin_addr", adminLis.Addr().String(),
		"callback_addr", callbackShown, "version", buildVersion())

	select {
	case err := <-errc:
		gs.Stop()
		_ = admin.Close()
		_ = callback.Close()
		return fmt.Errorf("server stopped: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: no longer ready", "shutdown_delay", o.shutdownDelay)
	draining.Store(true)
	hs.Shutdown() // every service reports NOT_SERVING
	time.Sleep(o.shutdownDelay)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(o.drainTimeout):
		log.Warn("drain timeout: closing remaining calls", "drain_timeout", o.drainTimeout)
		gs.Stop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = admin.Shutdown(sctx)
	_ = callback.Shutdown(sctx)
	log.Info("stopped")
	return nil
}

// callbackHandler serves GET /oauth2/callback and nothing else.
func callbackHandler(b *broker.Broker, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(server.CallbackPath, server.NewCallbackHandler(b, log)) // any method: the handler answers 405
	return mux
}

// adminHandler serves /metrics, /healthz and /readyz: keep it inside the
// cluster.
func adminHandler(cacheHealth *healthcheck.Checker, m *metrics.Metrics, draining *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "ok\nversion %s\n", buildVersion())
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if draining.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		// Answered from the background checker's state, never by asking
		// Redis: a hung Redis must not make the probe time out.
		if s := cacheHealth.State(); !s.Healthy {
			// Still ready: warm tokens come from memory and cold ones
			// straight from the upstream. Taking every replica out of
			// the Service because Redis is down would be an outage.
			fmt.Fprintf(w, "degraded: shared cache unreachable since %s; serving from memory and upstream\n",
				s.Since.UTC().Format(time.RFC3339))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

func stateName(s broker.ConnectionState) string {
	switch s {
	case broker.StateNeedsAuthorization:
		return "needs_authorization"
	case broker.StateRevoked:
		return "revoked"
	case broker.StateFailing:
		return "failing"
	}
	return "ready"
}

// CacheHealthService is the grpc.health.v1 service name that reports the
// shared cache: NOT_SERVING while it is unreachable (the broker itself keeps
// serving, degraded).
const CacheHealthService = "tokenbroker.v1.SharedCache"

// watchCache checks the shared cache in the background (internal/health:
// a ping every 500 ms with a 500 ms budget) and reports it through the
// health service and the log as it changes. /readyz reads the returned
// checker's state.
func watchCache(ctx context.Context, c cache.Cache, hs *health.Server, log *slog.Logger) *healthcheck.Checker {
	healthy := true
	return healthcheck.Start(ctx, healthcheck.Options{Ping: c.Ping, OnChange: func(s healthcheck.State) {
		switch {
		case !s.Healthy:
			log.Warn("shared cache unreachable: serving degraded", "err", s.Err)
			hs.SetServingStatus(CacheHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
		case !healthy:
			log.Info("shared cache reachable again")
			fallthrough
		default:
			hs.SetServingStatus(CacheHealthService, healthpb.HealthCheckResponse_SERVING)
		}
		healthy = s.Healthy
	}})
}

func buildVersion() string {
	v := version
	if r := buildRevision(); len(r) >= 12 {
		v += " (" + r[:12] + ")"
	}
	return v + " " + runtime.Version()
}

// buildRevision is the VCS revision the binary was built from: the ldflags
// value, else the one go build stamped, else "unknown".
func buildRevision() string {
	if revision != "" {
		return revision
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				return s.Value
			}
		}
	}
	return "unknown"
}
