package flatfhir_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestE2EExportFinishesAfterTheWholeEngineRestarts kills every service in
// the middle of an export and starts them again on the same data: the
// export must finish with every resource exactly once (DESIGN.md
// invariant 5: job state lives in JetStream, not in process memory).
func TestE2EExportFinishesAfterTheWholeEngineRestarts(t *testing.T) {
	ch := testenv.ClickHouse(t)
	dataDir := t.TempDir()
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: dataDir, Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1,
	}
	pc := planner.DefaultConfig()
	pc.TaskRows, pc.MaxFileResources = 1000, 700
	wc := writer.DefaultConfig()
	wc.Concurrency, wc.CheckEvery = 1, 100*time.Millisecond
	// The task a writer was in when the engine stopped is handed out again
	// once its ack wait runs out: keep that short here.
	sc := streams.DefaultConfig()
	sc.TaskAckWait = 2 * time.Second
	tune := flatfhir.Tuning{Planner: pc, Writer: wc, Streams: sc}

	base, stop := runEngine(t, cfg, tune)
	want := ingestSample(t, base)
	status := kickoff(t, base+"/$export")
	// Stop as soon as the first task is done, with most still to run.
	testenv.Eventually(t, time.Minute, "first task done", func() bool {
		resp, _ := do(t, "GET", status, nil)
		p := resp.Header.Get("X-Progress")
		return resp.StatusCode == 200 || (p != "" && !strings.HasPrefix(p, "0%"))
	})
	stop()

	base2, stop2 := runEngine(t, cfg, tune)
	defer stop2()
	u, err := url.Parse(status)
	if err != nil {
		t.Fatal(err)
	}
	m, _, _ := await(t, base2+u.Path)
	got := map[string]int{}
	for _, o := range m.Output {
		_, body := do(t, "GET", o.URL, nil)
		lines := splitLines(t, strings.NewReader(string(body)))
		if len(lines) != *o.Count {
			t.Errorf("%s: count %d, %d lines", o.URL, *o.Count, len(lines))
		}
		for _, l := range lines {
			got[o.Type+"/"+idOf(t, l)]++
		}
	}
	for key := range want {
		if got[key] != 1 {
			t.Errorf("%s exported %d times after the restart, want once", key, got[key])
		}
	}
	if len(got) != len(want) {
		t.Errorf("exported %d resources, want %d", len(got), len(want))
	}
}
