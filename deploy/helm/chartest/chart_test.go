package chartest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Sentinel strings from ci/all-features-values.yaml: they stand for what
// must reach the broker only through the config Secret.
const (
	sentinelAPIKeyHash = "feedfacecafebeeffeedfacecafebeeffeedfacecafebeeffeedfacecafebeef"
	sentinelClientID   = "SENTINEL-client-id-7f3a"
)

const (
	grpcService     = "tokenbroker.v1.TokenBrokerService"
	nonRootUID      = int64(65532)
	configMountPath = "/etc/tokenbroker/config"
)

// ciValuesFiles lists every values file under the chart's ci/ directory.
func ciValuesFiles(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no values files in %s/ci: %v", chartDir, err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, filepath.Base(p))
	}
	return names
}

func TestDefaultInstall(t *testing.T) {
	m := render(t, []string{defaultValues})

	got := m.kinds()
	sort.Strings(got)
	want := []string{
		"Deployment/" + fullname,
		"NetworkPolicy/" + fullname,
		"Pod/" + fullname + "-test-health",
		"PodDisruptionBudget/" + fullname,
		"Secret/" + fullname + "-config",
		"Service/" + fullname,
		"ServiceAccount/" + fullname,
	}
	if !slices.Equal(got, want) {
		t.Errorf("objects = %v; want %v", got, want)
	}

	d, c := m.deployment(t)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("Deployment replicas = %s; want 2", deref(d.Spec.Replicas))
	}
	pod := d.Spec.Template.Spec

	// Probes: grpc.health.v1 on the gRPC port; readiness asks for the
	// broker's service, which turns NOT_SERVING as soon as a drain starts.
	checkGRPCProbe(t, "readinessProbe", c.ReadinessProbe, grpcService)
	checkGRPCProbe(t, "livenessProbe", c.LivenessProbe, "")
	checkGRPCProbe(t, "startupProbe", c.StartupProbe, "")

	checkHardened(t, "Deployment "+d.Name, &pod, c, nonRootUID)

	wantArgs := []string{"-config", configMountPath + "/config.yaml", "-shutdown-delay", "5s", "-drain-timeout", "25s"}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args = %q; want %q", c.Args, wantArgs)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g <= 5+25 {
		t.Errorf("terminationGracePeriodSeconds = %s; want more than shutdown delay + drain timeout (30)", deref(g))
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources = %+v; want a CPU request and a memory limit", c.Resources)
	}
	var keys []string
	for _, tsc := range pod.TopologySpreadConstraints {
		keys = append(keys, tsc.TopologyKey)
		if tsc.LabelSelector == nil || tsc.LabelSelector.MatchLabels["app.kubernetes.io/component"] != "broker" {
			t.Errorf("topology spread %s selects %v; want the broker pods", tsc.TopologyKey, tsc.LabelSelector)
		}
	}
	if want := []string{"kubernetes.io/hostname", "topology.kubernetes.io/zone"}; !slices.Equal(keys, want) {
		t.Errorf("topology spread keys = %v; want %v", keys, want)
	}
	if _, ok := d.Spec.Template.Annotations["checksum/config"]; !ok {
		t.Errorf("pod annotations = %v; want checksum/config", d.Spec.Template.Annotations)
	}
	if d.Spec.Strategy.RollingUpdate == nil || d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Errorf("strategy = %+v; want a rolling update that keeps every replica up", d.Spec.Strategy)
	}

	sa := one[*corev1.ServiceAccount](t, m, fullname)
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("ServiceAccount automountServiceAccountToken = %s; want false", deref(sa.AutomountServiceAccountToken))
	}
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName = %q; want %q", pod.ServiceAccountName, sa.Name)
	}

	svc := one[*corev1.Service](t, m, fullname)
	checkServicePort(t, svc, "grpc", 9090, "grpc")
	checkServicePort(t, svc, "admin", 9091, "http")
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not match the pod labels %v", k, v, d.Spec.Template.Labels)
		}
	}

	pdb := one[*policyv1.PodDisruptionBudget](t, m, fullname)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB maxUnavailable = %v; want 1", pdb.Spec.MaxUnavailable)
	}

	np := one[*networkingv1.NetworkPolicy](t, m, fullname)
	checkNetworkPolicy(t, np, false)
}

