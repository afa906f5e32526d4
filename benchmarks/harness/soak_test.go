package harness

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/synth"
)

// TestSoakShort runs the soak for 20 seconds on a small store: real
// ClickHouse, NATS and four engine processes under every kind of load at
// once, then the final exact export and the wait for the janitor.
func TestSoakShort(t *testing.T) {
	if _, _, err := chserver.FindBinary(""); err != nil {
		t.Fatalf("the soak needs a ClickHouse server binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	opts := DefaultOptions()
	opts.Patients, opts.Runs = 30, 1
	opts.Soak, opts.SoakSampleEvery = 20*time.Second, time.Second
	opts.SoakHTML = filepath.Join(t.TempDir(), "soak.html")
	opts.Progress = &logWriter{t: t}
	rep, err := Run(ctx, opts)
	if rep != nil && rep.Soak != nil {
		var table bytes.Buffer
		_ = rep.WriteTable(&table)
		t.Logf("\n%s", table.String())
	}
	if err != nil {
		t.Fatalf("soak failed: %v", err)
	}
	s := rep.Soak
	if !rep.Verified || len(s.Failures) > 0 {
		t.Errorf("verified %v, failures %q", rep.Verified, s.Failures)
	}
	if s.Seconds < 20 || s.Ingest.Batches < 1 || s.Ingest.Resources < 1 {
		t.Errorf("load of %.1f s, ingest %+v", s.Seconds, s.Ingest)
	}
	if len(s.Exports) != 3 {
		t.Fatalf("exports %+v, want the three levels", s.Exports)
	}
	for _, e := range s.Exports {
		if e.Completed < 1 || e.Resources < 1 || e.Median <= 0 {
			t.Errorf("%s exports: %+v", e.Level, e)
		}
	}
	if s.Cancelled < 1 || s.Polls.Requests < 1 || s.Chain.Runs < 1 || s.Chain.Changes < 1 {
		t.Errorf("cancelled %d, polls %+v, chain %+v", s.Cancelled, s.Polls, s.Chain)
	}
	if want := s.InitialResources + s.Ingest.Resources; !s.Final.Exact || s.Final.Resources != want {
		t.Errorf("final export %+v, want exactly the %d resources written", s.Final, want)
	}
	if !s.After.backTo(s.Before) || s.Before.Objects != 0 || s.Before.Jobs != 0 {
		t.Errorf("stores before %+v, after %+v", s.Before, s.After)
	}
	checked := 0
	for _, tr := range s.Trends {
		if tr.Checked {
			checked++
		}
	}
	if checked != 4 {
		t.Errorf("%d engine processes' trends checked, want 4: %+v", checked, s.Trends)
	}
	for _, smp := range s.Samples {
		for _, p := range smp.Procs {
			if p.RSSMiB <= 0 || (strings.HasPrefix(p.Process, "flatfhir ") && (p.HeapMiB <= 0 || p.Goroutines <= 0)) {
				t.Fatalf("sample at %.0f s: %+v", smp.At, p)
			}
		}
	}
	page, err := os.ReadFile(opts.SoakHTML)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(page), "<svg"); n != 6 || !strings.Contains(string(page), "PASSED") {
		t.Errorf("the HTML report has %d charts, want 6, and says PASSED", n)
	}
}

// TestExportCheck: an export's lines are checked against what was sent and
// accepted before its kick-off.
func TestExportCheck(t *testing.T) {
	ctx := t.Context()
	idx := newKeyIndex()
	var lines [][]byte
	for k := range uint64(3) {
		var body strings.Builder
		b, err := generateBatch(ctx, synth.Config{Patients: 2, Seed: soakSeedBase + k}, &body)
		if err != nil {
			t.Fatal(err)
		}
		n, err := idx.add(b)
		if err != nil || n != int(k) {
			t.Fatalf("batch %d numbered %d: %v", k, n, err)
		}
		lines = append(lines, []byte(body.String()))
	}
	idx.ack(1) // batches 0 and 1 accepted, 2 in flight
	feed := func(c *exportCheck, batches ...int) error {
		for _, b := range batches {
			for line := range bytes.Lines(lines[b]) {
				if err := c.line(bytes.TrimSuffix(line, []byte("\n"))); err != nil {
					return err
				}
			}
		}
		_, err := c.finish()
		return err
	}
	if err := feed(newExportCheck(idx, false, false), 0, 1); err != nil {
		t.Errorf("the accepted batches: %v", err)
	}
	if err := feed(newExportCheck(idx, false, false), 0, 1, 2); err != nil {
		t.Errorf("the accepted batches and one in flight: %v", err)
	}
	if err := feed(newExportCheck(idx, false, false), 0); err == nil || !strings.Contains(err.Error(), "batch 1") {
		t.Errorf("a batch accepted before the kick-off missing: %v", err)
	}
	if err := feed(newExportCheck(idx, false, false), 0, 1, 1); err == nil || !strings.Contains(err.Error(), "exported twice") {
		t.Errorf("a resource twice: %v", err)
	}
	if err := feed(newExportCheck(idx, false, true), 0, 1); err == nil || !strings.Contains(err.Error(), "not a resource of the Group") {
		t.Errorf("a resource of another Group: %v", err)
	}
	c := newExportCheck(idx, true, false)
	if err := c.line([]byte(`{"resourceType":"Patient","id":"never"}`)); err == nil || !strings.Contains(err.Error(), "never written") {
		t.Errorf("an unknown resource: %v", err)
	}
	if err := c.line([]byte(`{"resourceType":"Organization","id":"x"}`)); err == nil || !strings.Contains(err.Error(), "did not ask for") {
		t.Errorf("a type not asked for: %v", err)
	}
	if err := c.line([]byte(`{"resourceType":"Patient","id":"` + soakChainPrefix + `3-p1"}`)); err != nil {
		t.Errorf("a chained check's resource: %v", err)
	}
	if err := c.line([]byte(`{"resourceType":"Patient"`)); err == nil {
		t.Error("a line that is not JSON passed")
	}
}

// TestTrendsTellGrowthFromNoise: an engine process whose live heap grows
// is not flat; one whose figures wander is; ClickHouse is shown only.
func TestTrendsTellGrowthFromNoise(t *testing.T) {
	var samples []Sample
	for i := range 30 {
		samples = append(samples, Sample{At: float64(i), Procs: []ProcSample{
			{Process: "flatfhir writer", RSSMiB: 60 + float64(i%3), HeapMiB: 10 + float64(i%4), Goroutines: 30 + i%5},
			{Process: "flatfhir api", RSSMiB: 60, HeapMiB: 10 + 3*float64(i), Goroutines: 30},
			{Process: "clickhouse-server", RSSMiB: 200 + 20*float64(i)},
		}})
	}
	got := map[string]Trend{}
	for _, tr := range trends(samples, 29) {
		got[tr.Process] = tr
	}
	if tr := got["flatfhir writer"]; !tr.Checked || !tr.Flat {
		t.Errorf("wandering writer: %+v", tr)
	}
	if tr := got["flatfhir api"]; !tr.Checked || tr.Flat || !strings.Contains(tr.Why, "live heap grew") {
		t.Errorf("growing api: %+v", tr)
	}
	if tr := got["clickhouse-server"]; tr.Checked {
		t.Errorf("ClickHouse checked: %+v", tr)
	}
	// After the load the api idles at a small heap: the trend still sees
	// its growth under load.
	for i := range 30 {
		samples = append(samples, Sample{At: float64(30 + i), Procs: []ProcSample{{Process: "flatfhir api", RSSMiB: 60, HeapMiB: 5, Goroutines: 30}}})
	}
	for _, tr := range trends(samples, 29) {
		if tr.Process == "flatfhir api" && tr.Flat {
			t.Errorf("growth under load hidden by the idle samples after it: %+v", tr)
		}
	}
	if tr := trends(samples, 4); tr[0].Checked || !strings.Contains(tr[0].Why, "too few") {
		t.Errorf("five samples: %+v", tr[0])
	}
}

// TestSoakKeepsEachProcessHeapProfileAtItsPeak: with profiles kept, the
// sampler saves an engine process's heap profile whenever its live heap is
// the largest yet, and only then.
func TestSoakKeepsEachProcessHeapProfileAtItsPeak(t *testing.T) {
	srv := httptest.NewServer(pprof.Handler("heap"))
	defer srv.Close()
	dir := t.TempDir()
	h := &harness{opts: Options{ProfileDir: dir, Progress: io.Discard}, report: &Report{}}
	s := &sampler{h: h, client: srv.Client(), peaks: map[string]float64{}}
	writer := proc{name: "flatfhir writer", debug: strings.TrimPrefix(srv.URL, "http://")}
	path := filepath.Join(dir, "soak-writer.peak.heap.pprof")
	for _, c := range []struct {
		heapMiB float64
		saved   bool
	}{{10, true}, {8, false}, {10, false}, {12, true}} {
		_ = os.Remove(path)
		s.keepPeak(writer, c.heapMiB)
		b, err := os.ReadFile(path)
		if saved := err == nil; saved != c.saved {
			t.Fatalf("live heap %.0f MiB (peak so far %.0f): profile saved %v, want %v", c.heapMiB, s.peaks[writer.name], saved, c.saved)
		}
		if c.saved {
			if _, err := profile.ParseData(b); err != nil {
				t.Fatalf("the saved profile does not parse: %v", err)
			}
		}
	}
	if len(h.report.Warnings) > 0 {
		t.Errorf("warnings: %q", h.report.Warnings)
	}
}
