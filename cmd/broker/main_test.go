package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
	"github.com/tokenbroker/tokenbroker/internal/emulator/waxemu"
	"github.com/tokenbroker/tokenbroker/internal/emulator/wxemu"
	"github.com/tokenbroker/tokenbroker/internal/testutil/logtest"
)

var brokerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "broker-bin")
	if err != nil {
		panic(err)
	}
	brokerBin = filepath.Join(dir, "broker")
	out, err := exec.Command("go", "build", "-race", "-o", brokerBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build broker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestCheckConfigListsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(`
listen: {grpc: "127.0.0.1:0"}
colour: blue
connections:
  - name: pay
    type: client_credentials
    token_url: https://pay.example/o/token/
    client_id: svc
    client_secret: {file: `+filepath.Join(dir, "missing-secret")+`}
  - name: pay
    type: client_credentials
    client_id: svc
    client_secret: {env: SOME_SECRET}
    timeout: soon
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"-config", cfg, "-check-config"}, {"-config", cfg}} {
		t.Run(fmt.Sprint(args[2:]), func(t *testing.T) {
			out, err := exec.Command(brokerBin, args...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("broker %v: err = %v; want a non-zero exit\n%s", args, err, out)
			}
			for _, want := range []string{
				"colour: unknown setting",
				`connections[1].name: "pay" is already used by connections[0]`,
				"connections[1].token_url: required",
				`connections[1].timeout: line 14: invalid duration "soon"`,
				"connections[0].client_secret: read file " + filepath.Join(dir, "missing-secret"),
			} {
				if !strings.Contains(string(out), want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
	// A config whose only problem is an unreadable secret file fails when
	// secrets are read, still before serving.
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(`
connections:
  - name: pay
    type: client_credentials
    token_url: https://pay.example/o/token/
    client_id: svc
    client_secret: {file: `+filepath.Join(dir, "missing-secret")+`}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(brokerBin, "-config", good, "-check-config").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "connections[0] (pay): client_secret: read file") {
		t.Errorf("unreadable secret: err = %v; output:\n%s", err, out)
	}
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("very-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := strings.Replace(mustRead(t, good), filepath.Join(dir, "missing-secret"), secretFile, 1)
	if err := os.WriteFile(good, []byte(ok), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(brokerBin, "-config", good, "-check-config").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration OK") || strings.Contains(string(out), "very-secret-value") {
		t.Errorf("valid config: err = %v; output:\n%s", err, out)
	}

	// The service's own secrets and certificates are read too, all reported
	// in one run: serving would fail on each of them.
	svc := filepath.Join(dir, "service.yaml")
	missing := func(name string) string { return filepath.Join(dir, "missing-"+name) }
	if err := os.WriteFile(svc, []byte(ok+`
tls: {cert_file: `+missing("cert")+`, key_file: `+missing("key")+`}
encryption:
  keys: [{id: k1, secret: {file: `+missing("enc-key")+`}}]
cache:
  type: redis
  redis:
    addrs: ["127.0.0.1:1"]
    password: {file: `+missing("redis-password")+`}
    tls: {enabled: true, ca_file: `+missing("redis-ca")+`}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(brokerBin, "-config", svc, "-check-config").CombinedOutput()
	if err == nil {
		t.Errorf("missing service secrets: -check-config succeeded; want a failure\n%s", out)
	}
	for _, want := range []string{
		"encryption.keys[0].secret: read file " + missing("enc-key"),
		"cache.redis.password: read file " + missing("redis-password"),
		"tls: tlsutil: cert_file: open " + missing("cert"),
		"cache.redis.tls: ca_file: open " + missing("redis-ca"),
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("-check-config output lacks %q:\n%s", want, out)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// process is a running broker binary.
type process struct {
	cmd       *exec.Cmd
	grpcAddr  string
	adminAddr string
	// callbackAddr is "off" when the callback listener is off.
	callbackAddr string
	logs         *logtest.Buffer
	logsClosed   chan struct{}
}

func startBroker(t *testing.T, args ...string) *process {
	t.Helper()
	flags := []string{"-grpc-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}
	if slices.Contains(args, "-demo") { // else the demo's default 127.0.0.1:8081
		flags = append(flags, "-callback-addr", "127.0.0.1:0")
	}
	cmd := exec.Command(brokerBin, append(flags, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, logs: &logtest.Buffer{}, logsClosed: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(p.logsClosed)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			var rec struct{ Msg, GRPCAddr, AdminAddr string }
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "serving" {
				rec.GRPCAddr, _ = m["grpc_addr"].(string)
				rec.AdminAddr, _ = m["admin_addr"].(string)
				p.grpcAddr, p.adminAddr = rec.GRPCAddr, rec.AdminAddr
				p.callbackAddr, _ = m["callback_addr"].(string)
				close(ready)
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	select {
	case <-ready:
	case <-p.logsClosed:
		t.Fatalf("broker exited before serving:\n%s", p.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("broker did not start serving:\n%s", p.logs.String())
	}
	return p
}

// waitForLog waits until the broker has logged a line matching re.
func (p *process) waitForLog(t *testing.T, re *regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !re.MatchString(p.logs.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line matching %s:\n%s", re, p.logs.String())
		}
		select {
		case <-p.logsClosed:
			t.Fatalf("broker exited; no log line matching %s:\n%s", re, p.logs.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestDemoThroughReflection calls the built binary the way grpcurl does:
// it learns the API by server reflection and calls it with dynamic messages.
func TestDemoThroughReflection(t *testing.T) {
	p := startBroker(t, "-demo")
	cc, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	files := reflectFiles(ctx, t, cc, "tokenbroker.v1.TokenBrokerService")
	d, err := files.FindDescriptorByName("tokenbroker.v1.TokenBrokerService")
	if err != nil {
		t.Fatal(err)
	}
	method := d.(protoreflect.ServiceDescriptor).Methods().ByName("GetToken")
	req := dynamicpb.NewMessage(method.Input())
	if err := protojson.Unmarshal([]byte(`{"connection":"demo-cc"}`), req); err != nil {
		t.Fatal(err)
	}
	resp := dynamicpb.NewMessage(method.Output())
	if err := cc.Invoke(ctx, "/tokenbroker.v1.TokenBrokerService/GetToken", req, resp); err != nil {
		t.Fatalf("GetToken(demo-cc) error = %v", err)
	}
	js, _ := protojson.Marshal(resp)
	var got struct {
		AccessToken, TokenType, ExpiresAt string
	}
	if err := json.Unmarshal(js, &got); err != nil {
		t.Fatal(err)
	}
	if got.AccessToken == "" || got.TokenType == "" || got.ExpiresAt == "" {
		t.Errorf("GetToken response lacks fields: token %d bytes, type %q, expires %q", len(got.AccessToken), got.TokenType, got.ExpiresAt)
	}

	for _, conn := range []string{"demo-wx"} {
		r := dynamicpb.NewMessage(method.Output())
		q := dynamicpb.NewMessage(method.Input())
		if err := protojson.Unmarshal([]byte(`{"connection":"`+conn+`"}`), q); err != nil {
			t.Fatal(err)
		}
		if err := cc.Invoke(ctx, "/tokenbroker.v1.TokenBrokerService/GetToken", q, r); err != nil {
			t.Errorf("GetToken(%s) error = %v", conn, err)
		}
	}

	// Two scope sets of one grant connection share its lease: fetched
	// together, one waits for the other.
	client := tokenbrokerv1.NewTokenBrokerServiceClient(cc)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &tokenbrokerv1.GetTokenRequest{Connection: "demo-wx", ForceRefresh: true}
			if i%2 == 1 {
				req.Scopes = []string{"general"}
			}
			if _, err := client.GetToken(ctx, req); err != nil {
				t.Errorf("GetToken(demo-wx, %v): %v", req.Scopes, err)
			}
		}()
	}
	wg.Wait()
	for range 3 {
		client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "demo-cc"})
	}
	client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "no-such-connection"})
	checkMetrics(t, "http://"+p.adminAddr+"/metrics")

	hc, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v; want SERVING", hc.GetStatus(), err)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		r, err := http.Get("http://" + p.adminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Errorf("GET %s = %d; want 200", path, r.StatusCode)
		}
	}
	if strings.Contains(p.logs.String(), got.AccessToken) {
		t.Errorf("broker logs contain the access token")
	}

	// SIGTERM drains and exits 0.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { <-p.logsClosed; done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("broker exit after SIGTERM: %v; want status 0\n%s", err, p.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("broker did not exit after SIGTERM")
	}
	checkLogLines(t, p.logs.String())
}

// checkLogLines asserts on the JSON lines of a -demo run that called
// GetToken for an unknown connection and was stopped: the failed call's line
// says what went wrong, durations are Go duration strings and no list is
// null (issue 15, finding 3).
func checkLogLines(t *testing.T, logs string) {
	t.Helper()
	var failed map[string]any
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `:null`) {
			t.Errorf("log line with a null value: %s", line)
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		for _, k := range []string{"took", "shutdown_delay", "drain_timeout"} {
			if v, ok := rec[k]; ok {
				if s, isString := v.(string); !isString {
					t.Errorf("%s = %v; want a Go duration string: %s", k, v, line)
				} else if _, err := time.ParseDuration(s); err != nil {
					t.Errorf("%s = %q: %v", k, s, err)
				}
			}
		}
		if rec["msg"] == "rpc" && rec["code"] == "NotFound" {
			failed = rec
		}
	}
	if failed == nil {
		t.Fatalf("no rpc line for the NotFound call:\n%s", logs)
	}
	want := map[string]any{
		"method": "/tokenbroker.v1.TokenBrokerService/GetToken", "reason": "UNKNOWN_CONNECTION",
		"connection": "no-such-connection", "scopes": []any{},
	}
	for k, v := range want {
		if fmt.Sprint(failed[k]) != fmt.Sprint(v) {
			t.Errorf("NotFound line %s = %v; want %v", k, failed[k], v)
		}
	}
	if msg, _ := failed["error"].(string); !strings.Contains(msg, "no-such-connection") {
		t.Errorf("NotFound line error = %q; want the status message", msg)
	}
	if id, _ := failed["request_id"].(string); id == "" {
		t.Errorf("NotFound line has no request_id")
	}
}

// reflectFiles fetches the file descriptors of symbol and its dependencies
// through the server reflection service.
func reflectFiles(ctx context.Context, t *testing.T, cc *grpc.ClientConn, symbol string) *protoregistry.Files {
	t.Helper()
	stream, err := rpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	fdps := map[string]*descriptorpb.FileDescriptorProto{}
	ask := func(r *rpb.ServerReflectionRequest) {
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
			fd := &descriptorpb.FileDescriptorProto{}
			if err := proto.Unmarshal(raw, fd); err != nil {
				t.Fatal(err)
			}
			fdps[fd.GetName()] = fd
		}
	}
	ask(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}})
	for changed := true; changed; {
		changed = false
		for _, fd := range fdps {
			for _, dep := range fd.GetDependency() {
				if _, ok := fdps[dep]; !ok {
					ask(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_FileByFilename{FileByFilename: dep}})
					changed = true
				}
			}
		}
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, fd := range fdps {
		set.File = append(set.File, fd)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestCallersMustAuthenticate runs the binary with a real config: callers
// without credentials or with a wrong API key are refused, a caller allowed
// only another connection is denied, and the right key gets its token.
func TestCallersMustAuthenticate(t *testing.T) {
	emu := ccemu.New(ccemu.Options{ClientID: "svc", ClientSecret: "cc-secret-value"})
	up := httptest.NewServer(emu)
	defer up.Close()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "cc")
	if err := os.WriteFile(secretFile, []byte("cc-secret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	const key, otherKey = "caller-api-key-0123456789", "other-api-key-0123456789"
	hash := func(k string) string { s := sha256.Sum256([]byte(k)); return hex.EncodeToString(s[:]) }
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
auth:
  callers:
    - name: pay
      api_key_sha256: [%s]
      policy: {connections: [pay], rpcs: [service]}
    - name: other
      api_key_sha256: [%[2]s]
      policy: {connections: [elsewhere], rpcs: [operator]}
connections:
  - name: pay
    type: client_credentials
    token_url: %[3]s/o/token/
    client_id: svc
    client_secret: {file: %[4]s}
  - name: elsewhere
    type: client_credentials
    token_url: %[3]s/o/token/
    client_id: svc
    client_secret: {file: %[4]s}
`, hash(key), hash(otherKey), up.URL, secretFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, "-config", cfg)
	cc, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(cc)
	call := func(k string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if k != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+k)
		}
		_, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "pay"})
		return err
	}
	for _, tc := range []struct {
		name, key string
		want      codes.Code
	}{
		{"no credentials", "", codes.Unauthenticated},
		{"wrong key", "not-a-configured-key", codes.Unauthenticated},
		{"allowed another connection", otherKey, codes.PermissionDenied},
		{"allowed", key, codes.OK},
	} {
		if got := status.Code(call(tc.key)); got != tc.want {
			t.Errorf("%s: GetToken code = %v; want %v", tc.name, got, tc.want)
		}
	}
	if emu.Requests() != 1 {
		t.Errorf("upstream requests = %d; want 1 (refused callers never reach it)", emu.Requests())
	}
	// An operator sees only the connections its policy lets it use; a
	// service caller may not list at all.
	list := func(k string) (*tokenbrokerv1.ListConnectionsResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+k)
		return client.ListConnections(ctx, &tokenbrokerv1.ListConnectionsRequest{})
	}
	resp, err := list(otherKey)
	if err != nil {
		t.Fatalf("ListConnections as other: %v", err)
	}
	var names []string
	for _, c := range resp.GetConnections() {
		names = append(names, c.GetName())
	}
	if !slices.Equal(names, []string{"elsewhere"}) {
		t.Errorf("ListConnections as other = %v; want [elsewhere] (pay is outside its policy)", names)
	}
	if _, err := list(key); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListConnections as a service caller: code %v; want PermissionDenied", status.Code(err))
	}
	logtest.AssertNoSecrets(t, p.logs.String(), logtest.Secrets{"api key": key, "other key": otherKey, "client secret": "cc-secret-value"})
}