func TestAllFeatures(t *testing.T) {
	m := render(t, []string{allFeaturesValues})

	for _, kind := range []string{"HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget"} {
		if !slices.ContainsFunc(m.objects, func(o object) bool { return o.kind == kind }) {
			t.Errorf("no %s among %v", kind, m.kinds())
		}
	}
	d, c := m.deployment(t)
	if d.Spec.Replicas != nil {
		t.Errorf("Deployment replicas = %d with autoscaling on; want unset (the HPA owns it)", *d.Spec.Replicas)
	}
	checkHardened(t, "Deployment "+d.Name, &d.Spec.Template.Spec, c, nonRootUID)

	// TLS: kubelet's gRPC probe is plaintext only, so the probes use HTTPS
	// on the admin port, which asks for no client certificate even with mTLS.
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Scheme != corev1.URISchemeHTTPS || p.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe = %+v with TLS; want httpGet https on the admin port", name, p)
		}
	}
	if p := c.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe path = %s; want /healthz (never /readyz, which fails while draining)", p.HTTPGet.Path)
	}
	if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g <= 10+60 {
		t.Errorf("terminationGracePeriodSeconds = %s; want more than 70", deref(g))
	}
	for _, k := range []string{"prometheus.io/scrape", "prometheus.io/port", "checksum/config"} {
		if _, ok := d.Spec.Template.Annotations[k]; !ok {
			t.Errorf("pod annotations = %v; want %s", d.Spec.Template.Annotations, k)
		}
	}

	hpa := one[*autoscalingv2.HorizontalPodAutoscaler](t, m, fullname)
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name {
		t.Errorf("HPA scaleTargetRef = %+v; want Deployment %s", ref, d.Name)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != 3 || hpa.Spec.MaxReplicas != 10 {
		t.Errorf("HPA replicas = %s..%d; want 3..10", deref(hpa.Spec.MinReplicas), hpa.Spec.MaxReplicas)
	}

	sm := one[*unstructured.Unstructured](t, m, fullname)
	if sm.GetAPIVersion() != "monitoring.coreos.com/v1" || sm.GetKind() != "ServiceMonitor" {
		t.Fatalf("ServiceMonitor is %s %s", sm.GetAPIVersion(), sm.GetKind())
	}
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["port"] != "admin" || eps[0].(map[string]any)["scheme"] != "https" {
		t.Errorf("ServiceMonitor endpoints = %v; want the admin port over https", eps)
	}

	headless := one[*corev1.Service](t, m, fullname+"-headless")
	if headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("headless Service clusterIP = %q; want None", headless.Spec.ClusterIP)
	}

	np := one[*networkingv1.NetworkPolicy](t, m, fullname)
	checkNetworkPolicy(t, np, true)
	if !slices.ContainsFunc(np.Spec.Egress, func(r networkingv1.NetworkPolicyEgressRule) bool {
		return slices.ContainsFunc(r.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port.IntValue() == 26379 })
	}) {
		t.Errorf("NetworkPolicy egress = %+v; want the Sentinel port 26379 (redis.masterName is set)", np.Spec.Egress)
	}

	// Every existing Secret named in the values is mounted, read-only.
	for _, name := range []string{"tokenbroker-tls", "tokenbroker-cache-keys", "tokenbroker-redis", "redis-ca", "tokenbroker-redis-client", "pay-oauth", "wx-seed"} {
		if !slices.ContainsFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
			return v.Secret != nil && v.Secret.SecretName == name
		}) {
			t.Errorf("Secret %s is not mounted", name)
		}
	}

	cfg := m.config(t)
	for _, k := range []string{"tls", "auth", "encryption", "cache", "connections"} {
		if cfg[k] == nil {
			t.Errorf("config.yaml has no %s", k)
		}
	}
	if got := path(cfg, "tls", "client_ca_file"); got != "/etc/tokenbroker/tls/ca.crt" {
		t.Errorf("tls.client_ca_file = %v; want /etc/tokenbroker/tls/ca.crt", got)
	}
	for _, c := range []struct {
		path []string
		want any
	}{
		{[]string{"cache", "redis", "master_name"}, "mymaster"},
		{[]string{"cache", "redis", "db"}, float64(2)},
		{[]string{"cache", "redis", "dial_timeout"}, "3s"},
		{[]string{"cache", "redis", "op_timeout"}, "250ms"},
		{[]string{"cache", "redis", "sentinel_username"}, "sentinel-user"},
		{[]string{"cache", "redis", "password", "file"}, "/etc/tokenbroker/redis/password"},
		{[]string{"cache", "redis", "sentinel_password", "file"}, "/etc/tokenbroker/redis/sentinel-password"},
		{[]string{"cache", "redis", "tls", "cert_file"}, "/etc/tokenbroker/redis-client/tls.crt"},
		{[]string{"cache", "redis", "tls", "key_file"}, "/etc/tokenbroker/redis-client/tls.key"},
		{[]string{"tls", "client_auth"}, "require_and_verify"},
		{[]string{"tls", "min_version"}, "1.3"},
	} {
		if got := path(cfg, c.path...); got != c.want {
			t.Errorf("%s = %#v; want %#v", strings.Join(c.path, "."), got, c.want)
		}
	}
	// Both Redis passwords come from one Secret, each under its own key.
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret == nil || v.Secret.SecretName != "tokenbroker-redis" {
			continue
		}
		var items []string
		for _, it := range v.Secret.Items {
			items = append(items, it.Key+"→"+it.Path)
		}
		if want := []string{"redis-password→password", "sentinel-password→sentinel-password"}; !slices.Equal(items, want) {
			t.Errorf("Secret tokenbroker-redis items = %v; want %v", items, want)
		}
	}
	if got := path(cfg, "encryption", "primary"); got != "k2026" {
		t.Errorf("encryption.primary = %v; want k2026", got)
	}
}

