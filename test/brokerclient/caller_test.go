package brokerclient_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// callerGo is the go directive of the caller module: the api module's own,
// older than the server's (issue 15, finding 6).
const callerGo = "1.23.0"

// TestCallerModule builds a throwaway module that imports brokerclient and
// the generated API with its own older go directive: importing the client
// neither raises the caller's go line nor drags in the server's
// dependencies. Modules come through GOPROXY as the environment sets it.
func TestCallerModule(t *testing.T) {
	apiDir, err := filepath.Abs("../../api")
	if err != nil {
		t.Fatal(err)
	}
	apiMod, err := os.ReadFile(filepath.Join(apiDir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(apiMod); m == nil || string(m[1]) != callerGo {
		t.Fatalf("api/go.mod go directive = %q; want %s (lower it here too if the api allows)", m, callerGo)
	}
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.com/caller\n\ngo " + callerGo + "\n\nrequire github.com/tokenbroker/tokenbroker/api v0.0.0\n\nreplace github.com/tokenbroker/tokenbroker/api => " + apiDir + "\n",
		"main.go": `package main

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/api/brokerclient"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
)

func main() {
	cc, err := grpc.NewClient("127.0.0.1:9090", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer cc.Close()
	cfg := &brokerclient.Config{Connection: "demo-cc", Scopes: []string{"read"}}
	_ = cfg.TokenSource(context.Background(), cc)
	fmt.Println(tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName)
}
`,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	goCmd := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	goCmd("mod", "tidy")
	goCmd("build", "-o", filepath.Join(dir, "caller"), ".")
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mod), "\ngo "+callerGo+"\n") || strings.Contains(string(mod), "\ntoolchain ") {
		t.Errorf("the caller's go.mod after tidy and build:\n%s\nwant go %s kept and no toolchain line", mod, callerGo)
	}
	deps := goCmd("list", "-m", "all")
	for _, server := range []string{"github.com/redis/go-redis", "github.com/prometheus/client_golang", "gopkg.in/yaml.v3", "filippo.io/edwards25519"} {
		if strings.Contains(deps, server+" ") {
			t.Errorf("the caller's module graph has the server's %s:\n%s", server, deps)
		}
	}
}
