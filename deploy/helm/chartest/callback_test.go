package chartest

import (
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// callbackRule returns the rule of np for port, if any.
func callbackRule(np *networkingv1.NetworkPolicy, port int) (networkingv1.NetworkPolicyIngressRule, bool) {
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port.IntValue() == port {
				return r, true
			}
		}
	}
	return networkingv1.NetworkPolicyIngressRule{}, false
}

// TestCallbackOff: without an authorization-code connection the callback
// listener is off (listen.callback "off"): no container port, Service port,
// NetworkPolicy rule, Ingress or HTTPRoute; forced on, it gets them all
// but the published routes (issue 15, finding 1).
func TestCallbackOff(t *testing.T) {
	m := render(t, []string{defaultValues}, "callback.host=b.example.com")
	if got := path(m.config(t), "listen", "callback"); got != "off" {
		t.Errorf("listen.callback = %v; want off", got)
	}
	_, c := m.deployment(t)
	for _, p := range c.Ports {
		if p.Name == "callback" {
			t.Errorf("container port callback rendered with the callback off")
		}
	}
	svc := one[*corev1.Service](t, m, fullname)
	for _, p := range svc.Spec.Ports {
		if p.Name == "callback" {
			t.Errorf("Service port callback rendered with the callback off")
		}
	}
	if _, ok := callbackRule(one[*networkingv1.NetworkPolicy](t, m, fullname), 8081); ok {
		t.Errorf("NetworkPolicy has a callback rule with the callback off")
	}
	if n := len(all[*networkingv1.Ingress](m)); n != 0 {
		t.Errorf("%d Ingresses rendered with the callback off", n)
	}

	// Forced on.
	m = render(t, []string{defaultValues}, "callback.enabled=true")
	if got := path(m.config(t), "listen", "callback"); got != ":8081" {
		t.Errorf("callback.enabled=true: listen.callback = %v; want :8081", got)
	}
	checkServicePort(t, one[*corev1.Service](t, m, fullname), "callback", 8081, "http")
}

// TestCallbackIngress: with a wax connection the callback is on; the
// Ingress publishes exactly https://<host>/oauth2/callback to the callback
// port, with TLS; only the ingress controller's namespace may reach it.
func TestCallbackIngress(t *testing.T) {
	m := render(t, []string{ingressValues})
	if got := path(m.config(t), "listen", "callback"); got != ":8081" {
		t.Errorf("listen.callback = %v; want :8081", got)
	}
	_, c := m.deployment(t)
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "callback" && p.ContainerPort == 8081 }) {
		t.Errorf("container ports = %+v; want callback 8081", c.Ports)
	}
	checkServicePort(t, one[*corev1.Service](t, m, fullname), "callback", 8081, "http")

	ing := one[*networkingv1.Ingress](t, m, fullname+"-callback")
	if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
		t.Errorf("ingressClassName = %v; want nginx", deref(ing.Spec.IngressClassName))
	}
	if len(ing.Spec.TLS) != 1 || !slices.Equal(ing.Spec.TLS[0].Hosts, []string{"broker.example.com"}) || ing.Spec.TLS[0].SecretName != "broker-example-com-tls" {
		t.Errorf("Ingress tls = %+v; want broker.example.com with Secret broker-example-com-tls", ing.Spec.TLS)
	}
	if len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].Host != "broker.example.com" || ing.Spec.Rules[0].HTTP == nil || len(ing.Spec.Rules[0].HTTP.Paths) != 1 {
		t.Fatalf("Ingress rules = %+v; want one rule for broker.example.com with one path", ing.Spec.Rules)
	}
	p := ing.Spec.Rules[0].HTTP.Paths[0]
	if p.Path != "/oauth2/callback" || p.PathType == nil || *p.PathType != networkingv1.PathTypeExact ||
		p.Backend.Service == nil || p.Backend.Service.Name != fullname || p.Backend.Service.Port.Name != "callback" {
		t.Errorf("Ingress path = %+v; want Exact /oauth2/callback to %s:callback", p, fullname)
	}
	if ing.Annotations["cert-manager.io/cluster-issuer"] != "letsencrypt" {
		t.Errorf("Ingress annotations = %v", ing.Annotations)
	}

	np := one[*networkingv1.NetworkPolicy](t, m, fullname)
	r, ok := callbackRule(np, 8081)
	if !ok || len(r.From) != 1 || r.From[0].NamespaceSelector == nil || r.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "ingress-nginx" {
		t.Errorf("NetworkPolicy callback rule = %+v; want from the ingress-nginx namespace", r)
	}
	if r, _ := callbackRule(np, 9091); slices.ContainsFunc(r.From, func(p networkingv1.NetworkPolicyPeer) bool {
		return p.NamespaceSelector != nil && p.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "ingress-nginx"
	}) {
		t.Errorf("the ingress controller may reach the admin port")
	}
}