// TestEveryValuesFile renders each ci/ values file and checks what must hold
// for any values: strict decoding (in render), hardened pods, read-only
// secret volumes, no secret in an env value, and every file the config names
// mounted where the config says.
func TestEveryValuesFile(t *testing.T) {
	for _, f := range ciValuesFiles(t) {
		t.Run(f, func(t *testing.T) {
			m := render(t, []string{f})
			d, c := m.deployment(t)
			checkHardened(t, "Deployment "+d.Name, &d.Spec.Template.Spec, c, nonRootUID)
			checkMounts(t, m.config(t), &d.Spec.Template.Spec, c)
			checkNoSecretsOutsideSecrets(t, m)
			for _, s := range all[*appsv1.StatefulSet](m) {
				pod := &s.Spec.Template.Spec
				for i := range pod.Containers {
					uid := int64(0)
					if sc := pod.Containers[i].SecurityContext; sc != nil && sc.RunAsUser != nil {
						uid = *sc.RunAsUser
					}
					checkHardened(t, "StatefulSet "+s.Name, pod, &pod.Containers[i], uid)
				}
			}
		})
	}
}

// TestSecretsStayInTheSecret: the sentinel API-key hash and client id from
// ci/all-features-values.yaml reach the config Secret and nothing else.
func TestSecretsStayInTheSecret(t *testing.T) {
	m := render(t, []string{allFeaturesValues})
	cfg := string(m.configYAML(t))
	for _, s := range []string{sentinelAPIKeyHash, sentinelClientID} {
		if !strings.Contains(cfg, s) {
			t.Errorf("config.yaml lacks the sentinel %.12s…: the test values no longer reach it", s)
		}
		// Secret data is base64, so the plain text must appear nowhere in
		// the rendered output: not in a ConfigMap, an env value, an
		// annotation or a label.
		if strings.Contains(m.raw, s) {
			t.Errorf("the sentinel %.12s… appears in plain text in the rendered manifests", s)
		}
		for _, o := range m.objects {
			switch v := o.obj.(type) {
			case *corev1.ConfigMap:
				for k, d := range v.Data {
					if strings.Contains(d, s) {
						t.Errorf("ConfigMap %s key %s holds the sentinel %.12s…", v.Name, k, s)
					}
				}
			case *corev1.Secret:
				if v.Name != fullname+"-config" && strings.Contains(fmt.Sprint(v.Data, v.StringData), s) {
					t.Errorf("Secret %s holds the sentinel %.12s…", v.Name, s)
				}
			}
		}
		for _, env := range allEnv(m) {
			if strings.Contains(env.Value, s) {
				t.Errorf("env %s holds the sentinel %.12s…", env.Name, s)
			}
		}
	}
}

func TestConfigChecksum(t *testing.T) {
	checksum := func(t *testing.T, sets ...string) string {
		t.Helper()
		m := render(t, []string{defaultValues}, sets...)
		d, _ := m.deployment(t)
		sum := d.Spec.Template.Annotations["checksum/config"]
		// The annotation is the SHA-256 of exactly what the Secret holds.
		raw := sha256.Sum256(m.configYAML(t))
		if want := hex.EncodeToString(raw[:]); sum != want {
			t.Errorf("checksum/config = %s; want sha256(config.yaml) = %s", sum, want)
		}
		return sum
	}
	base := checksum(t)
	for _, set := range []string{"log.level=debug", "broker.leaseTTL=20s", "redis.addrs={redis-2:6379}", "auth.allowAnonymous.enabled=true,auth.allowAnonymous.policy.connections={*}", "connections[0].name=x,connections[0].type=client_credentials"} {
		if got := checksum(t, set); got == base {
			t.Errorf("--set %s: checksum/config unchanged (%s); want a new one so that pods roll", set, got)
		}
	}
	for _, set := range []string{"resources.requests.cpu=200m", "podAnnotations.a=b", "replicaCount=3"} {
		if got := checksum(t, set); got != base {
			t.Errorf("--set %s changes no config but checksum/config = %s; want %s", set, got, base)
		}
	}
}

