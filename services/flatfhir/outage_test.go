package flatfhir_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/childproc"
	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// patients is an $ingest body of Patients p<from> up to p<to-1>.
func patients(from, to int) []byte {
	var b bytes.Buffer
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, `{"resourceType":"Patient","id":"p%d","active":true}`+"\n", i)
	}
	return b.Bytes()
}

// TestE2EIngestRidesOutAClickHouseOutage: ClickHouse stops while the
// engine runs. $ingest keeps accepting into the stream (the stream is the
// buffer), a read that needs ClickHouse fails with a 5xx OperationOutcome
// that says to retry, and once ClickHouse is back, on its data, every
// change accepted during the outage is stored: an export holds each
// resource exactly once.
// ownClickHouse starts a ClickHouse server of the test's own (the shared
// one must not stop under other tests) and returns it with the function
// that starts it again on the same data and port.
func ownClickHouse(t *testing.T) (*chserver.Server, func() *chserver.Server) {
	t.Helper()
	dir := t.TempDir()
	port, err := childproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	start := func() *chserver.Server {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		srv, err := chserver.Start(ctx, chserver.Config{Dir: dir, TCPPort: port}, testenv.Logger(t))
		if err != nil {
			t.Fatalf("start clickhouse: %v", err)
		}
		t.Cleanup(func() { _ = srv.Stop() })
		return srv
	}
	return start(), start
}

// engineOn runs the engine with default tuning on ClickHouse ch and
// returns its base URL and the function that ingests an NDJSON body.
func engineOn(t *testing.T, ch *chserver.Server) (string, func(body []byte)) {
	t.Helper()
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr(), ClickHouseDatabase: "outage", Writers: 1, Replicas: 1, PollRate: 2,
	}
	tune := flatfhir.Tuning{Planner: planner.DefaultConfig(), Writer: writer.DefaultConfig(), Ingester: ingester.DefaultConfig()}
	base, stop := runEngine(t, cfg, tune)
	t.Cleanup(stop)
	return base, func(body []byte) {
		t.Helper()
		resp, answer := do(t, "POST", base+"/$ingest", bytes.NewReader(body), "Content-Type", "application/fhir+ndjson")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("$ingest: %d %s", resp.StatusCode, answer)
		}
	}
}

// exportedIDs runs a Patient export to its manifest and counts each id in
// its files.
func exportedIDs(t *testing.T, status string) map[string]int {
	t.Helper()
	m, _, _ := await(t, status)
	seen := map[string]int{}
	for _, f := range m.Output {
		_, data := do(t, "GET", f.URL, nil)
		for _, line := range splitLines(t, bytes.NewReader(data)) {
			var r struct{ ID string }
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatal(err)
			}
			seen[r.ID]++
		}
	}
	return seen
}

// exactly checks that seen holds p0 up to p<n-1>, each once.
func exactly(t *testing.T, seen map[string]int, n int) {
	t.Helper()
	if len(seen) != n {
		t.Errorf("the export holds %d Patients, want %d", len(seen), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("%s is in the export %d times", id, k)
		}
	}
}

func TestE2EIngestRidesOutAClickHouseOutage(t *testing.T) {
	ch, start := ownClickHouse(t)
	base, ingest := engineOn(t, ch)
	ingest(patients(0, 300))
	if resp, body := do(t, "GET", base+"/Patient/p299", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("read before the outage: %d %s", resp.StatusCode, body)
	}

	_ = ch.Stop()
	ingest(patients(300, 600)) // accepted into the stream while ClickHouse is down
	ingest(patients(100, 200)) // updates too
	resp, body := do(t, "GET", base+"/Patient/p0", nil)
	var oo struct {
		ResourceType string
		Issue        []struct{ Code, Diagnostics string }
	}
	if resp.StatusCode < 500 || json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Errorf("a read while ClickHouse is down: %d %s; want a 5xx OperationOutcome", resp.StatusCode, body)
	}
	<-time.After(3 * time.Second) // the ingester meets the outage

	start()
	// Every change accepted during the outage is read back once ClickHouse
	// is back (the read waits for the ingester to catch up).
	testenv.Eventually(t, 2*time.Minute, "the changes of the outage to be stored", func() bool {
		resp, _ := do(t, "GET", base+"/Patient/p599", nil)
		return resp.StatusCode == http.StatusOK
	})
	exactly(t, exportedIDs(t, kickoff(t, base+"/$export?_type=Patient")), 600)
}

// TestE2EAnExportRidesOutAClickHouseOutage: ClickHouse is down when an
// export is kicked off and starts again seconds later, on its data. The
// export's planning and tasks retry, and it completes with every resource
// exactly once.
func TestE2EAnExportRidesOutAClickHouseOutage(t *testing.T) {
	ch, start := ownClickHouse(t)
	base, ingest := engineOn(t, ch)
	ingest(patients(0, 2000))
	if resp, body := do(t, "GET", base+"/Patient/p1999", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("read before the outage: %d %s", resp.StatusCode, body)
	}
	_ = ch.Stop()
	status := kickoff(t, base+"/$export?_type=Patient")
	<-time.After(3 * time.Second)
	if resp, body := do(t, "GET", status, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("the export while ClickHouse is down: %d %s; want it still running", resp.StatusCode, body)
	}
	start()
	exactly(t, exportedIDs(t, status), 2000)
}
