package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/chserver"
)

// logWriter sends progress lines to the test log.
type logWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.t.Log(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

func positive(t *testing.T, what string, r Rate) {
	t.Helper()
	if r.Seconds <= 0 || r.Resources <= 0 || r.Bytes <= 0 || r.ResourcesPerSec <= 0 || r.MBPerSec <= 0 {
		t.Errorf("%s has a figure that is not positive: %+v", what, r)
	}
}

// TestRunTiny runs the whole benchmark at a tiny size: real ClickHouse,
// NATS and four engine processes.
func TestRunTiny(t *testing.T) {
	if _, _, err := chserver.FindBinary(""); err != nil {
		t.Fatalf("the benchmark needs a ClickHouse server binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	opts := DefaultOptions()
	opts.Patients, opts.Runs, opts.Writers = 30, 1, 2
	opts.ChunkResources = 500 // several ingest requests even at this size
	opts.Gzip = true
	opts.ChangeFraction = 0.01 // about 15 changes, 3 of them deletes
	opts.ChainRounds, opts.ChainChanges = 2, 20
	opts.ClientRuns = 2
	opts.ProfileDir = t.TempDir()
	opts.KillWriter = true
	opts.Progress = &logWriter{t: t}
	rep, err := Run(ctx, opts)
	if err != nil {
		t.Fatalf("benchmark failed: %v", err)
	}

	if !rep.Verified {
		t.Fatal("report not verified")
	}
	if len(rep.Warnings) > 0 {
		t.Errorf("warnings: %q", rep.Warnings)
	}
	in := rep.Ingest
	if in.Resources <= 0 || in.NDJSONBytes <= 0 || in.WireBytes <= 0 || in.WireBytes >= in.NDJSONBytes {
		t.Errorf("ingest sizes: %d resources, %d NDJSON bytes, %d gzip bytes", in.Resources, in.NDJSONBytes, in.WireBytes)
	}
	if want := int((in.Resources + 499) / 500); in.Requests != want {
		t.Errorf("%d ingest requests for %d resources in chunks of 500, want %d", in.Requests, in.Resources, want)
	}
	var perType int64
	for _, n := range in.PerType {
		perType += n
	}
	if perType != in.Resources {
		t.Errorf("per-type counts add up to %d, want %d", perType, in.Resources)
	}
	positive(t, "ingest accepted", in.Accepted)
	positive(t, "ingest queryable", in.Queryable)
	positive(t, "raw insert", in.RawInsert)
	if in.RatioQueryableToRawInsert <= 0 {
		t.Errorf("queryable / raw insert ratio %v", in.RatioQueryableToRawInsert)
	}
	if in.Queryable.Seconds < in.Accepted.Seconds {
		t.Errorf("queryable after %.3fs, before accepted at %.3fs", in.Queryable.Seconds, in.Accepted.Seconds)
	}

	if len(rep.Runs) != 1 {
		t.Fatalf("%d runs, want 1", len(rep.Runs))
	}
	run := rep.Runs[0]
	if !run.Verified || run.Files <= 0 || run.Polls <= 0 || run.TransactionTime == "" {
		t.Errorf("run: %+v", run)
	}
	for name, r := range map[string]Rate{
		"run to manifest": run.ToManifest, "run to downloaded": run.ToDownloaded, "run raw": run.Raw, "run raw client": run.RawClient,
		"median raw client":  rep.Median.RawClient,
		"median to manifest": rep.Median.ToManifest, "median to downloaded": rep.Median.ToDownloaded, "median raw": rep.Median.Raw,
	} {
		positive(t, name, r)
	}
	if run.ToDownloaded.Seconds < run.ToManifest.Seconds {
		t.Errorf("downloaded after %.3fs, before the manifest at %.3fs", run.ToDownloaded.Seconds, run.ToManifest.Seconds)
	}
	if run.RatioManifest <= 0 || run.RatioDownloaded <= 0 || rep.Median.RatioManifest <= 0 || rep.Median.RatioDownloaded <= 0 ||
		run.RatioManifestClient <= 0 || rep.Median.RatioDownloadedClient <= 0 {
		t.Errorf("ratios not positive: run %+v, median %+v", run, rep.Median)
	}

	if c := rep.Client; c == nil || c.Runs != 2 || len(c.RunsToManifest) != 2 || c.ToManifest <= 0 || c.ToDownloaded < c.ToManifest || c.Polls < 1 || c.Throttled != 0 {
		t.Errorf("client latency: %+v, want 2 unthrottled runs with a manifest before the downloads", c)
	}

	inc := rep.Incremental
	if inc == nil {
		t.Fatal("no incremental measurement")
	}
	if !inc.Verified || inc.Updated < 1 || inc.Deleted < 1 || len(inc.Runs) != 1 || inc.Since != run.TransactionTime {
		t.Errorf("incremental: %+v", inc)
	}
	if want := float64(in.Resources) * opts.ChangeFraction; float64(inc.Updated+inc.Deleted) < want-1 || float64(inc.Updated+inc.Deleted) > want+1 {
		t.Errorf("%d changes, want about %.1f (%g of %d)", inc.Updated+inc.Deleted, want, opts.ChangeFraction, in.Resources)
	}
	if r := inc.Runs[0]; int64(r.Output) != inc.Updated || int64(r.DeletedOut) != inc.Deleted || r.ToDownloaded < r.ToManifest || r.ToManifest <= 0 {
		t.Errorf("incremental run %+v for %d updates and %d deletes", r, inc.Updated, inc.Deleted)
	}
	if inc.RatioToFull <= 0 || inc.FullMedianToDownloaded != rep.Median.ToDownloaded.Seconds {
		t.Errorf("incremental ratio %v against full %v (median %v)", inc.RatioToFull, inc.FullMedianToDownloaded, rep.Median.ToDownloaded.Seconds)
	}

	if k := rep.WriterKill; k == nil || !k.Verified || k.KilledAfter <= 0 || k.ToManifest <= k.KilledAfter || k.ToDownloaded < k.ToManifest {
		t.Errorf("writer kill: %+v, want a verified export that ended after the kill", k)
	}

	if c := rep.Chain; c == nil || c.Rounds != 2 || c.Changes == 0 || c.Compared == 0 || c.Applied == 0 {
		t.Errorf("chained exports: %+v", rep.Chain)
	}

	procs := map[string]bool{}
	for _, m := range rep.Memory {
		if m.PeakMiB <= 0 || m.PID <= 0 {
			t.Errorf("memory of %s: %+v", m.Process, m)
		}
		procs[strings.Fields(m.Process)[len(strings.Fields(m.Process))-1]] = true
		procs[strings.Fields(m.Process)[0]] = true
	}
	for _, p := range []string{"api", "ingester", "planner", "writer", "harness", "clickhouse-server"} {
		if !procs[p] {
			t.Errorf("no peak memory of %s in %+v", p, rep.Memory)
		}
	}

	// Every phase has every process's CPU time; the engine processes and
	// the harness left a CPU profile of each phase that go tool pprof reads.
	var phases []string
	for _, ph := range rep.Phases {
		phases = append(phases, ph.Name)
		cpu := map[string]CPU{}
		for _, c := range ph.CPU {
			if c.Seconds < 0 {
				t.Errorf("%s: %s spent %v CPU-seconds", ph.Name, c.Process, c.Seconds)
			}
			cpu[strings.Fields(c.Process)[len(strings.Fields(c.Process))-1]] = c
		}
		for _, p := range []string{"api", "ingester", "planner", "writer", "clickhouse-server", "client)"} {
			c, ok := cpu[p]
			if !ok {
				t.Errorf("%s: no CPU time of %s in %+v", ph.Name, p, ph.CPU)
				continue
			}
			if p == "clickhouse-server" {
				continue // not a Go process
			}
			if _, err := os.Stat(c.Profile); c.Profile == "" || err != nil || filepath.Dir(c.Profile) != opts.ProfileDir {
				t.Errorf("%s: profile of %s %q: %v", ph.Name, p, c.Profile, err)
			}
		}
	}
	if want := []string{"ingest", "raw insert", "export", "raw read", "raw read, clickhouse-client"}; !slices.Equal(phases, want) {
		t.Errorf("phases %q, want %q", phases, want)
	}

	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"accepted", "queryable", "kick-off -> manifest", "raw read, Go scan", "raw read, clickhouse-client TSVRaw", "INCREMENTAL", "CHAINED EXPORTS", "VERIFIED", "flatfhir writer", "CPU during the ingest", "WRITER KILLED"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	path := filepath.Join(t.TempDir(), "out.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || !back.Verified || back.Ingest.Resources != in.Resources {
		t.Errorf("JSON does not round-trip (%v): %s", err, b)
	}
	t.Logf("\n%s", table.String())
}

func TestMedianOf(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := medianOf(c.in); got != c.want {
			t.Errorf("medianOf(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestGroup(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -12345: "-12,345"} {
		if got := group(n); got != want {
			t.Errorf("group(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestDownloadVerifies checks that a file that does not match its manifest
// entry, or is not NDJSON, fails the download.
func TestDownloadVerifies(t *testing.T) {
	files := map[string]string{
		"/ok":        "{\"a\":1}\n{\"b\":2}\n",
		"/nonewline": "{\"a\":1}\n{\"b\":2}",
		"/blank":     "{\"a\":1}\n\n{\"b\":2}\n",
		"/cut":       "{\"a\":1}\n{\"b\":\n",
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		_, _ = io.WriteString(w, files[r.URL.Path])
	}))
	defer srv.Close()
	h := &harness{downloadClient: srv.Client()}
	two, three := 2, 3
	for _, c := range []struct {
		path  string
		count *int
		ok    bool
	}{
		{"/ok", &two, true}, {"/nonewline", &two, true}, {"/ok", &three, false},
		{"/blank", &two, false}, {"/cut", &two, false},
	} {
		lines, n, err := h.download(context.Background(), manifestItem{Type: "Patient", URL: srv.URL + c.path, Count: c.count})
		if (err == nil) != c.ok {
			t.Errorf("%s with count %d: err = %v, want ok %v", c.path, *c.count, err, c.ok)
		}
		if c.ok && (lines != 2 || n != int64(len(files[c.path]))) {
			t.Errorf("%s: %d lines, %d bytes", c.path, lines, n)
		}
	}
}

// TestTopFunctionsNameTheCodeThatSpentTheCPU: a profile of a loop that
// copies names the runtime's copy as the leaf, and the loop's function as
// the code that spent the time.
func TestTopFunctionsNameTheCodeThatSpentTheCPU(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	before, err := cpuSeconds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	copyFor(500 * time.Millisecond)
	pprof.StopCPUProfile()
	f.Close()
	after, err := cpuSeconds(os.Getpid())
	if err != nil || after-before < 0.2 {
		t.Errorf("half a second of copying counted as %.2f CPU-seconds (%v)", after-before, err)
	}
	leaf, code, err := topFunctions(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf) == 0 || len(code) == 0 {
		t.Fatalf("no functions: %v %v", leaf, code)
	}
	if !stdlib(leaf[0].Function) {
		t.Errorf("top leaf %q, want the runtime's copy or the standard library", leaf[0].Function)
	}
	if !strings.HasSuffix(code[0].Function, "harness.copyFor") || code[0].Percent < 50 {
		t.Errorf("top code %+v, want harness.copyFor with most of the time", code)
	}
	for _, fn := range []string{"runtime.memmove", "encoding/json.checkValid", "internal/runtime/syscall/linux.Syscall6"} {
		if !stdlib(fn) {
			t.Errorf("%s is not counted as the standard library", fn)
		}
	}
	for _, fn := range []string{"github.com/flatfhir/flatfhir/services/ingester.(*follower).read", "github.com/nats-io/nats-server/v2/server.(*fileStore).storeRawMsg"} {
		if stdlib(fn) {
			t.Errorf("%s is counted as the standard library", fn)
		}
	}
}

var sink []byte

// copyFor copies a megabyte over and over for d.
func copyFor(d time.Duration) {
	src := bytes.Repeat([]byte("x"), 1<<20)
	for end := time.Now().Add(d); time.Now().Before(end); {
		sink = append(sink[:0], src...)
	}
}