func TestRenderedConfig(t *testing.T) {
	m := render(t, []string{defaultValues})
	cfg := m.config(t)
	var keys []string
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := []string{"auth", "broker", "cache", "connections", "encryption", "listen", "log"}
	if !slices.Equal(keys, want) {
		t.Errorf("config.yaml top-level keys = %v; want %v", keys, want)
	}
	for _, c := range []struct {
		path []string
		want any
	}{
		{[]string{"listen", "grpc"}, ":9090"},
		{[]string{"listen", "admin"}, ":9091"},
		{[]string{"listen", "grpc_stream_workers"}, float64(64)},
		{[]string{"log", "level"}, "info"},
		{[]string{"cache", "type"}, "redis"},
		{[]string{"cache", "redis", "key_prefix"}, "tokenbroker:v1:"},
		{[]string{"cache", "redis", "tls", "enabled"}, false},
		{[]string{"auth", "allow_anonymous", "enabled"}, false},
		{[]string{"auth", "allow_anonymous", "loopback_only"}, true},
		{[]string{"encryption", "insecure_plaintext"}, false},
		{[]string{"broker", "lease_ttl"}, "10s"},
		{[]string{"broker", "refresh_ahead"}, true},
	} {
		if got := path(cfg, c.path...); got != c.want {
			t.Errorf("%s = %#v; want %#v", strings.Join(c.path, "."), got, c.want)
		}
	}
	if got := fmt.Sprint(path(cfg, "cache", "redis", "addrs")); got != "[redis-master.redis.svc:6379]" {
		t.Errorf("cache.redis.addrs = %s; want [redis-master.redis.svc:6379]", got)
	}
	if got := fmt.Sprint(path(cfg, "encryption", "keys")); got != "[map[id:k1 secret:map[file:/etc/tokenbroker/keys/k1]]]" {
		t.Errorf("encryption.keys = %s; want k1 from /etc/tokenbroker/keys/k1", got)
	}
	if path(cfg, "cache", "redis", "password") != nil {
		t.Errorf("cache.redis.password is set without redis.existingSecret")
	}
}

func TestProbes(t *testing.T) {
	for _, c := range []struct {
		name string
		sets []string
		// check the readiness probe
		check func(p *corev1.Probe) bool
		want  string
	}{
		{"plaintext", nil,
			func(p *corev1.Probe) bool { return p.GRPC != nil && p.GRPC.Port == 9090 }, "grpc on 9090"},
		{"tls", []string{"tls.enabled=true", "tls.existingSecret=tls"},
			func(p *corev1.Probe) bool {
				return p.HTTPGet != nil && p.HTTPGet.Scheme == corev1.URISchemeHTTPS && p.HTTPGet.Path == "/readyz" && p.HTTPGet.Port.String() == "admin"
			}, "httpGet https /readyz on admin"},
		{"mtls", []string{"tls.enabled=true", "tls.existingSecret=tls", "tls.mtls=true"},
			func(p *corev1.Probe) bool { return p.HTTPGet != nil && p.HTTPGet.Scheme == corev1.URISchemeHTTPS }, "httpGet https"},
		{"tcp", []string{"probes.type=tcp"},
			func(p *corev1.Probe) bool { return p.TCPSocket != nil && p.TCPSocket.Port.String() == "grpc" }, "tcpSocket on grpc"},
		{"http", []string{"probes.type=http"},
			func(p *corev1.Probe) bool { return p.HTTPGet != nil && p.HTTPGet.Scheme == corev1.URISchemeHTTP }, "httpGet http"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := render(t, []string{defaultValues}, c.sets...)
			_, ctr := m.deployment(t)
			if p := ctr.ReadinessProbe; p == nil || !c.check(p) {
				t.Errorf("readinessProbe = %+v; want %s", p, c.want)
			}
		})
	}
}

