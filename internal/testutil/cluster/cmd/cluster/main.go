// Command cluster runs the multi-replica test setup by hand: a redis-server
// (or a primary, a replica and three Sentinels), the client_credentials and
// WX upstream emulators, and N broker processes, all on loopback. It prints
// their addresses and then reads commands from standard input until "quit",
// end of input or Ctrl-C; everything it started stops when it exits.
//
//	go run ./internal/testutil/cluster/cmd/cluster -replicas 3
//	go run ./internal/testutil/cluster/cmd/cluster -sentinel -logs
//
// Commands: kill N, term N, restart N (broker N), redis-kill,
// redis-restart, failover (Sentinel: kill the primary), status, quit.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/testutil/cluster"
	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

func main() {
	replicas := flag.Int("replicas", 3, "number of broker processes")
	sentinel := flag.Bool("sentinel", false, "Redis primary + replica + 3 Sentinels instead of one redis-server")
	persist := flag.Bool("persist", false, "Redis with an fsynced append-only file (survives redis-restart)")
	race := flag.Bool("race", false, "build the brokers with the race detector")
	logs := flag.Bool("logs", false, "copy the brokers' logs to standard error")
	leaseTTL := flag.Duration("lease-ttl", 0, "broker.lease_ttl (0: the broker's default)")
	l1MaxAge := flag.Duration("l1-max-age", 0, "broker.l1_max_age (0: the broker's default)")
	ccLifetime := flag.Duration("cc-lifetime", time.Hour, "lifetime of the client_credentials emulator's tokens")
	shutdownDelay := flag.Duration("shutdown-delay", time.Second, "the brokers' -shutdown-delay")
	flag.Parse()
	log.SetFlags(log.Ltime)

	t := &handTB{}
	code := run(t, *replicas, *sentinel, *persist, *race, *logs, *leaseTTL, *l1MaxAge, *ccLifetime, *shutdownDelay)
	t.runCleanups()
	cluster.RemoveBinaries()
	os.Exit(code)
}