// TestCallbackHTTPRoute: the Gateway API route sends exactly GET
// /oauth2/callback on the host to the callback port.
func TestCallbackHTTPRoute(t *testing.T) {
	m := render(t, []string{httpRouteValues})
	if got := path(m.config(t), "listen", "callback"); got != ":8081" {
		t.Errorf("listen.callback = %v; want :8081 (an authorization_code connection)", got)
	}
	if n := len(all[*networkingv1.Ingress](m)); n != 0 {
		t.Errorf("%d Ingresses; want none", n)
	}
	var route *unstructured.Unstructured
	for _, o := range m.objects {
		if o.kind == "HTTPRoute" && o.name == fullname+"-callback" {
			route = o.obj.(*unstructured.Unstructured)
		}
	}
	if route == nil {
		t.Fatalf("no HTTPRoute %s-callback among %v", fullname, m.kinds())
	}
	spec := route.Object["spec"]
	for _, c := range []struct {
		keys []string
		want string
	}{
		{[]string{"hostnames"}, "[broker.example.com]"},
		{[]string{"parentRefs"}, "[map[name:public-gateway namespace:gateway-system sectionName:https]]"},
		{[]string{"rules"}, "[map[backendRefs:[map[name:" + fullname + " port:8081]] matches:[map[method:GET path:map[type:Exact value:/oauth2/callback]]]]]"},
	} {
		if got := fmt.Sprint(path(spec, c.keys...)); got != c.want {
			t.Errorf("HTTPRoute spec.%v = %s; want %s", c.keys, got, c.want)
		}
	}
	r, ok := callbackRule(one[*networkingv1.NetworkPolicy](t, m, fullname), 8081)
	if !ok || len(r.From) != 1 || r.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "gateway-system" {
		t.Errorf("NetworkPolicy callback rule = %+v; want from gateway-system", r)
	}
}

// TestCheckConfigInitContainer: every rollout first runs broker
// -check-config with the same image and the same mounts as the broker, so a
// bad config or unreadable secret never reaches a serving pod (issue 15,
// finding 5); checkConfig.enabled=false drops it.
func TestCheckConfigInitContainer(t *testing.T) {
	for _, f := range ciValuesFiles(t) {
		t.Run(f, func(t *testing.T) {
			m := render(t, []string{f})
			d, c := m.deployment(t)
			pod := &d.Spec.Template.Spec
			if len(pod.InitContainers) != 1 || pod.InitContainers[0].Name != "check-config" {
				t.Fatalf("init containers = %d; want check-config", len(pod.InitContainers))
			}
			ic := &pod.InitContainers[0]
			if want := []string{"-config", configMountPath + "/config.yaml", "-check-config"}; !slices.Equal(ic.Args, want) {
				t.Errorf("check-config args = %q; want %q", ic.Args, want)
			}
			if ic.Image != c.Image {
				t.Errorf("check-config image = %s; want the broker's %s", ic.Image, c.Image)
			}
			if fmt.Sprint(ic.VolumeMounts) != fmt.Sprint(c.VolumeMounts) {
				t.Errorf("check-config mounts = %+v; want the broker's %+v", ic.VolumeMounts, c.VolumeMounts)
			}
			checkHardened(t, "init container", pod, ic, nonRootUID)
		})
	}
	d, _ := render(t, []string{defaultValues}, "checkConfig.enabled=false").deployment(t)
	if n := len(d.Spec.Template.Spec.InitContainers); n != 0 {
		t.Errorf("checkConfig.enabled=false: %d init containers; want 0", n)
	}
}

// TestHelmTest: `helm test` runs the broker image's -health-check against
// the Service's gRPC port; with mutual TLS it verifies against the CA and
// presents tests.clientCertSecret.
func TestHelmTest(t *testing.T) {
	m := render(t, []string{defaultValues})
	p := one[*corev1.Pod](t, m, fullname+"-test-health")
	if p.Annotations["helm.sh/hook"] != "test" {
		t.Errorf("test pod hook = %q; want test", p.Annotations["helm.sh/hook"])
	}
	_, c := m.deployment(t)
	tc := &p.Spec.Containers[0]
	if want := []string{"-health-check", fullname + "." + namespace + ".svc:9090"}; !slices.Equal(tc.Args, want) || tc.Image != c.Image {
		t.Errorf("test args = %q, image %s; want %q with the broker's image %s", tc.Args, tc.Image, want, c.Image)
	}
	if p.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("test pod restartPolicy = %s; want Never", p.Spec.RestartPolicy)
	}
	checkHardened(t, "test pod", &p.Spec, tc, nonRootUID)

	m = render(t, []string{allFeaturesValues}, "tests.clientCertSecret=test-client")
	tc = &one[*corev1.Pod](t, m, fullname+"-test-health").Spec.Containers[0]
	want := []string{"-health-check", fullname + "." + namespace + ".svc:9090", "-health-check-tls",
		"-health-check-ca", "/etc/tokenbroker/tls/ca.crt",
		"-health-check-cert", "/etc/tokenbroker/test-client/tls.crt", "-health-check-key", "/etc/tokenbroker/test-client/tls.key"}
	if !slices.Equal(tc.Args, want) {
		t.Errorf("mTLS test args = %q; want %q", tc.Args, want)
	}
	if n := len(all[*corev1.Pod](render(t, []string{defaultValues}, "tests.enabled=false"))); n != 0 {
		t.Errorf("tests.enabled=false: %d test pods", n)
	}
}
