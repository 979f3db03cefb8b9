package docs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/testutil/demobroker"
)

// Marker precedes a README block that TestReadme runs against -demo.
const Marker = "<!-- test: demo -->"

var block = regexp.MustCompile("(?s)" + regexp.QuoteMeta(Marker) + "\\s*\n```sh\n(.*?)```")

// TestReadme runs every README block marked with Marker against -demo
// (issue 15, finding 2: the WAX step must work when copied).
func TestReadme(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := block.FindAllSubmatch(readme, -1)
	if len(blocks) < 2 {
		t.Fatalf("README has %d blocks marked %q; want the grpcurl and the WAX examples", len(blocks), Marker)
	}
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: make deps installs it", tool)
		}
	}
	bin, err := filepath.Abs("../../bin")
	if err != nil {
		t.Fatal(err)
	}
	path := bin + string(os.PathListSeparator) + os.Getenv("PATH")
	if _, err := exec.LookPath(filepath.Join(bin, "grpcurl")); err != nil {
		if _, err := exec.LookPath("grpcurl"); err != nil {
			t.Fatal("grpcurl not found in ./bin or on PATH: make tools installs it")
		}
	}
	b := demobroker.Start(t)
	addrs := strings.NewReplacer("127.0.0.1:9090", b.GRPC, "127.0.0.1:9091", b.Admin, "127.0.0.1:8081", b.Callback)
	for i, b := range blocks {
		script := addrs.Replace(string(b[1]))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+path)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		if err != nil {
			// stderr only: stdout holds the demo's tokens.
			t.Errorf("README block %d failed: %v\n%s\nstderr:\n%s", i, err, b[1], stderr.String())
		}
	}
}
