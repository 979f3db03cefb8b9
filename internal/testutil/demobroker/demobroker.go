// Package demobroker builds cmd/broker and runs it with -demo on free
// loopback ports, for tests outside cmd/broker.
package demobroker

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
)

// A Broker is a running `broker -demo`, stopped by the test's cleanup.
type Broker struct {
	// GRPC, Admin and Callback are the addresses it listens on.
	GRPC, Admin, Callback string
	// Logs collects its log lines.
	Logs *logtest.Buffer
}

// Start builds cmd/broker and starts it with -demo on 127.0.0.1 ports,
// returning once it logs that it is serving. Any failure ends the test.
func Start(t testing.TB) *Broker {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "broker")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/tokenbroker/tokenbroker/cmd/broker").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/broker: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-demo", "-grpc-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-callback-addr", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b := &Broker{Logs: &logtest.Buffer{}}
	ready := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			b.Logs.Write(append(sc.Bytes(), '\n'))
			var rec struct {
				Msg          string `json:"msg"`
				GRPCAddr     string `json:"grpc_addr"`
				AdminAddr    string `json:"admin_addr"`
				CallbackAddr string `json:"callback_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "serving" && b.GRPC == "" {
				b.GRPC, b.Admin, b.Callback = rec.GRPCAddr, rec.AdminAddr, rec.CallbackAddr
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		_ = cmd.Wait()
	})
	select {
	case <-ready:
		return b
	case <-exited:
		t.Fatalf("broker exited before serving:\n%s", b.Logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("broker did not log \"serving\" within 30s:\n%s", b.Logs.String())
	}
	return nil
}
