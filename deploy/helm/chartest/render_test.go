package chartest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "../tokenbroker"
	releaseName = "tb"
	namespace   = "tokenbroker"
	fullname    = "tb-tokenbroker"

	// helmInstall is how the pinned helm gets where these tests look for it.
	helmInstall = "make helm-tools (GOBIN=$PWD/bin go install helm.sh/helm/v3/cmd/helm@v3.22.0, from the repository root)"
)

// The values files under the chart's ci/ directory.
const (
	defaultValues     = "default-values.yaml"
	allFeaturesValues = "all-features-values.yaml"
	embeddedValues    = "embedded-redis-values.yaml"
	memoryValues      = "memory-values.yaml"
	ingressValues     = "callback-ingress-values.yaml"
	httpRouteValues   = "callback-httproute-values.yaml"
)

// helm returns the helm binary: $HELM, or the pinned one in the repository's
// bin directory. A missing helm fails the test; it does not skip it.
func helm(t *testing.T) string {
	t.Helper()
	p := os.Getenv("HELM")
	if p == "" {
		p = filepath.Join("..", "..", "..", "bin", "helm")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("helm not found at %s (set HELM to use another): install it with %s", abs, helmInstall)
	}
	return abs
}

// template runs `helm template` with the ci/ values files named and the
// --set arguments given, and returns what it printed, or its error output.
func template(t *testing.T, valuesFiles []string, sets ...string) (string, error) {
	t.Helper()
	var args []string
	for _, f := range valuesFiles {
		args = append(args, "-f", filepath.Join(chartDir, "ci", f))
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return templateChart(t, chartDir, args...)
}

// templateChart runs `helm template` on the chart in dir with more arguments.
func templateChart(t *testing.T, dir string, more ...string) (string, error) {
	t.Helper()
	args := append([]string{"template", releaseName, dir, "--namespace", namespace}, more...)
	cmd := exec.Command(helm(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// object is one rendered manifest, decoded into its Kubernetes Go type.
type object struct {
	kind, name string
	source     string // the template it came from
	obj        any
}

// manifests is everything one `helm template` run rendered.
type manifests struct {
	raw     string
	objects []object
}

// render renders the chart and decodes every object strictly; any failure
// ends the test.
func render(t *testing.T, valuesFiles []string, sets ...string) *manifests {
	t.Helper()
	out, err := template(t, valuesFiles, sets...)
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, out)
}

var (
	docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)
	sourceLine   = regexp.MustCompile(`(?m)^# Source: (\S+)`)
)

// newObject returns a pointer to the Go type for apiVersion and kind.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return new(appsv1.Deployment), true
	case "apps/v1 StatefulSet":
		return new(appsv1.StatefulSet), true
	case "v1 Service":
		return new(corev1.Service), true
	case "v1 Pod":
		return new(corev1.Pod), true
	case "networking.k8s.io/v1 Ingress":
		return new(networkingv1.Ingress), true
	case "gateway.networking.k8s.io/v1 HTTPRoute":
		return new(unstructured.Unstructured), true
	case "v1 Secret":
		return new(corev1.Secret), true
	case "v1 ConfigMap":
		return new(corev1.ConfigMap), true
	case "v1 ServiceAccount":
		return new(corev1.ServiceAccount), true
	case "v1 PersistentVolumeClaim":
		return new(corev1.PersistentVolumeClaim), true
	case "policy/v1 PodDisruptionBudget":
		return new(policyv1.PodDisruptionBudget), true
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return new(autoscalingv2.HorizontalPodAutoscaler), true
	case "networking.k8s.io/v1 NetworkPolicy":
		return new(networkingv1.NetworkPolicy), true
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return new(unstructured.Unstructured), true
	}
	return nil, false
}