// checkMetrics asserts that every metric family the runbook documents is
// exported with a non-zero sample.
func checkMetrics(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`tokenbroker_get_token_total{connection="demo-cc",outcome="l1_hit"}`,
		`tokenbroker_get_token_total{connection="demo-cc",outcome="fetched"}`,
		`tokenbroker_get_token_total{connection="(unknown)",outcome="NotFound"}`,
		`tokenbroker_upstream_requests_total{connection="demo-wx",grant_type="password",status="200"}`,
		`tokenbroker_upstream_requests_total{connection="demo-wx",grant_type="refresh_token",status="200"}`,
		`tokenbroker_upstream_request_duration_seconds_count{connection="demo-cc",grant_type="client_credentials"}`,
		`tokenbroker_refreshes_total{connection="demo-wx",trigger="on_demand"}`,
		`tokenbroker_token_seconds_until_expiry{connection="demo-cc"}`,
		`tokenbroker_connection_state{connection="demo-wax",state="needs_authorization"}`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="GetToken",grpc_service="tokenbroker.v1.TokenBrokerService",grpc_type="unary"}`,
	} {
		i := strings.Index(string(body), want+" ")
		if i < 0 {
			t.Errorf("/metrics lacks %s", want)
			continue
		}
		line := string(body[i+len(want)+1:])
		line, _, _ = strings.Cut(line, "\n")
		if line == "0" {
			t.Errorf("/metrics %s = 0; want non-zero", want)
		}
	}
	// The build is named (issue 15, finding 4).
	if !regexp.MustCompile(`(?m)^tokenbroker_build_info\{goversion="go[^"]+",revision="[^"]+",version="[^"]+"\} 1$`).Match(body) {
		t.Errorf("/metrics lacks tokenbroker_build_info{goversion,revision,version} 1")
	}
	// Every metric the alerts and the runbook name exists.
	for _, doc := range []string{"../../deploy/prometheus/alerts.yaml", "../../docs/RUNBOOK.md"} {
		text, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range regexp.MustCompile(`\btokenbroker_[a-z_]+`).FindAllString(string(text), -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
			if !strings.Contains(string(body), "# TYPE "+name+" ") && !strings.Contains(string(body), "# TYPE "+base+" histogram") {
				t.Errorf("%s names %s, which /metrics does not export", doc, name)
			}
		}
	}
	// Contention and failures do not happen on demand in one healthy
	// process; the replica tests drive those. Their series exist from start.
	for _, series := range []string{`tokenbroker_lock_waits_total{connection="demo-wx"}`, `tokenbroker_lock_takeovers_total{connection="demo-wx"}`} {
		if !strings.Contains(string(body), series+" ") {
			t.Errorf("/metrics lacks %s", series)
		}
	}
}

