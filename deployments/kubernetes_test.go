package deployments_test

import (
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/flatfhir/flatfhir/services/flatfhir"
)

// rendered is what kustomize builds from a directory, decoded into the
// Kubernetes API's types.
type rendered struct {
	deployments map[string]*appsv1.Deployment
	services    []*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	pdbs        []*policyv1.PodDisruptionBudget
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	list        []string // kind/namespace/name of every object
}

// render builds dir with kustomize's own engine (what kubectl apply -k
// runs) and decodes every object strictly against the Kubernetes API's
// types: an unknown or misspelt field, a wrong type or a kind nobody
// expects fails.
func render(t *testing.T, dir string) rendered {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, policyv1.AddToScheme, autoscalingv2.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	out := rendered{deployments: map[string]*appsv1.Deployment{}, configMaps: map[string]*corev1.ConfigMap{}}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, gvk, err := decoder.Decode(y, nil, nil)
		if err != nil {
			t.Errorf("%s: %s/%s does not decode strictly: %v", dir, r.GetKind(), r.GetName(), err)
			continue
		}
		meta, ok := obj.(metav1.Object)
		if !ok {
			t.Fatalf("%s is no object", gvk)
		}
		checkMeta(t, gvk.Kind, meta)
		out.list = append(out.list, fmt.Sprintf("%s %s/%s", gvk.GroupVersion().WithKind(gvk.Kind).GroupKind(), meta.GetNamespace(), meta.GetName()))
		switch o := obj.(type) {
		case *appsv1.Deployment:
			out.deployments[o.Name] = o
		case *corev1.Service:
			out.services = append(out.services, o)
		case *corev1.ConfigMap:
			out.configMaps[o.Name] = o
		case *policyv1.PodDisruptionBudget:
			out.pdbs = append(out.pdbs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			out.hpas = append(out.hpas, o)
		default:
			t.Errorf("%s: unexpected %s %s", dir, gvk.Kind, meta.GetName())
		}
	}
	return out
}

// checkMeta checks names and labels as the API server does.
func checkMeta(t *testing.T, kind string, m metav1.Object) {
	t.Helper()
	for _, msg := range validation.IsDNS1123Subdomain(m.GetName()) {
		t.Errorf("%s %q: name: %s", kind, m.GetName(), msg)
	}
	if ns := m.GetNamespace(); ns != "" {
		for _, msg := range validation.IsDNS1123Label(ns) {
			t.Errorf("%s %q: namespace: %s", kind, m.GetName(), msg)
		}
	}
	checkLabels(t, kind+" "+m.GetName(), m.GetLabels())
}

func checkLabels(t *testing.T, what string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
			t.Errorf("%s: label %s=%s: %s", what, k, v, msg)
		}
	}
}

func TestKubernetesManifests(t *testing.T) {
	for _, tc := range []struct {
		dir       string
		namespace string
		replicas  map[string]int32 // by role
		hpa       bool
		natsR     int
		shards    int
	}{
		{"base", "", map[string]int32{"api": 2, "ingester": 2, "planner": 1, "writer": 2}, true, 3, 1},
		{"overlays/production", "flatfhir", map[string]int32{"api": 3, "ingester": 4, "planner": 1, "writer": 2}, true, 3, 2},
		{"overlays/dev", "flatfhir-dev", map[string]int32{"api": 1, "ingester": 1, "planner": 1, "writer": 1}, false, 1, 1},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			r := render(t, filepath.Join("kubernetes", tc.dir))
			slices.Sort(r.list)
			t.Logf("%s renders %d objects:\n  %s", tc.dir, len(r.list), strings.Join(r.list, "\n  "))
			roles := map[string]int32{}
			for name, d := range r.deployments {
				if d.Namespace != tc.namespace {
					t.Errorf("%s in namespace %q, want %q", name, d.Namespace, tc.namespace)
				}
				cfg := checkDeployment(t, r, d)
				roles[cfg.Role] = *d.Spec.Replicas
				if cfg.Replicas != tc.natsR || len(cfg.ClickHouseShards) != tc.shards {
					t.Errorf("%s: JetStream at R%d on %d ClickHouse shards, want R%d on %d", name, cfg.Replicas, len(cfg.ClickHouseShards), tc.natsR, tc.shards)
				}
			}
			if !maps.Equal(roles, tc.replicas) {
				t.Errorf("replicas by role: %v, want %v", roles, tc.replicas)
			}
			checkAPIService(t, r)
			checkBudgets(t, r)
			if got := len(r.hpas) > 0; got != tc.hpa {
				t.Errorf("writer autoscaler: %v, want %v", got, tc.hpa)
			}
			for _, h := range r.hpas {
				d := r.deployments[h.Spec.ScaleTargetRef.Name]
				if h.Spec.ScaleTargetRef.Kind != "Deployment" || d == nil || d.Labels["app.kubernetes.io/component"] != "writer" {
					t.Errorf("autoscaler %s scales %+v, want the writers' Deployment", h.Name, h.Spec.ScaleTargetRef)
				}
				if len(h.Spec.Metrics) == 0 || h.Spec.Metrics[0].External == nil || h.Spec.Metrics[0].External.Metric.Name != "flatfhir_export_tasks_pending" {
					t.Errorf("autoscaler %s scales on %+v, want the tasks pending", h.Name, h.Spec.Metrics)
				}
			}
		})
	}
}

