// Package redistest starts real redis-server processes for tests, each on a
// free loopback port with its own directory, stopped when the test ends.
//
// A missing redis-server binary fails the test rather than skipping it: a
// skipped backend is an untested backend.
package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// NotFoundMessage is how a test fails when redis-server is not on PATH.
const NotFoundMessage = `redis-server not found: install it with "apt-get install -y redis-server"`

const (
	startAttempts = 5                // ports tried before giving up
	readyTimeout  = 10 * time.Second // for one start to answer PING
	stopTimeout   = 10 * time.Second // for SIGTERM before SIGKILL
	logTailLines  = 20
)

// An Option changes how Start runs redis-server.
type Option func(*options)

type options struct {
	persist bool
	args    []string
}

// WithPersistence turns on the append-only file (fsynced on every write), so
// that data survives Restart, and Kill followed by Restart.
func WithPersistence() Option { return func(o *options) { o.persist = true } }

// WithArgs appends command-line arguments, as redis-server takes them
// ("--requirepass", "pw"); later ones override the defaults. Readiness is
// judged by PING, which counts an authentication error as an answer, so
// arguments that require a password work.
func WithArgs(args ...string) Option {
	return func(o *options) { o.args = append(o.args, args...) }
}

// A Server is a running redis-server. Its methods are safe for concurrent
// use.
type Server struct {
	bin  string
	dir  string // data directory, kept across restarts; also holds the log
	log  string
	args []string // everything but --port

	mu   sync.Mutex
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start starts redis-server on a free 127.0.0.1 port and waits until it
// answers PING. By default it keeps no data on disk (--save "" --appendonly
// no) and works in t.TempDir(). The server is killed when t ends. Start fails
// t when redis-server is missing or does not come up; the message then holds
// the end of the server's log.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(NotFoundMessage)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir := t.TempDir()
	s := &Server{bin: bin, dir: dir, log: filepath.Join(dir, "redis.log")}
	s.args = []string{
		"--bind", "127.0.0.1",
		"--daemonize", "no",
		"--dir", dir,
		"--logfile", "", // log to stdout, which goes to s.log
		"--save", "",
	}
	if o.persist {
		s.args = append(s.args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		s.args = append(s.args, "--appendonly", "no")
	}
	s.args = append(s.args, o.args...)
	t.Cleanup(s.Kill)

	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: pick a port: %v", err)
		}
		err = s.start(port)
		if err == nil {
			return s
		}
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			t.Fatalf("redistest: start redis-server: %v%s", err, s.logTail())
		}
	}
}

// Addr returns the server's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Dir returns the server's working directory, which holds its data files
// and its log (redis.log).
func (s *Server) Dir() string { return s.dir }

// Stop shuts the server down with SIGTERM and waits for it to exit,
// escalating to SIGKILL after a while. Stopping a stopped server does
// nothing.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

// Kill kills the server with SIGKILL and waits for it to exit, as a crash
// would. Killing a stopped server does nothing.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

// Restart stops the server if it is running and starts it again on the same
// port with the same directory, so that a server started WithPersistence
// comes back with its data. It fails t if the server does not come up.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.mu.Lock()
	port := s.port
	s.mu.Unlock()
	var err error
	// The port may linger briefly after the old process exits.
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if err = s.start(port); !errors.Is(err, errAddrInUse) {
			break
		}
		time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("redistest: restart redis-server: %v%s", err, s.logTail())
	}
}

// Client returns a client of the server, closed when t ends. It dials once
// per command attempt, so that commands to a stopped server fail fast.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), DialerRetries: 1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var errAddrInUse = errors.New("address already in use")

// start runs redis-server on port and waits until it answers.
func (s *Server) start(port int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("already running")
	}
	logf, err := os.OpenFile(s.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "--- redistest: starting on port %d\n", port)
	cmd := exec.Command(s.bin, append([]string{"--port", strconv.Itoa(port)}, s.args...)...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.port, s.cmd, s.done = port, cmd, done

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(readyTimeout)
	for backoff := 5 * time.Millisecond; ; backoff = min(2*backoff, 100*time.Millisecond) {
		err := ping(addr)
		if err == nil {
			return nil
		}
		select {
		case <-done:
			s.cmd, s.done = nil, nil
			if bytes.Contains(s.readLog(), []byte("Address already in use")) {
				return fmt.Errorf("port %d: %w", port, errAddrInUse)
			}
			return fmt.Errorf("redis-server exited: %s", cmd.ProcessState)
		case <-time.After(backoff):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			s.cmd, s.done = nil, nil
			return fmt.Errorf("no answer to PING on %s within %v (last: %v)", addr, readyTimeout, err)
		}
	}
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd, s.done = nil, nil
}

// ping sends PING over a fresh connection. Any reply but an error meaning
// "not ready yet" counts: -NOAUTH is an answer from a server that is up.
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
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "-LOADING") || strings.HasPrefix(line, "-BUSY") {
		return errors.New(line)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) readLog() []byte {
	b, _ := os.ReadFile(s.log)
	return b
}

// logTail formats the end of the server's log for a failure message.
func (s *Server) logTail() string {
	lines := strings.Split(strings.TrimRight(string(s.readLog()), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return fmt.Sprintf("\nlast lines of %s:\n\t%s", s.log, strings.Join(lines, "\n\t"))
}

// Pause stops the server with SIGSTOP, as a hung node, a full network buffer
// or a partition looks to its clients: connections are accepted by the
// kernel, commands never answered. Resume undoes it.
func (s *Server) Pause() { s.notify(syscall.SIGSTOP) }

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() { s.notify(syscall.SIGCONT) }

// PID is the server process's id (0 when it is not running).
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// notify sends sig without waiting for anything.
func (s *Server) notify(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}