// TestStreamWorkers checks listen.grpc_stream_workers reaches the gRPC
// server: the workers are goroutines waiting from start-up, counted by the
// Go collector's go_goroutines.
func TestStreamWorkers(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "cc")
	if err := os.WriteFile(secretFile, []byte("cc-secret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	goroutines := func(workers int) int {
		t.Helper()
		cfg := filepath.Join(dir, fmt.Sprintf("config-%d.yaml", workers))
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
listen:
  grpc_stream_workers: %d
connections:
  - name: pay
    type: client_credentials
    token_url: http://127.0.0.1:1/o/token/
    client_id: svc
    client_secret: {file: %s}
`, workers, secretFile)), 0o600); err != nil {
			t.Fatal(err)
		}
		p := startBroker(t, "-config", cfg)
		defer p.cmd.Process.Kill()
		resp, err := http.Get("http://" + p.adminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^go_goroutines (\d+)$`).FindSubmatch(body)
		if m == nil {
			t.Fatal("/metrics lacks go_goroutines")
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}
	// The workers start in the background and other goroutines come and go,
	// so the difference is not exact; without the setting it is about 0.
	off, on := goroutines(0), goroutines(300)
	if on-off < 250 {
		t.Errorf("go_goroutines = %d with 300 stream workers, %d with none; want about 300 more", on, off)
	}
}

