package harness

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/childproc"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestTargetAgainstAServer: bulkbench -target runs its clients and
// pollers against a server it did not start (here a flatfhir engine with
// generated sample data, its Group found by GET /Group), and reports every
// level's exports, the requests' latencies, resources by type, and an HTML
// page of plots.
func TestTargetAgainstAServer(t *testing.T) {
	port, err := childproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e, err := flatfhir.Start(ctx, flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1, ClickHousePort: port,
		Writers: 1, Replicas: 1, SamplePatients: 0, PollRate: 0,
	}, flatfhir.Tuning{}, testenv.Logger(t))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine: %v", err)
		}
	}()
	base := e.APIURL()

	o := DefaultTargetOptions()
	o.URL, o.Duration, o.Clients, o.Pollers, o.PollEvery = base, 3*time.Second, 2, 2, 100*time.Millisecond
	o.IngestPatients = 20 // generated patients, with a Group of them
	o.HTML = filepath.Join(t.TempDir(), "target.html")
	r, err := RunTarget(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	if r.Ingested < 20*10 || r.Group == "" {
		t.Errorf("ingested %d resources first and found Group %q, want about 50 per patient and the generated Group", r.Ingested, r.Group)
	}
	if len(r.Errors) != 0 {
		t.Errorf("errors: %v", r.Errors)
	}
	sum := 0
	for _, level := range []string{"system", "patient", "group"} {
		l := r.Levels[level]
		if l == nil || l.Exports == 0 || l.Resources == 0 || l.Done.Count != l.Exports || l.Done.P50 < l.Manifest.P50 {
			t.Errorf("%s exports: %+v", level, l)
			continue
		}
		sum += l.Resources
	}
	byType := 0
	for _, n := range r.ResourcesByType {
		byType += n
	}
	if sum != r.Resources || byType == 0 || byType > r.Resources || r.ResourcesRate <= 0 {
		t.Errorf("resources: %d by level, %d in all, %d by type, %.0f/s", sum, r.Resources, byType, r.ResourcesRate)
	}
	for _, kind := range []string{"kick-off", "status", "download", "release"} {
		if l := r.Requests[kind]; l == nil || l.Count == 0 || l.P50 <= 0 || l.P99 < l.P50 {
			t.Errorf("%s requests: %+v", kind, l)
		}
	}
	if l := r.Requests["kick-off"]; l != nil && l.ByCode[202] == 0 {
		t.Errorf("kick-offs answered %v, want 202s", l.ByCode)
	}
	page, err := os.ReadFile(o.HTML)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(page), "<svg"); n < 5 {
		t.Errorf("the report holds %d plots, want throughput, exports, latency histograms and resources by type", n)
	}
}
