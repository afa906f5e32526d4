package flatfhir_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/childproc"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestE2EMetricsAndProbes: with FLATFHIR_METRICS_LISTEN, the engine
// answers /livez, answers /readyz 503 until its services run and 200
// after, and /metrics (Prometheus text) counts what a user did: the
// resources $ingest accepted, the export that completed and its
// resources, the status polls by status code, the export files' bytes.
func TestE2EMetricsAndProbes(t *testing.T) {
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1, MetricsListen: "127.0.0.1:0",
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1, PollRate: 0,
	}
	ctx, cancel := context.WithCancel(context.Background())
	e, err := flatfhir.Start(ctx, cfg, flatfhir.Tuning{Planner: planner.DefaultConfig(), Writer: writer.DefaultConfig(), Ingester: ingester.DefaultConfig()}, testenv.Logger(t))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	op := "http://" + e.OperatorAddr()
	if resp, body := do(t, "GET", op+"/livez", nil); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"live"`) {
		t.Errorf("/livez: %d %s", resp.StatusCode, body)
	}
	if code, checks := readyz(t, op); code != http.StatusServiceUnavailable || checks["services"] {
		t.Errorf("/readyz before the services run: %d %v, want 503 with services not ok", code, checks)
	}
	// The health check of images without a shell.
	probe := func() (int, string) {
		var out, errOut bytes.Buffer
		code := flatfhir.Command(t.Context(), []string{"probe", op + "/readyz"}, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	if code, out := probe(); code != 1 || !strings.Contains(out, "503") {
		t.Errorf("flatfhir probe before the services run: exit %d, %s; want 1 naming the 503", code, out)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine stopped with: %v", err)
		}
	}()
	testenv.Eventually(t, time.Minute, "/readyz to answer 200", func() bool {
		code, _ := readyz(t, op)
		return code == http.StatusOK
	})
	if code, out := probe(); code != 0 {
		t.Errorf("flatfhir probe once ready: exit %d, %s", code, out)
	}
	if _, checks := readyz(t, op); !checks["nats"] || !checks["jetstream"] || !checks["clickhouse"] || !checks["consumer planner"] || !checks["consumer writers"] {
		t.Errorf("/readyz checks: %v", checks)
	}

	base := "http://" + e.APIAddr()
	var body bytes.Buffer
	for i := range 120 {
		fmt.Fprintf(&body, `{"resourceType":"Patient","id":"m%d"}`+"\n", i)
	}
	if resp, answer := do(t, "POST", base+"/$ingest", &body, "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusOK {
		t.Fatalf("$ingest: %d %s", resp.StatusCode, answer)
	}
	status := kickoff(t, base+"/$export?_type=Patient")
	m, _, _ := await(t, status)
	exported := 0
	for _, o := range m.Output {
		exported += *o.Count
	}

	families := scrape(t, op)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   func(float64) bool
		what   string
	}{
		{"flatfhir_ingest_accepted_total", nil, func(v float64) bool { return v == 120 }, "120 resources accepted"},
		{"flatfhir_export_jobs_ended_total", map[string]string{"flatfhir_export_level": "system", "flatfhir_export_state": "complete"},
			func(v float64) bool { return v == 1 }, "one system export complete"},
		{"flatfhir_export_resources_total", nil, func(v float64) bool { return v == float64(exported) }, fmt.Sprintf("%d resources exported", exported)},
		{"flatfhir_export_duration_seconds", map[string]string{"flatfhir_export_level": "system"}, func(v float64) bool { return v == 1 }, "one export's duration"},
		{"http_server_request_duration_seconds", map[string]string{"http_route": "/jobs/:job", "http_response_status_code": "200"},
			func(v float64) bool { return v >= 1 }, "status polls answered 200"},
		{"http_server_request_duration_seconds", map[string]string{"http_route": "/$export", "http_response_status_code": "202"},
			func(v float64) bool { return v == 1 }, "one kick-off accepted"},
		{"flatfhir_export_files_size_bytes", nil, func(v float64) bool { return v > 0 }, "the export files' bytes"},
		{"db_client_operation_duration_seconds", map[string]string{"db_system_name": "clickhouse", "db_operation_name": "insert"},
			func(v float64) bool { return v >= 1 }, "ClickHouse inserts timed"},
		{"db_client_operation_duration_seconds", map[string]string{"db_operation_name": "read_latest"},
			func(v float64) bool { return v >= 1 }, "the export's reads timed"},
	} {
		v, ok := sample(families, c.name, c.labels)
		if !ok || !c.want(v) {
			t.Errorf("%s%v = %v (found %v), want %s", c.name, c.labels, v, ok, c.what)
		}
	}
	checkDashboard(t, families)
}

// checkDashboard checks that every metric the Grafana dashboard queries is
// one the engine serves.
func checkDashboard(t *testing.T, families map[string]*dto.MetricFamily) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deployments", "grafana", "flatfhir.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string
		Panels []struct {
			Title   string
			Type    string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil || d.UID == "" {
		t.Fatalf("the dashboard: uid %q, %v", d.UID, err)
	}
	names := regexp.MustCompile(`\b(?:flatfhir|http_server|process|go)_[a-z_]+\b`)
	// Label names, in by (...) and in {...} selectors, are not metrics.
	labels := regexp.MustCompile(`by \([^)]*\)|\{[^}]*\}`)
	queried := 0
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q queries nothing", p.Title)
		}
		for _, q := range p.Targets {
			for _, name := range names.FindAllString(labels.ReplaceAllString(q.Expr, ""), -1) {
				queried++
				base := name
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					base = strings.TrimSuffix(base, suffix)
				}
				if families[name] == nil && families[base] == nil {
					t.Errorf("dashboard panel %q queries %s, which the engine does not serve", p.Title, name)
				}
			}
		}
	}
	if queried == 0 {
		t.Error("the dashboard queries no metric")
	}
}

// readyz asks /readyz and returns its status and each check's outcome.
func readyz(t *testing.T, op string) (int, map[string]bool) {
	t.Helper()
	resp, body := do(t, "GET", op+"/readyz", nil)
	var r struct {
		Status string
		Checks []struct {
			Name string
			OK   bool
		}
	}
	if err := json.Unmarshal(body, &r); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/readyz: %d %s (%v)", resp.StatusCode, body, err)
	}
	checks := map[string]bool{}
	for _, c := range r.Checks {
		checks[c.Name] = c.OK
	}
	return resp.StatusCode, checks
}

// scrape reads /metrics as Prometheus does.
func scrape(t *testing.T, op string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, body := do(t, "GET", op+"/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return families
}

// sample sums the samples of a family whose labels include labels: a
// counter's or gauge's value, a histogram's count.
func sample(families map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
	sum, found := 0.0, false
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum, found
}

// TestE2ETokenMetrics: token requests are counted as issued, or refused
// by their OAuth error code.
func TestE2ETokenMetrics(t *testing.T) {
	port, err := childproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ch := testenv.ClickHouse(t)
	op := "127.0.0.1:" + strconv.Itoa(port)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1, MetricsListen: op,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1,
		Auth: true, AdminToken: e2eAdminToken,
	}
	base, stop := runEngine(t, cfg, flatfhir.Tuning{Planner: planner.DefaultConfig(), Writer: writer.DefaultConfig(), Ingester: ingester.DefaultConfig()})
	defer stop()
	key, _ := registerClient(t, base, t.TempDir(), "m", "system/*.rs")
	cli(t, "token", "--client", "m", "--key", key, "--url", base, "--raw")
	form := "grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=not.a.jwt"
	if resp, body := do(t, "POST", base+"/auth/token", strings.NewReader(form), "Content-Type", "application/x-www-form-urlencoded"); resp.StatusCode < 400 {
		t.Fatalf("a forged assertion: %d %s", resp.StatusCode, body)
	}
	families := scrape(t, "http://"+op)
	if v, ok := sample(families, "flatfhir_auth_tokens_total", map[string]string{"flatfhir_token_outcome": "issued"}); !ok || v != 1 {
		t.Errorf("tokens issued: %v (%v), want 1", v, ok)
	}
	refused := families["flatfhir_auth_tokens_total"]
	found := false
	for _, m := range refused.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["flatfhir_token_outcome"] == "refused" && labels["flatfhir_token_reason"] != "" && m.GetCounter().GetValue() == 1 {
			found = true
			t.Logf("the forged assertion was counted as refused for %s", labels["flatfhir_token_reason"])
		}
	}
	if !found {
		t.Errorf("no refused token request with its reason: %v", refused)
	}
}