// TestRequestRejectionThroughTheBinary: a scope the upstream refuses is the
// caller's error. Five identical calls cost one upstream request and get the
// same status; the connection stays READY, its state metric not failing.
func TestRequestRejectionThroughTheBinary(t *testing.T) {
	p := startBroker(t, "-demo")
	client := p.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 5 {
		_, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "demo-cc", Scopes: []string{"bogus"}})
		st := status.Convert(err)
		var oauth string
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				oauth = info.GetMetadata()["oauth_error"]
			}
		}
		if st.Code() != codes.FailedPrecondition || oauth != "invalid_scope" {
			t.Fatalf("GetToken(bogus) #%d = %v, oauth_error %q; want FailedPrecondition, invalid_scope", i+1, st.Code(), oauth)
		}
	}
	if _, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "demo-cc", Scopes: []string{"read"}}); err != nil {
		t.Fatalf("GetToken(read) = %v", err)
	}
	list, err := client.ListConnections(ctx, &tokenbrokerv1.ListConnectionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list.GetConnections() {
		if c.GetName() == "demo-cc" && c.GetState() != tokenbrokerv1.ConnectionState_CONNECTION_STATE_READY {
			t.Errorf("demo-cc state after refused scopes = %v; want READY", c.GetState())
		}
	}
	p.wantMetrics(t,
		`tokenbroker_connection_state{connection="demo-cc",state="failing"} 0`,
		`tokenbroker_upstream_requests_total{connection="demo-cc",grant_type="client_credentials",status="400"} 1`,
		`tokenbroker_request_rejections_total{connection="demo-cc",reason="invalid_scope"} 5`,
	)
}