func TestEmbeddedRedis(t *testing.T) {
	m := render(t, []string{embeddedValues})
	redis := fullname + "-redis"
	s := one[*appsv1.StatefulSet](t, m, redis)
	if s.Spec.Replicas == nil || *s.Spec.Replicas != 1 {
		t.Errorf("Redis replicas = %s; want 1", deref(s.Spec.Replicas))
	}
	if len(s.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("Redis volumeClaimTemplates = %d; want 1", len(s.Spec.VolumeClaimTemplates))
	}
	if got := s.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().String(); got != "2Gi" {
		t.Errorf("Redis PVC size = %s; want 2Gi", got)
	}
	rc := s.Spec.Template.Spec.Containers[0]
	args := strings.Join(rc.Args, " ")
	for _, want := range []string{"--appendonly yes", "--dir /data", "--requirepass $(REDIS_PASSWORD)"} {
		if !strings.Contains(args, want) {
			t.Errorf("Redis args %q lack %q", args, want)
		}
	}
	if len(rc.Env) != 1 || rc.Env[0].ValueFrom == nil || rc.Env[0].ValueFrom.SecretKeyRef == nil || rc.Env[0].Value != "" {
		t.Errorf("Redis env = %+v; want the password from a secretKeyRef", rc.Env)
	}
	one[*corev1.Service](t, m, redis)
	one[*networkingv1.NetworkPolicy](t, m, redis)

	cfg := m.config(t)
	if got := fmt.Sprint(path(cfg, "cache", "redis", "addrs")); got != "["+redis+":6379]" {
		t.Errorf("cache.redis.addrs = %s; want [%s:6379]", got, redis)
	}
	if got := path(cfg, "encryption", "insecure_plaintext"); got != true {
		t.Errorf("encryption.insecure_plaintext = %v; want true", got)
	}
	// The broker may reach the Redis pods, and the broker's selector does
	// not take them in.
	np := one[*networkingv1.NetworkPolicy](t, m, fullname)
	if !slices.ContainsFunc(np.Spec.Egress, func(r networkingv1.NetworkPolicyEgressRule) bool {
		return len(r.To) == 1 && r.To[0].PodSelector != nil && r.To[0].PodSelector.MatchLabels["app.kubernetes.io/component"] == "redis"
	}) {
		t.Errorf("NetworkPolicy egress = %+v; want a rule to the Redis pods", np.Spec.Egress)
	}
	d, _ := m.deployment(t)
	if d.Spec.Selector.MatchLabels["app.kubernetes.io/component"] != "broker" {
		t.Errorf("Deployment selector = %v; want component=broker, apart from Redis", d.Spec.Selector.MatchLabels)
	}
}

func TestMemoryMode(t *testing.T) {
	m := render(t, []string{memoryValues})
	d, c := m.deployment(t)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("replicas = %s; want 1", deref(d.Spec.Replicas))
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy = %s; want Recreate, so that two pods never share the state file", d.Spec.Strategy.Type)
	}
	pvc := one[*corev1.PersistentVolumeClaim](t, m, fullname+"-state")
	if pvc.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Errorf("state PVC annotations = %v; want helm.sh/resource-policy: keep", pvc.Annotations)
	}
	cfg := m.config(t)
	if got := path(cfg, "cache", "state_file"); got != "/var/lib/tokenbroker/state.json" {
		t.Errorf("cache.state_file = %v", got)
	}
	if path(cfg, "cache", "redis") != nil || path(cfg, "encryption") != nil {
		t.Errorf("memory mode config has cache.redis or encryption: %v", cfg)
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool {
		return vm.MountPath == "/var/lib/tokenbroker" && !vm.ReadOnly
	}) {
		t.Errorf("volumeMounts = %+v; want a writable /var/lib/tokenbroker", c.VolumeMounts)
	}
}

