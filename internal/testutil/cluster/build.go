package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// BinEnv names an environment variable that, when set, is the path of a
// prebuilt broker binary to use instead of building cmd/broker.
const BinEnv = "TOKENBROKER_BROKER_BIN"

// brokerPackage is what Start builds.
const brokerPackage = "github.com/tokenbroker/tokenbroker/cmd/broker"

// builds caches one binary per build flavour for the life of the process.
var builds struct {
	mu   sync.Mutex
	dirs []string
	bins map[bool]*build // race → build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of a broker binary built from this module's
// cmd/broker, building it on first use (once per process and flavour).
// With race the binary has the race detector. BinEnv overrides both.
func Binary(race bool) (string, error) {
	if p := os.Getenv(BinEnv); p != "" {
		return p, nil
	}
	builds.mu.Lock()
	if builds.bins == nil {
		builds.bins = map[bool]*build{}
	}
	b := builds.bins[race]
	if b == nil {
		b = &build{}
		builds.bins[race] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() { b.path, b.err = buildBroker(race) })
	return b.path, b.err
}

func buildBroker(race bool) (string, error) {
	dir, err := os.MkdirTemp("", "tokenbroker-cluster-")
	if err != nil {
		return "", err
	}
	builds.mu.Lock()
	builds.dirs = append(builds.dirs, dir)
	builds.mu.Unlock()
	bin := filepath.Join(dir, "broker")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, brokerPackage)
	cmd := exec.Command(goTool(), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go %v: %v (run from inside the module, or set %s)\n%s", args, err, BinEnv, out)
	}
	return bin, nil
}

// goTool finds the go command: on PATH, else the running toolchain's.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// Main runs a test binary's tests and then removes the broker binaries
// built for them. Call it from TestMain:
//
//	func TestMain(m *testing.M) { cluster.Main(m) }
//
// Without it the binaries stay in the system's temporary directory.
func Main(m *testing.M) {
	code := m.Run()
	RemoveBinaries()
	os.Exit(code)
}

// RemoveBinaries deletes the binaries Binary built. Later calls to Binary
// fail to find them; call it only when no cluster will start again.
func RemoveBinaries() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	for _, d := range builds.dirs {
		_ = os.RemoveAll(d)
	}
	builds.dirs = nil
}