// checkDeployment checks one role's Deployment and returns the engine
// configuration its container gets.
func checkDeployment(t *testing.T, r rendered, d *appsv1.Deployment) flatfhir.Config {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("%s: selector %v does not select its pods (%v)", d.Name, d.Spec.Selector, err)
	}
	checkLabels(t, d.Name+" pods", d.Spec.Template.Labels)
	pod := d.Spec.Template.Spec
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Errorf("%s: pods may run as root", d.Name)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers", d.Name, len(pod.Containers))
	}
	c := pod.Containers[0]
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm := r.configMaps[from.ConfigMapRef.Name]
			if cm == nil {
				t.Errorf("%s: ConfigMap %s is not among the manifests", d.Name, from.ConfigMapRef.Name)
				continue
			}
			maps.Copy(env, cm.Data)
		case from.SecretRef != nil:
			if from.SecretRef.Optional == nil || !*from.SecretRef.Optional {
				t.Errorf("%s: the Secret %s is required but not among the manifests", d.Name, from.SecretRef.Name)
			}
		}
	}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	cfg, ok := engineConfig(t, d.Name, env)
	if !ok {
		return cfg
	}
	if role := d.Spec.Template.Labels["app.kubernetes.io/component"]; cfg.Role != role {
		t.Errorf("%s: role %q in pods labelled %q", d.Name, cfg.Role, role)
	}
	if cfg.NATSURL == "" || len(cfg.ClickHouseShards) == 0 && cfg.ClickHouseAddr == "" {
		t.Errorf("%s: no external NATS or ClickHouse: %q %v", d.Name, cfg.NATSURL, cfg.ClickHouseShards)
	}
	// The probes ask the operator port the engine serves.
	_, port, err := net.SplitHostPort(cfg.MetricsListen)
	if err != nil {
		t.Errorf("%s: FLATFHIR_METRICS_LISTEN %q: %v", d.Name, cfg.MetricsListen, err)
	}
	ports := map[string]string{}
	for _, p := range c.Ports {
		ports[p.Name] = fmt.Sprint(p.ContainerPort)
	}
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/livez"}, {"startup", c.StartupProbe, "/livez"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || ports[p.probe.HTTPGet.Port.String()] != port {
			t.Errorf("%s: %s probe %+v, want GET %s on the metrics port %s", d.Name, p.what, p.probe, p.path, port)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v, want CPU and memory requests and a memory limit", d.Name, c.Resources)
	}
	if cfg.Role == flatfhir.RoleAPI && ports["http"] != portOf(t, cfg.Listen) {
		t.Errorf("%s: the http port %s is not where the API listens (%s)", d.Name, ports["http"], cfg.Listen)
	}
	return cfg
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("address %q: %v", addr, err)
	}
	return port
}

// checkAPIService checks that one Service selects the API's pods, and
// only them, on its http port.
func checkAPIService(t *testing.T, r rendered) {
	t.Helper()
	if len(r.services) != 1 {
		t.Fatalf("%d Services, want the API's", len(r.services))
	}
	s := r.services[0]
	var selected []string
	for name, d := range r.deployments {
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
			selected = append(selected, name)
		}
	}
	if len(selected) != 1 || r.deployments[selected[0]].Spec.Template.Labels["app.kubernetes.io/component"] != "api" {
		t.Errorf("Service %s selects %v, want the API alone", s.Name, selected)
	}
	for _, p := range s.Spec.Ports {
		if p.TargetPort.String() != "http" && p.TargetPort.String() != "metrics" {
			t.Errorf("Service %s port %s targets %s, not a named port of the API", s.Name, p.Name, p.TargetPort.String())
		}
	}
}

// checkBudgets checks that each role has one PodDisruptionBudget, that it
// selects that role's pods alone, and that it lets a drain proceed.
func checkBudgets(t *testing.T, r rendered) {
	t.Helper()
	covered := map[string]int{}
	for _, b := range r.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
		if err != nil {
			t.Errorf("budget %s: %v", b.Name, err)
			continue
		}
		var selected []string
		for name, d := range r.deployments {
			if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				selected = append(selected, name)
				covered[name]++
			}
		}
		if len(selected) != 1 {
			t.Errorf("budget %s selects %v, want one role", b.Name, selected)
			continue
		}
		d := r.deployments[selected[0]]
		if m := b.Spec.MinAvailable; m != nil && m.IntValue() >= int(*d.Spec.Replicas) {
			t.Errorf("budget %s keeps %d of %d pods available: no drain could proceed", b.Name, m.IntValue(), *d.Spec.Replicas)
		}
	}
	for name := range r.deployments {
		if covered[name] != 1 {
			t.Errorf("%s is covered by %d disruption budgets, want 1", name, covered[name])
		}
	}
}