// decodeAll splits a multi-document stream and decodes each object into its
// Go type, rejecting unknown fields and duplicate keys.
func decodeAll(t *testing.T, out string) *manifests {
	t.Helper()
	m := &manifests{raw: out}
	for _, doc := range docSeparator.Split(out, -1) {
		source := ""
		if s := sourceLine.FindStringSubmatch(doc); s != nil {
			source = s[1]
		}
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatalf("%s: not valid YAML: %v", source, err)
		}
		if string(js) == "null" {
			continue // only comments
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(js, &head); err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		obj, ok := newObject(head.APIVersion, head.Kind)
		if !ok {
			t.Fatalf("%s: unexpected object %s %s %q: add its Go type to newObject", source, head.APIVersion, head.Kind, head.Metadata.Name)
		}
		if u, ok := obj.(*unstructured.Unstructured); ok {
			if err := u.UnmarshalJSON(js); err != nil {
				t.Fatalf("%s: %s %q: %v", source, head.Kind, head.Metadata.Name, err)
			}
		} else {
			dec := json.NewDecoder(bytes.NewReader(js))
			dec.DisallowUnknownFields()
			if err := dec.Decode(obj); err != nil {
				t.Fatalf("%s: %s %q does not decode strictly into %T: %v", source, head.Kind, head.Metadata.Name, obj, err)
			}
		}
		m.objects = append(m.objects, object{kind: head.Kind, name: head.Metadata.Name, source: source, obj: obj})
	}
	if len(m.objects) == 0 {
		t.Fatal("helm template rendered no objects")
	}
	return m
}

// all returns every object of type T.
func all[T any](m *manifests) []T {
	var out []T
	for _, o := range m.objects {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the object of type T named name, failing the test when there
// is none.
func one[T any](t *testing.T, m *manifests, name string) T {
	t.Helper()
	for _, o := range m.objects {
		if v, ok := o.obj.(T); ok && o.name == name {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T named %q among %v", zero, name, m.kinds())
	return zero
}

// kinds lists "Kind/name" for every object.
func (m *manifests) kinds() []string {
	var out []string
	for _, o := range m.objects {
		out = append(out, o.kind+"/"+o.name)
	}
	return out
}

// deployment returns the broker's Deployment and its broker container.
func (m *manifests) deployment(t *testing.T) (*appsv1.Deployment, *corev1.Container) {
	t.Helper()
	d := one[*appsv1.Deployment](t, m, fullname)
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == "broker" {
			return d, c
		}
	}
	t.Fatalf("Deployment %s has no container named broker", fullname)
	return nil, nil
}

// configYAML returns config.yaml from the config Secret.
func (m *manifests) configYAML(t *testing.T) []byte {
	t.Helper()
	s := one[*corev1.Secret](t, m, fullname+"-config")
	data, ok := s.Data["config.yaml"]
	if !ok {
		t.Fatalf("Secret %s has no config.yaml", s.Name)
	}
	return data
}

// config returns the rendered broker configuration, parsed.
func (m *manifests) config(t *testing.T) map[string]any {
	t.Helper()
	var c map[string]any
	if err := yaml.UnmarshalStrict(m.configYAML(t), &c); err != nil {
		t.Fatalf("config.yaml is not valid YAML: %v", err)
	}
	return c
}

// path walks a parsed YAML document: path(c, "cache", "redis", "addrs").
func path(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// notes renders templates/NOTES.txt, which `helm template` skips: a copy of
// the chart wraps it in a template of its own and renders only that.
func notes(t *testing.T, valuesFile string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tokenbroker")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"_chartest_notes.tpl": "{{- define \"chartest.notes\" -}}\n" + string(text) + "\n{{- end -}}\n",
		"chartest-notes.yaml": "notes: {{ include \"chartest.notes\" . | toJson }}\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, "templates", name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := templateChart(t, dir, "-f", filepath.Join(dir, "ci", valuesFile), "--show-only", "templates/chartest-notes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Notes string `json:"notes"`
	}
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("rendered notes: %v", err)
	}
	return doc.Notes
}