// TestSharedWorkThroughTheBinary: against a slow but healthy upstream
// (600 ms), callers with short deadlines leave without costing the fetch:
// the tokens it obtains are cached, the breaker stays closed, and a caller
// asking for a min_ttl the tokens cannot meet gets its own error while the
// caller sharing its fetch gets the token.
func TestSharedWorkThroughTheBinary(t *testing.T) {
	emu := ccemu.New(ccemu.Options{ClientID: "svc", ClientSecret: "cc-secret-value", Lifetime: time.Hour})
	emu.SetFailure(ccemu.Slow(600 * time.Millisecond))
	up := httptest.NewServer(emu)
	defer up.Close()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "cc")
	if err := os.WriteFile(secretFile, []byte("cc-secret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	const key = "caller-api-key-0123456789"
	sum := sha256.Sum256([]byte(key))
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
auth:
  callers:
    - name: svc
      api_key_sha256: [%s]
      policy: {connections: ["*"], rpcs: [service, operator]}
connections:
  - name: slow
    type: client_credentials
    token_url: %s/o/token/
    client_id: svc
    client_secret: {file: %s}
`, hex.EncodeToString(sum[:]), up.URL, secretFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, "-config", cfg)
	client := p.client(t)
	get := func(d time.Duration, req *tokenbrokerv1.GetTokenRequest) error {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key), d)
		defer cancel()
		_, err := client.GetToken(ctx, req)
		return err
	}
	scopes := []string{"read", "write", "admin", "read write", "read admin"}
	for _, s := range scopes {
		req := &tokenbrokerv1.GetTokenRequest{Connection: "slow", Scopes: strings.Fields(s)}
		if err := get(100*time.Millisecond, req); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("GetToken(%s, 100ms deadline) = %v; want DeadlineExceeded", s, err)
		}
	}
	// The fetches the impatient callers started finish on their own budget
	// and are cached: patient callers get them without a new request.
	for _, s := range scopes {
		req := &tokenbrokerv1.GetTokenRequest{Connection: "slow", Scopes: strings.Fields(s)}
		if err := get(10*time.Second, req); err != nil {
			t.Fatalf("GetToken(%s, 10s deadline) = %v; want the token the earlier fetch obtained", s, err)
		}
	}
	if got := emu.Issued(); got != len(scopes) {
		t.Errorf("upstream issued %d tokens for %d scope sets; want one each", got, len(scopes))
	}
	// Two callers share one fetch; only the one asking for 2h fails.
	long := make(chan error, 1)
	go func() {
		long <- get(10*time.Second, &tokenbrokerv1.GetTokenRequest{Connection: "slow", Scopes: []string{"write"},
			ForceRefresh: true, MinTtl: durationpb.New(2 * time.Hour)})
	}()
	if err := get(10*time.Second, &tokenbrokerv1.GetTokenRequest{Connection: "slow", Scopes: []string{"write"}, ForceRefresh: true}); err != nil {
		t.Errorf("GetToken(min_ttl 0) sharing a fetch with min_ttl 2h = %v; want a token", err)
	}
	if err := <-long; status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetToken(min_ttl 2h, tokens live 1h) = %v; want InvalidArgument", err)
	}
	p.wantMetrics(t,
		`tokenbroker_upstream_breaker_open{connection="slow"} 0`,
		`tokenbroker_connection_state{connection="slow",state="ready"} 1`,
	)
}

// TestSecretPermissions: a world-readable secret file is a warning in
// -check-config (exit 0), and an error with secrets.strict_permissions
// (issue 15, finding 10).
func TestSecretPermissions(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "cc")
	if err := os.WriteFile(secretFile, []byte("cc-secret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(secretFile, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := `
connections:
  - name: pay
    type: client_credentials
    token_url: https://pay.example/o/token/
    client_id: svc
    client_secret: {file: ` + secretFile + `}
`
	want := "connections[0].client_secret: file " + secretFile + " is readable by others (mode 0644)"
	for _, strict := range []bool{false, true} {
		cfg := filepath.Join(dir, fmt.Sprintf("config-%v.yaml", strict))
		text := conf
		if strict {
			text += "secrets: {strict_permissions: true}\n"
		}
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(brokerBin, "-config", cfg, "-check-config").CombinedOutput()
		if !strings.Contains(string(out), want) || strings.Contains(string(out), "cc-secret-value") {
			t.Errorf("strict %v: output lacks %q (or shows the secret):\n%s", strict, want, out)
		}
		if strict && err == nil {
			t.Errorf("strict: -check-config succeeded; want a failure\n%s", out)
		}
		if !strict && (err != nil || !strings.Contains(string(out), `"level":"WARN"`)) {
			t.Errorf("not strict: err = %v; want exit 0 with a warning\n%s", err, out)
		}
	}
}

// TestCallbackListener: the OAuth callback has a listener of its own,
// serving /oauth2/callback only, with request ids; the admin port no longer
// serves it; without an authorization-code connection it is off (issue 15,
// finding 1).
func TestCallbackListener(t *testing.T) {
	p := startBroker(t, "-demo")
	if p.callbackAddr == "" || p.callbackAddr == "off" || p.callbackAddr == p.adminAddr {
		t.Fatalf("callback_addr = %q (admin %s); want a listener of its own", p.callbackAddr, p.adminAddr)
	}
	get := func(url string, header ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if len(header) == 2 {
			req.Header.Set(header[0], header[1])
		}
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r
	}
	for _, tc := range []struct {
		url  string
		want int
	}{
		{"http://" + p.callbackAddr + "/oauth2/callback?state=not-a-state&code=c", http.StatusBadRequest},
		{"http://" + p.callbackAddr + "/metrics", http.StatusNotFound},
		{"http://" + p.callbackAddr + "/healthz", http.StatusNotFound},
		{"http://" + p.adminAddr + "/oauth2/callback?state=not-a-state&code=c", http.StatusNotFound},
		{"http://" + p.adminAddr + "/metrics", http.StatusOK},
	} {
		if r := get(tc.url); r.StatusCode != tc.want {
			t.Errorf("GET %s = %d; want %d", tc.url, r.StatusCode, tc.want)
		}
	}
	r := get("http://"+p.callbackAddr+"/oauth2/callback?state=other&code=c", "X-Request-Id", "cb-test-1")
	if got := r.Header.Get("X-Request-Id"); got != "cb-test-1" {
		t.Errorf("X-Request-Id = %q; want the caller's cb-test-1", got)
	}
	// The broker writes the line before answering; the test reads the
	// broker's stderr through a pipe, so it may arrive a little later.
	p.waitForLog(t, regexp.MustCompile(`"msg":"authorization callback refused".*"request_id":"cb-test-1"`))

	// -health-check: the image checks a broker through grpc.health.v1 (the
	// chart's helm test runs it).
	if out, err := exec.Command(brokerBin, "-health-check", p.grpcAddr).CombinedOutput(); err != nil || !strings.Contains(string(out), "SERVING") {
		t.Errorf("-health-check %s: err = %v\n%s", p.grpcAddr, err, out)
	}
	if out, err := exec.Command(brokerBin, "-health-check", p.grpcAddr, "-health-check-service", "no.such.Service").CombinedOutput(); err == nil {
		t.Errorf("-health-check of an unknown service succeeded:\n%s", out)
	}

	// Without an authorization-code connection the listener is off.
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "cc")
	if err := os.WriteFile(secretFile, []byte("cc-secret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(`
connections:
  - name: pay
    type: client_credentials
    token_url: http://127.0.0.1:1/o/token/
    client_id: svc
    client_secret: {file: `+secretFile+`}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if q := startBroker(t, "-config", cfg); q.callbackAddr != "off" {
		t.Errorf("client_credentials only: callback_addr = %q; want off", q.callbackAddr)
	}
}

// TestAccountsThroughTheBinary: on -demo's WAX connection two people
// authorize two accounts through the callback and get their own tokens; a
// caller limited to accounts team-a-* is refused team-b-1; deleting an
// account revokes it upstream and leaves the other.
func TestAccountsThroughTheBinary(t *testing.T) {
	const operatorKey, teamKey = "operator-api-key-0123456789", "team-a-api-key-0123456789"
	hash := func(k string) string { s := sha256.Sum256([]byte(k)); return hex.EncodeToString(s[:]) }
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "cc")
	if err := os.WriteFile(secretFile, []byte("unused-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
auth:
  callers:
    - name: ops
      api_key_sha256: [%s]
      policy: {connections: ["*"], rpcs: [operator]}
    - name: team-a
      api_key_sha256: [%s]
      policy: {connections: [demo-wax], accounts: ["team-a-*"], rpcs: [service]}
connections:
  - name: unused
    type: client_credentials
    token_url: http://127.0.0.1:1/o/token/
    client_id: svc
    client_secret: {file: %s}
`, hash(operatorKey), hash(teamKey), secretFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, "-demo", "-config", cfg, "-callback-addr", "127.0.0.1:0")
	client := p.client(t)
	as := func(key string) context.Context {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key), 20*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	for _, acct := range []string{"team-a-1", "team-b-1"} {
		resp, err := client.StartAuthorization(as(operatorKey), &tokenbrokerv1.StartAuthorizationRequest{Connection: "demo-wax", Account: acct})
		if err != nil {
			t.Fatalf("StartAuthorization(%s) = %v", acct, err)
		}
		// The browser: the emulator approves as login_hint and redirects
		// to the broker's callback.
		r, err := http.Get(resp.GetAuthorizationUrl() + "&login_hint=" + acct + "-person")
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("authorization of %s ended with HTTP %d", acct, r.StatusCode)
		}
	}
	tokens := map[string]string{}
	for _, acct := range []string{"team-a-1", "team-b-1"} {
		tok, err := client.GetToken(as(operatorKey), &tokenbrokerv1.GetTokenRequest{Connection: "demo-wax", Account: acct})
		if err != nil {
			t.Fatalf("GetToken(%s) = %v", acct, err)
		}
		tokens[acct] = tok.GetAccessToken()
	}
	if tokens["team-a-1"] == tokens["team-b-1"] {
		t.Errorf("two accounts got the same token")
	}
	if _, err := client.GetToken(as(teamKey), &tokenbrokerv1.GetTokenRequest{Connection: "demo-wax", Account: "team-a-1"}); err != nil {
		t.Errorf("team-a caller, account team-a-1 = %v; want a token", err)
	}
	for _, acct := range []string{"team-b-1", ""} {
		if _, err := client.GetToken(as(teamKey), &tokenbrokerv1.GetTokenRequest{Connection: "demo-wax", Account: acct}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("team-a caller, account %q = %v; want PermissionDenied", acct, err)
		}
	}
	list, err := client.ListAccounts(as(operatorKey), &tokenbrokerv1.ListAccountsRequest{Connection: "demo-wax"})
	if err != nil || len(list.GetAccounts()) != 2 {
		t.Fatalf("ListAccounts = %v, %v; want two accounts", list, err)
	}
	del, err := client.DeleteAccount(as(operatorKey), &tokenbrokerv1.DeleteAccountRequest{Connection: "demo-wax", Account: "team-b-1", RevokeUpstream: true})
	if err != nil || !del.GetDeleted() {
		t.Fatalf("DeleteAccount(team-b-1) = %v, %v", del, err)
	}
	if _, err := client.GetToken(as(operatorKey), &tokenbrokerv1.GetTokenRequest{Connection: "demo-wax", Account: "team-b-1"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("GetToken(deleted account) = %v; want FailedPrecondition (needs authorization)", err)
	}
	if tok, err := client.GetToken(as(operatorKey), &tokenbrokerv1.GetTokenRequest{Connection: "demo-wax", Account: "team-a-1"}); err != nil || tok.GetAccessToken() != tokens["team-a-1"] {
		t.Errorf("GetToken(team-a-1) after deleting team-b-1 = %v; want its token", err)
	}
	p.wantMetrics(t,
		`tokenbroker_accounts{connection="demo-wax",state="ready"} 1`,
		`tokenbroker_accounts{connection="demo-wax",state="revoked"} 0`,
		`tokenbroker_grants_lost_total{connection="demo-wax"} 0`,
	)
}

// TestPublicClientAndImportedWXThroughTheBinary: a public client
// (client_authentication: none, PKCE) completes an authorization through the
// broker's callback and refreshes; a keyless WX connection serves an account
// from a grant imported from the WX app, refreshes it with rotation, and
// reports NEEDS_AUTHORIZATION once the gateway refuses its refresh token.
func TestPublicClientAndImportedWXThroughTheBinary(t *testing.T) {
	callbackAddr := freeLoopbackAddr(t)
	wax := waxemu.New(waxemu.Options{ClientID: "public-app", PublicClient: true,
		RedirectURL: "http://" + callbackAddr + "/oauth2/callback"})
	wax.SetRotate(true)
	waxSrv := httptest.NewServer(wax)
	defer waxSrv.Close()
	wxg := wxemu.New(wxemu.Options{ClientID: "wx-app-client", Rotation: true, ExpiresIn: wxemu.Relative})
	wxSrv := httptest.NewServer(wxg)
	defer wxSrv.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
auth:
  allow_anonymous: {enabled: true, loopback_only: true, policy: {connections: ["*"], rpcs: [operator]}}
connections:
  - name: public
    type: authorization_code
    authorize_url: %[1]s/v1/authorize
    token_url: %[1]s/v1/access_token
    client_id: public-app
    client_authentication: none
    pkce: true
    extra_authorize_params: {duration: permanent}
  - name: wx-app
    type: wx
    token_url: %[2]s/v1/oauth2/token
    client_id: wx-app-client
    credentials: imported
`, waxSrv.URL, wxSrv.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, "-config", cfg, "-callback-addr", callbackAddr)
	client := p.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start, err := client.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Connection: "public", Account: "pat"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := http.Get(start.GetAuthorizationUrl() + "&login_hint=pat")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("public client's authorization ended with HTTP %d", r.StatusCode)
	}
	first, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "public", Account: "pat"})
	if err != nil {
		t.Fatalf("GetToken(public, pat) = %v", err)
	}
	second, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "public", Account: "pat", ForceRefresh: true})
	if err != nil || second.GetAccessToken() == first.GetAccessToken() || wax.UserOf(second.GetAccessToken()) != "pat" {
		t.Fatalf("GetToken(public, pat, force_refresh) = %v; want a refreshed token of pat's", err)
	}
	if c := wax.Counts(); c.Refreshes != 1 || c.PKCEFailures != 0 {
		t.Errorf("public client's upstream counts = %+v; want one refresh, no PKCE failure", c)
	}

	const addr = "3PImportedUserAddress"
	app := wxg.IssueAppTokens(addr, time.Hour)
	if _, err := client.ImportGrant(ctx, &tokenbrokerv1.ImportGrantRequest{Connection: "wx-app", Account: "u1",
		RefreshToken: app.RefreshToken, AccessToken: app.AccessToken, ExpiresAt: timestamppb.New(app.Expiry)}); err != nil {
		t.Fatalf("ImportGrant = %v", err)
	}
	got, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "wx-app", Account: "u1"})
	if err != nil || got.GetAccessToken() != app.AccessToken {
		t.Fatalf("GetToken(wx-app, u1) = %v; want the imported token", err)
	}
	for i := range 2 {
		got, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "wx-app", Account: "u1", ForceRefresh: true})
		if err != nil || wxg.AddressOf(got.GetAccessToken()) != addr {
			t.Fatalf("refresh #%d of the imported grant = %v; want a token of its address", i+1, err)
		}
	}
	wxg.RevokeRefreshTokens()
	_, err = client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "wx-app", Account: "u1", ForceRefresh: true})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("GetToken once the gateway refuses the refresh token = %v; want FailedPrecondition", err)
	}
	list, err := client.ListAccounts(ctx, &tokenbrokerv1.ListAccountsRequest{Connection: "wx-app"})
	if err != nil || len(list.GetAccounts()) != 1 || list.GetAccounts()[0].GetState() != tokenbrokerv1.ConnectionState_CONNECTION_STATE_NEEDS_AUTHORIZATION {
		t.Errorf("ListAccounts(wx-app) = %v, %v; want u1 in NEEDS_AUTHORIZATION", list, err)
	}
}

