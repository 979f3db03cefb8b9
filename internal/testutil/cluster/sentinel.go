package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/testutil/redistest"
)

// MasterName is the name the Sentinels monitor the primary under.
const MasterName = "mymaster"

// Sentinel settings: short, so a failover takes seconds.
const (
	sentinelDownAfter       = 1000 * time.Millisecond
	sentinelFailoverTimeout = 5 * time.Second
	sentinelSetupTimeout    = 30 * time.Second
)

// A Sentinel is a primary redis-server, one replica of it and three
// redis-sentinel processes monitoring them (quorum 2), all on loopback.
type Sentinel struct {
	t       testing.TB
	Primary *redistest.Server
	Replica *redistest.Server
	procs   []*sentinelProc
}

type sentinelProc struct {
	addr string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartSentinel starts a primary and a replica (each with opts) and three
// Sentinels, and waits until every Sentinel knows the replica and the other
// two Sentinels, so a failover can happen. Everything stops when t ends.
func StartSentinel(t testing.TB, opts ...redistest.Option) *Sentinel {
	t.Helper()
	bin, args, err := sentinelCommand()
	if err != nil {
		t.Fatal(err)
	}
	s := &Sentinel{t: t}
	s.Primary = redistest.Start(t, opts...)
	host, port, _ := net.SplitHostPort(s.Primary.Addr())
	s.Replica = redistest.Start(t, append(opts, redistest.WithArgs("--replicaof", host, port))...)
	ctx, cancel := context.WithTimeout(context.Background(), sentinelSetupTimeout)
	defer cancel()
	rc := redis.NewClient(&redis.Options{Addr: s.Replica.Addr(), DialerRetries: 1})
	defer rc.Close()
	if err := poll(ctx, func() error {
		info, err := rc.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "master_link_status:up") {
			return errors.New("replication link not up")
		}
		return nil
	}); err != nil {
		t.Fatalf("cluster: replica of %s: %v", s.Primary.Addr(), err)
	}

	t.Cleanup(s.stop)
	for i := range 3 {
		p, err := startSentinel(t.TempDir(), bin, args, host, port)
		if err != nil {
			t.Fatalf("cluster: sentinel %d: %v", i, err)
		}
		s.procs = append(s.procs, p)
	}
	for _, p := range s.procs {
		sc := redis.NewSentinelClient(&redis.Options{Addr: p.addr, DialerRetries: 1})
		err := poll(ctx, func() error {
			m, err := sc.Master(ctx, MasterName).Result()
			if err != nil {
				return err
			}
			if m["num-slaves"] != "1" || m["num-other-sentinels"] != "2" {
				return fmt.Errorf("sees %s replicas and %s other sentinels; want 1 and 2", m["num-slaves"], m["num-other-sentinels"])
			}
			return nil
		})
		_ = sc.Close()
		if err != nil {
			t.Fatalf("cluster: sentinel %s not ready: %v\n%s", p.addr, err, tail(readFile(p.log), 20))
		}
	}
	return s
}

// Addrs are the Sentinels' addresses.
func (s *Sentinel) Addrs() []string {
	var out []string
	for _, p := range s.procs {
		out = append(out, p.addr)
	}
	return out
}

// MasterName is the name the Sentinels know the primary by.
func (s *Sentinel) MasterName() string { return MasterName }

// MasterAddr asks the first Sentinel that answers for the primary's address.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var errs []error
	for _, p := range s.procs {
		sc := redis.NewSentinelClient(&redis.Options{Addr: p.addr, DialerRetries: 1})
		a, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
		_ = sc.Close()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
}

// WaitFailover waits (at most timeout) until every Sentinel names a
// primary other than old and that server answers as a primary. It returns
// the new primary's address.
func (s *Sentinel) WaitFailover(old string, timeout time.Duration) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var addr string
	err := poll(ctx, func() error {
		addr = ""
		for _, p := range s.procs {
			sc := redis.NewSentinelClient(&redis.Options{Addr: p.addr, DialerRetries: 1})
			a, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
			_ = sc.Close()
			if err != nil {
				return err
			}
			got := net.JoinHostPort(a[0], a[1])
			if got == old {
				return fmt.Errorf("sentinel %s still names %s", p.addr, old)
			}
			if addr != "" && got != addr {
				return fmt.Errorf("sentinels disagree: %s, %s", addr, got)
			}
			addr = got
		}
		rc := redis.NewClient(&redis.Options{Addr: addr, DialerRetries: 1})
		defer rc.Close()
		info, err := rc.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "role:master") {
			return fmt.Errorf("%s is not a primary yet", addr)
		}
		return nil
	})
	if err != nil {
		var logs strings.Builder
		for _, p := range s.procs {
			fmt.Fprintf(&logs, "sentinel %s:\n%s\n", p.addr, tail(readFile(p.log), 15))
		}
		s.t.Fatalf("cluster: no failover from %s within %v: %v\n%s", old, timeout, err, logs.String())
	}
	return addr
}

func (s *Sentinel) stop() {
	for _, p := range s.procs {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(ExitTimeout):
		}
	}
}

// sentinelCommand is redis-sentinel, or redis-server --sentinel.
func sentinelCommand() (string, []string, error) {
	if p, err := exec.LookPath("redis-sentinel"); err == nil {
		return p, nil, nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, []string{"--sentinel"}, nil
	}
	return "", nil, errors.New(`redis-sentinel not found: install it with "apt-get install -y redis-sentinel"`)
}

func startSentinel(dir, bin string, args []string, host, port string) (*sentinelProc, error) {
	var err error
	for range 5 {
		var p *sentinelProc
		if p, err = tryStartSentinel(dir, bin, args, host, port); err == nil {
			return p, nil
		}
		if !strings.Contains(err.Error(), "already in use") {
			break
		}
	}
	return nil, err
}

func tryStartSentinel(dir, bin string, args []string, host, port string) (*sentinelProc, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	own := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	// Sentinel rewrites its configuration file: it must be writable.
	conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", own))
	text := fmt.Sprintf(`port %d
bind 127.0.0.1
daemonize no
logfile ""
dir %q
sentinel monitor %s %s %s 2
sentinel down-after-milliseconds %s %d
sentinel failover-timeout %s %d
sentinel parallel-syncs %s 1
`, own, dir, MasterName, host, port, MasterName, sentinelDownAfter.Milliseconds(),
		MasterName, sentinelFailoverTimeout.Milliseconds(), MasterName)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, fmt.Sprintf("sentinel-%d.log", own))
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, append(append([]string{}, conf), args...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &sentinelProc{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(own)), log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = poll(ctx, func() error {
		select {
		case <-p.done:
			return errStopPolling
		default:
		}
		return ping(p.addr)
	})
	if err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		log := readFile(logPath)
		if strings.Contains(log, "Address already in use") {
			return nil, errors.New("address already in use")
		}
		return nil, fmt.Errorf("not answering on %s: %v\n%s", p.addr, err, tail(log, 20))
	}
	return p, nil
}

var errStopPolling = errors.New("process exited")

// poll calls f with backoff until it returns nil, errStopPolling, or ctx
// ends; it returns f's last error.
func poll(ctx context.Context, f func() error) error {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 250*time.Millisecond) {
		err := f()
		if err == nil || errors.Is(err, errStopPolling) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// ping sends PING over a fresh connection.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("+PONG")) {
		return fmt.Errorf("PING: %q", bytes.TrimSpace(line))
	}
	return nil
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