// TestValidate: templates/validate.yaml and values.schema.json refuse what
// cannot work, each with a message naming the value to fix.
func TestValidate(t *testing.T) {
	for _, c := range []struct {
		name  string
		files []string
		sets  []string
		want  []string
	}{
		{"chart defaults need Redis, keys and a connection", nil, nil,
			[]string{"3 problem(s)", "redis.addrs: cache.type=redis needs", "encryption.existingSecret: tokens and grants in Redis must be encrypted",
				"connections: the broker needs at least one connection"}},
		{"redis without addrs", []string{defaultValues}, []string{"redis.addrs=null"},
			[]string{"redis.addrs: cache.type=redis needs"}},
		{"memory with 2 replicas", []string{defaultValues}, []string{"cache.type=memory"},
			[]string{"replicaCount: 2 replicas (or autoscaling) need cache.type=redis"}},
		{"memory with autoscaling", []string{memoryValues}, []string{"autoscaling.enabled=true"},
			[]string{"need cache.type=redis"}},
		{"redis without encryption", []string{defaultValues}, []string{"encryption.existingSecret="},
			[]string{"encryption.existingSecret: tokens and grants in Redis must be encrypted"}},
		{"encryption and plaintext", []string{defaultValues}, []string{"encryption.insecurePlaintext=true"},
			[]string{"encryption.insecurePlaintext: contradicts"}},
		{"unknown primary key", []string{defaultValues}, []string{"encryption.primary=k9"},
			[]string{`encryption.primary: "k9" is not one of encryption.keys`}},
		{"embedded and external Redis", []string{embeddedValues}, []string{"redis.addrs={redis:6379}"},
			[]string{"redis.addrs: must be empty with redis.embedded.enabled=true"}},
		{"embedded with Sentinel", []string{embeddedValues}, []string{"redis.masterName=m"},
			[]string{"redis.embedded.enabled: the in-chart Redis is one plain node"}},
		{"Sentinel and cluster", []string{defaultValues}, []string{"redis.masterName=m", "redis.cluster=true"},
			[]string{"choose Sentinel or cluster"}},
		{"Sentinel password without Sentinel", []string{defaultValues}, []string{"redis.existingSecret=r", "redis.sentinelPasswordKey=sp"},
			[]string{"redis.sentinelUsername, redis.sentinelPasswordKey: only with redis.masterName"}},
		{"Sentinel password without the Secret", []string{defaultValues}, []string{"redis.masterName=m", "redis.sentinelPasswordKey=sp"},
			[]string{"redis.sentinelPasswordKey: names a key in redis.existingSecret"}},
		{"db with cluster", []string{defaultValues}, []string{"redis.cluster=true", "redis.db=3"},
			[]string{"redis.db: Redis Cluster has only database 0"}},
		{"bad dial timeout", []string{defaultValues}, []string{"redis.dialTimeout=soon"},
			[]string{"dialTimeout"}},
		{"bad op timeout", []string{defaultValues}, []string{"redis.opTimeout=soon"},
			[]string{"opTimeout"}},
		{"Redis client certificate without TLS", []string{defaultValues}, []string{"redis.tls.clientCertSecret=c"},
			[]string{"redis.tls.clientCertSecret: set redis.tls.enabled=true too"}},
		{"TLS settings without TLS", []string{defaultValues}, []string{"tls.minVersion=1.3"},
			[]string{"tls.clientAuth, tls.minVersion: need tls.enabled=true"}},
		{"required client certificates without a CA", []string{defaultValues}, []string{"tls.enabled=true", "tls.existingSecret=x", "tls.clientAuth=require_and_verify"},
			[]string{"tls.clientAuth: require_and_verify needs tls.mtls=true"}},
		{"bad TLS version", []string{defaultValues}, []string{"tls.enabled=true", "tls.existingSecret=x", "tls.minVersion=1.1"},
			[]string{"minVersion"}},
		{"tls without secret", []string{defaultValues}, []string{"tls.enabled=true"},
			[]string{"tls.existingSecret: tls.enabled=true needs"}},
		{"grpc probes with tls", []string{defaultValues}, []string{"tls.enabled=true", "tls.existingSecret=x", "probes.type=grpc"},
			[]string{"probes.type: grpc probes cannot reach TLS listeners"}},
		{"grace period too short", []string{defaultValues}, []string{"terminationGracePeriodSeconds=30"},
			[]string{"terminationGracePeriodSeconds: 30 must exceed shutdownDelay + drainTimeout (30s)"}},
		{"grace period with minutes", []string{defaultValues}, []string{"drainTimeout=1m30s"},
			[]string{"must exceed shutdownDelay + drainTimeout (95s)"}},
		{"connection secret over the config", []string{defaultValues},
			[]string{"connectionSecrets[0].name=a", "connectionSecrets[0].secretName=a", "connectionSecrets[0].mountPath=/etc/tokenbroker/config"},
			[]string{"connectionSecrets[0].mountPath: /etc/tokenbroker/config is already used by the config"}},
		{"duplicate connection", []string{defaultValues},
			[]string{"connections[0].name=a", "connections[0].type=wx", "connections[1].name=a", "connections[1].type=wx"},
			[]string{`connections[1].name: duplicate "a"`}},
		{"anonymous without connections", []string{defaultValues}, []string{"auth.allowAnonymous.enabled=true"},
			[]string{"auth.allowAnonymous.policy.connections: required with auth.allowAnonymous.enabled=true"}},
		{"callback ingress without the callback", []string{defaultValues}, []string{"callback.ingress.enabled=true", "callback.host=b.example.com"},
			[]string{"callback.ingress.enabled, callback.httpRoute.enabled: the callback listener is off"}},
		{"callback ingress without a host", []string{ingressValues}, []string{"callback.host="},
			[]string{"callback.host: the public host"}},
		{"httproute without a gateway", []string{httpRouteValues}, []string{"callback.httpRoute.parentRefs=null"},
			[]string{"callback.httpRoute.parentRefs: name the Gateway"}},
		{"bad callback.enabled", []string{defaultValues}, []string{"callback.enabled=sometimes"},
			[]string{"callback", "enabled"}},
		{"service monitor scheme", []string{allFeaturesValues}, []string{"metrics.serviceMonitor.scheme=http"},
			[]string{"metrics.serviceMonitor.scheme: must be https"}},
		{"several problems at once", []string{defaultValues}, []string{"cache.type=memory", "tls.mtls=true"},
			[]string{"2 problem(s)", "replicaCount:", "tls.mtls: needs tls.enabled=true"}},

		// values.schema.json
		{"misspelt top-level key", []string{defaultValues}, []string{"replicaCont=3"},
			[]string{"replicaCont"}},
		{"misspelt nested key", []string{defaultValues}, []string{"redis.masterNmae=x"},
			[]string{"masterNmae"}},
		{"bad cache type", []string{defaultValues}, []string{"cache.type=etcd"},
			[]string{"cache", "type"}},
		{"bad API-key hash", []string{defaultValues}, []string{"auth.callers[0].name=x", "auth.callers[0].api_key_sha256[0]=plain-key"},
			[]string{"api_key_sha256"}},
		{"bad duration", []string{defaultValues}, []string{"shutdownDelay=5 seconds"},
			[]string{"shutdownDelay"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := template(t, c.files, c.sets...)
			if err == nil {
				t.Fatalf("helm template succeeded; want an error mentioning %q\n%.400s", c.want, out)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestChartDefaultsPassSchema: every key in values.yaml is in the schema,
// which forbids unknown keys, so the defaults plus the three required values
// (redis.addrs, encryption.existingSecret, connections) render.
func TestChartDefaultsPassSchema(t *testing.T) {
	if _, err := template(t, nil, "redis.addrs={r:6379}", "encryption.existingSecret=k",
		"connections[0].name=x", "connections[0].type=wx"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"additionalProperties": false`) {
		t.Error("values.schema.json does not forbid unknown keys")
	}
}

// TestNotes: NOTES.txt shows how to reach the broker with grpcurl.
func TestNotes(t *testing.T) {
	for _, c := range []struct {
		file string
		want []string
	}{
		{defaultValues, []string{
			"kubectl -n " + namespace + " port-forward svc/" + fullname + " 9090:9090 9091:9091",
			"grpcurl -plaintext localhost:9090 list",
			"grpcurl -plaintext localhost:9090 grpc.health.v1.Health/Check",
			`grpcurl -plaintext "${H[@]}" localhost:9090 tokenbroker.v1.TokenBrokerService/ListConnections`,
			`grpcurl -plaintext "${H[@]}" -d '{"connection":"payments","scopes":[]}' localhost:9090 tokenbroker.v1.TokenBrokerService/GetToken`,
			"authorization: Bearer $TOKENBROKER_API_KEY",
			"set auth.callers",
		}},
		{allFeaturesValues, []string{
			"grpcurl -insecure -cert client.crt -key client.key localhost:9090 list",
			"tokenbroker.v1.TokenBrokerService/GetToken",
			"curl -sk https://localhost:9091/readyz",
		}},
		{memoryValues, []string{`'{"connection":"demo-cc","scopes":[]}'`}},
	} {
		t.Run(c.file, func(t *testing.T) {
			n := notes(t, c.file)
			for _, w := range c.want {
				if !strings.Contains(n, w) {
					t.Errorf("NOTES.txt lacks %q:\n%s", w, n)
				}
			}
		})
	}
}

func checkGRPCProbe(t *testing.T, name string, p *corev1.Probe, service string) {
	t.Helper()
	if p == nil || p.GRPC == nil {
		t.Errorf("%s = %+v; want a native grpc probe", name, p)
		return
	}
	if p.GRPC.Port != 9090 {
		t.Errorf("%s port = %d; want 9090", name, p.GRPC.Port)
	}
	if p.GRPC.Service == nil || *p.GRPC.Service != service {
		t.Errorf("%s service = %s; want %q", name, deref(p.GRPC.Service), service)
	}
}

// checkHardened checks the pod and container security contexts.
func checkHardened(t *testing.T, where string, pod *corev1.PodSpec, c *corev1.Container, uid int64) {
	t.Helper()
	if a := pod.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("%s: automountServiceAccountToken = %s; want false", where, deref(a))
	}
	psc := pod.SecurityContext
	if psc == nil {
		t.Errorf("%s: no pod securityContext", where)
		return
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod runAsNonRoot = %s; want true", where, deref(psc.RunAsNonRoot))
	}
	if psc.RunAsUser == nil || *psc.RunAsUser != uid {
		t.Errorf("%s: pod runAsUser = %s; want %d", where, deref(psc.RunAsUser), uid)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile = %v; want RuntimeDefault", where, psc.SeccompProfile)
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: container %s has no securityContext", where, c.Name)
		return
	}
	for _, b := range []struct {
		name string
		got  *bool
		want bool
	}{
		{"runAsNonRoot", sc.RunAsNonRoot, true},
		{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem, true},
		{"allowPrivilegeEscalation", sc.AllowPrivilegeEscalation, false},
	} {
		if b.got == nil || *b.got != b.want {
			t.Errorf("%s: container %s %s = %s; want %v", where, c.Name, b.name, deref(b.got), b.want)
		}
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != uid {
		t.Errorf("%s: container %s runAsUser = %s; want %d", where, c.Name, deref(sc.RunAsUser), uid)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: container %s capabilities = %+v; want drop [ALL], add none", where, c.Name, sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: container %s seccompProfile = %v; want RuntimeDefault", where, c.Name, sc.SeccompProfile)
	}
}

func checkServicePort(t *testing.T, svc *corev1.Service, name string, port int32, appProtocol string) {
	t.Helper()
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			if p.Port != port || p.AppProtocol == nil || *p.AppProtocol != appProtocol {
				t.Errorf("Service port %s = %d appProtocol %s; want %d %s", name, p.Port, deref(p.AppProtocol), port, appProtocol)
			}
			return
		}
	}
	t.Errorf("Service %s has no port %s", svc.Name, name)
}

// checkNetworkPolicy: gRPC and admin ingress only; egress for DNS, Redis and
// upstream HTTPS.
func checkNetworkPolicy(t *testing.T, np *networkingv1.NetworkPolicy, restrictedGRPC bool) {
	t.Helper()
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Errorf("NetworkPolicy policyTypes = %v; want Ingress and Egress", np.Spec.PolicyTypes)
	}
	ingress := map[int]networkingv1.NetworkPolicyIngressRule{}
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			ingress[p.Port.IntValue()] = r
		}
	}
	if len(ingress) != 2 {
		t.Errorf("NetworkPolicy ingress ports = %v; want 9090 and 9091 only", ingress)
	}
	if r, ok := ingress[9090]; !ok || len(r.From) == 0 {
		t.Errorf("NetworkPolicy: no ingress rule with peers for 9090")
	} else if restrictedGRPC && r.From[0].NamespaceSelector == nil {
		t.Errorf("NetworkPolicy 9090 from = %+v; want the configured namespace selector", r.From)
	}
	if r, ok := ingress[9091]; !ok || len(r.From) == 0 || r.From[0].NamespaceSelector == nil ||
		r.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" {
		t.Errorf("NetworkPolicy: 9091 ingress = %+v; want from the monitoring namespace", r)
	}
	egress := map[int]bool{}
	for _, r := range np.Spec.Egress {
		for _, p := range r.Ports {
			egress[p.Port.IntValue()] = true
		}
	}
	for _, p := range []int{53, 6379, 443} {
		if !egress[p] {
			t.Errorf("NetworkPolicy egress ports = %v; want %d", egress, p)
		}
	}
}

// allEnv returns every env entry of every container and init container.
func allEnv(m *manifests) []corev1.EnvVar {
	var pods []*corev1.PodSpec
	for _, d := range all[*appsv1.Deployment](m) {
		pods = append(pods, &d.Spec.Template.Spec)
	}
	for _, s := range all[*appsv1.StatefulSet](m) {
		pods = append(pods, &s.Spec.Template.Spec)
	}
	var env []corev1.EnvVar
	for _, p := range pods {
		for _, c := range slices.Concat(p.InitContainers, p.Containers) {
			env = append(env, c.Env...)
		}
	}
	return env
}

// checkNoSecretsOutsideSecrets: no ConfigMaps at all, and no env value that
// is not plainly harmless. Secrets reach containers as files or secretKeyRefs.
func checkNoSecretsOutsideSecrets(t *testing.T, m *manifests) {
	t.Helper()
	for _, cm := range all[*corev1.ConfigMap](m) {
		t.Errorf("ConfigMap %s rendered: configuration belongs in the config Secret", cm.Name)
	}
	for _, e := range allEnv(m) {
		if e.Value != "" {
			t.Errorf("env %s has a literal value; want valueFrom (a secretKeyRef or a field)", e.Name)
		}
	}
}

// checkMounts: every file the config names is in a volume mounted into the
// broker container, and in the volume's items when it lists them; volumes
// from Secrets are mounted read-only.
func checkMounts(t *testing.T, cfg map[string]any, pod *corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok {
			t.Errorf("volumeMount %s names no volume", vm.Name)
		}
		if v.Secret != nil && !vm.ReadOnly {
			t.Errorf("volumeMount %s of Secret %s is writable; want readOnly", vm.Name, v.Secret.SecretName)
		}
		if vm.SubPath != "" {
			t.Errorf("volumeMount %s uses subPath, which never sees a rotated Secret", vm.Name)
		}
	}
	var files []string
	var walk func(key string, v any)
	walk = func(key string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(k, x)
			}
		case []any:
			for _, x := range v {
				walk(key, x)
			}
		case string:
			if key == "file" || strings.HasSuffix(key, "_file") {
				files = append(files, v)
			}
		}
	}
	walk("", cfg)
	if len(files) == 0 {
		t.Error("the config names no files")
	}
	for _, f := range files {
		found := false
		for _, vm := range c.VolumeMounts {
			rel, ok := strings.CutPrefix(f, strings.TrimSuffix(vm.MountPath, "/")+"/")
			if !ok {
				continue
			}
			found = true
			if s := volumes[vm.Name].Secret; s != nil && len(s.Items) > 0 &&
				!slices.ContainsFunc(s.Items, func(it corev1.KeyToPath) bool { return it.Path == rel }) {
				t.Errorf("config names %s, but volume %s holds only %+v", f, vm.Name, s.Items)
			}
		}
		if !found {
			t.Errorf("config names %s, which is in no mounted volume", f)
		}
	}
}

// deref formats what p points to, or "unset".
func deref[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprintf("%#v", *p)
}