// TestIdleGrantKeptAliveThroughTheBinary: an account whose refresh token
// dies after 60 s unused is still alive after 3 minutes without a call.
// It takes 3 minutes of real time, so it runs only with
// TOKENBROKER_SLOW_TESTS=1 (make test-slow).
func TestIdleGrantKeptAliveThroughTheBinary(t *testing.T) {
	if os.Getenv("TOKENBROKER_SLOW_TESTS") == "" {
		t.Skip("3 minutes of real time: run with TOKENBROKER_SLOW_TESTS=1 (make test-slow)")
	}
	callbackAddr := freeLoopbackAddr(t)
	wax := waxemu.New(waxemu.Options{ClientID: "idle-app", ClientSecret: "idle-secret", RefreshTokenLifetime: time.Minute,
		RedirectURL: "http://" + callbackAddr + "/oauth2/callback"})
	waxSrv := httptest.NewServer(wax)
	defer waxSrv.Close()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "wax")
	if err := os.WriteFile(secretFile, []byte("idle-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
auth:
  allow_anonymous: {enabled: true, loopback_only: true, policy: {connections: ["*"], rpcs: [operator]}}
connections:
  - name: idle
    type: wax
    authorize_url: %[1]s/v1/authorize
    token_url: %[1]s/v1/access_token
    client_id: idle-app
    client_secret: {file: %[2]s}
`, waxSrv.URL, secretFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, "-config", cfg, "-callback-addr", callbackAddr)
	client := p.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start, err := client.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Connection: "idle", Account: "ivan"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := http.Get(start.GetAuthorizationUrl())
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	time.Sleep(3 * time.Minute) // no calls at all: only the broker's keep-alive
	if _, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Connection: "idle", Account: "ivan", ForceRefresh: true}); err != nil {
		t.Fatalf("GetToken after 3 idle minutes = %v; want the grant alive", err)
	}
	if c := wax.Counts(); c.InvalidGrant != 0 || c.Refreshes < 3 {
		t.Errorf("upstream counts = %+v; want at least 3 keep-alive refreshes and no refused refresh token", c)
	}
}

// client dials p's gRPC port; the connection closes with the test.
func (p *process) client(t *testing.T) tokenbrokerv1.TokenBrokerServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return tokenbrokerv1.NewTokenBrokerServiceClient(cc)
}

// freeLoopbackAddr is a loopback address nothing listens on, for a listener
// whose address an upstream emulator must know before the broker starts.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// wantMetrics fails t for each series line p's /metrics lacks.
func (p *process) wantMetrics(t *testing.T, lines ...string) {
	t.Helper()
	resp, err := http.Get("http://" + p.adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range lines {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