func run(t *handTB, replicas int, sentinel, persist, race, logs bool, leaseTTL, l1MaxAge, ccLifetime, shutdownDelay time.Duration) int {
	ccSecret := random(24)
	cc := ccemu.New(ccemu.Options{ClientID: "cluster-demo", ClientSecret: ccSecret, Lifetime: ccLifetime})
	ccSrv := httptest.NewServer(cc)
	t.Cleanup(ccSrv.Close)
	wx := wxemu.New(wxemu.Options{ClientID: "wx.network", Rotation: true})
	wxSrv := httptest.NewServer(wx)
	t.Cleanup(wxSrv.Close)

	var ropts []redistest.Option
	if persist {
		ropts = append(ropts, redistest.WithPersistence())
	}
	o := cluster.Options{
		Replicas: replicas,
		Connections: []cluster.Connection{
			cluster.ClientCredentials("demo-cc", ccSrv.URL+ccemu.TokenPath, "cluster-demo", ccSecret),
			cluster.WX("demo-wx", wxSrv.URL+wxemu.TokenPath, "wx.network", random(32)),
		},
		RedisOptions: ropts,
		BrokerArgs:   []string{"-shutdown-delay", shutdownDelay.String()},
		LeaseTTL:     leaseTTL,
		L1MaxAge:     l1MaxAge,
		Race:         race,
	}
	var s *cluster.Sentinel
	if sentinel {
		s = cluster.StartSentinel(t, ropts...)
		o.Sentinel = s
	}
	if logs {
		o.Logs = os.Stderr
	}
	log.Printf("building and starting %d brokers…", replicas)
	c := cluster.Start(t, o)

	status := func() {
		if s != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			addr, err := s.MasterAddr(ctx)
			cancel()
			fmt.Printf("sentinels    %s (master %s: %s %v)\n", strings.Join(s.Addrs(), " "), s.MasterName(), addr, err)
			fmt.Printf("redis        started as primary %s, replica %s\n", s.Primary.Addr(), s.Replica.Addr())
		} else {
			fmt.Printf("redis        %s\n", c.Redis().Addr())
		}
		fmt.Printf("key prefix   %s (values sealed with a random key)\n", c.KeyPrefix())
		fmt.Printf("upstreams    demo-cc %s  (requests so far: %d)\n", ccSrv.URL, cc.Requests())
		fmt.Printf("             demo-wx %s  (password grants %d, refreshes %d)\n", wxSrv.URL,
			wx.Count(wxemu.GrantPassword), wx.Count(wxemu.GrantRefreshToken))
		for i := range c.N() {
			r := c.Replica(i)
			state := "stopped"
			if r.Running() {
				state = "pid " + strconv.Itoa(r.PID())
			}
			fmt.Printf("broker %d     grpc %s  admin http://%s  (%s)\n", i, r.Addr(), r.AdminAddr(), state)
		}
	}
	status()
	fmt.Printf("\ntry:  grpcurl -plaintext -d '{\"connection\":\"demo-cc\",\"scopes\":[\"read\"]}' %s tokenbroker.v1.TokenBrokerService/GetToken\n", c.Replica(0).Addr())
	fmt.Printf("      curl -s http://%s/readyz\n", c.Replica(0).AdminAddr())
	fmt.Println("commands: kill N | term N | restart N | redis-kill | redis-restart | failover | status | quit")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		var line string
		var ok bool
		select {
		case <-ctx.Done():
			log.Print("interrupted: stopping everything")
			return 0
		case line, ok = <-lines:
			if !ok {
				<-ctx.Done() // stdin closed (e.g. run in the background): wait for a signal
				return 0
			}
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		n := -1
		if len(f) > 1 {
			if v, err := strconv.Atoi(f[1]); err == nil && v >= 0 && v < c.N() {
				n = v
			}
		}
		switch {
		case f[0] == "quit" || f[0] == "exit":
			return 0
		case f[0] == "status":
			status()
		case f[0] == "kill" && n >= 0:
			c.Kill(n)
			log.Printf("broker %d killed", n)
		case f[0] == "term" && n >= 0:
			log.Printf("broker %d exited: %v", n, c.Term(n))
		case f[0] == "restart" && n >= 0:
			c.Restart(n)
			log.Printf("broker %d serving again on %s", n, c.Replica(n).Addr())
		case f[0] == "redis-kill" && s == nil:
			c.Redis().Kill()
			log.Print("redis killed")
		case f[0] == "redis-restart" && s == nil:
			c.Redis().Restart(t)
			log.Print("redis restarted")
		case f[0] == "failover" && s != nil:
			old := s.Primary.Addr()
			s.Primary.Kill()
			log.Printf("primary %s killed; new primary %s", old, s.WaitFailover(old, time.Minute))
		default:
			fmt.Println("commands: kill N | term N | restart N | redis-kill | redis-restart | failover | status | quit")
		}
	}
}

func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// handTB lets the test helpers run outside a test: Cleanup collects
// functions for runCleanups, TempDir makes directories it removes, and
// Fatal prints, cleans up and exits. Other testing.TB methods panic (the
// embedded interface is nil); the helpers do not use them.
type handTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (t *handTB) Helper()      {}
func (t *handTB) Name() string { return "cluster" }

func (t *handTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *handTB) TempDir() string {
	d, err := os.MkdirTemp("", "tokenbroker-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func (t *handTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *handTB) Log(args ...any)                 { log.Print(args...) }
func (t *handTB) Logf(format string, args ...any) { log.Printf(format, args...) }

func (t *handTB) Error(args ...any) { t.fail(); log.Print(args...) }

func (t *handTB) Errorf(format string, args ...any) { t.fail(); log.Printf(format, args...) }

func (t *handTB) Fatal(args ...any) { t.Error(args...); t.exit() }

func (t *handTB) Fatalf(format string, args ...any) { t.Errorf(format, args...); t.exit() }

func (t *handTB) fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

func (t *handTB) exit() {
	t.runCleanups()
	cluster.RemoveBinaries()
	os.Exit(1)
}

// runCleanups runs the cleanups, last registered first, once.
func (t *handTB) runCleanups() {
	for {
		t.mu.Lock()
		if len(t.cleanups) == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[len(t.cleanups)-1]
		t.cleanups = t.cleanups[:len(t.cleanups)-1]
		t.mu.Unlock()
		f()
	}
}
