package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/childproc"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestE2EAFullObjectStoreFailsTheExportClearlyAndRecovers: the object
// store that holds the export files fills up mid-export (its byte limit
// here, as a full disk would). The export fails with an OperationOutcome
// naming the cause, and no manifest lists anything; once there is room
// again, the next export completes exactly, without a restart.
func TestE2EAFullObjectStoreFailsTheExportClearlyAndRecovers(t *testing.T) {
	port, err := childproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: port,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1, PollRate: 0,
	}
	pc := planner.DefaultConfig()
	pc.TaskRows, pc.MaxFileResources = 1000, 500
	wc := writer.DefaultConfig()
	wc.MaxDeliver = 2 // fail fast: the full store is not a passing fault here
	base, stop := runEngine(t, cfg, flatfhir.Tuning{Planner: pc, Writer: wc, Ingester: ingester.DefaultConfig()})
	defer stop()

	var body bytes.Buffer
	for i := range 3000 {
		fmt.Fprintf(&body, `{"resourceType":"Patient","id":"f%d","name":[{"text":"%s"}]}`+"\n", i, strings.Repeat("n", 300))
	}
	if resp, answer := do(t, "POST", base+"/$ingest", bytes.NewReader(body.Bytes()), "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusOK {
		t.Fatalf("$ingest: %d %s", resp.StatusCode, answer)
	}
	if resp, answer := do(t, "GET", base+"/Patient/f2999", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("read: %d %s", resp.StatusCode, answer)
	}

	nc, err := nats.Connect("nats://127.0.0.1:" + strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	limit := func(maxBytes int64) {
		t.Helper()
		s, err := js.Stream(t.Context(), "OBJ_"+streams.ObjectFiles)
		if err != nil {
			t.Fatal(err)
		}
		sc := s.CachedInfo().Config
		sc.MaxBytes = maxBytes
		if _, err := js.UpdateStream(t.Context(), sc); err != nil {
			t.Fatal(err)
		}
	}
	limit(200 << 10) // room for a file or two of the export's 1 MB

	status := kickoff(t, base+"/$export?_type=Patient")
	var resp *http.Response
	var answer []byte
	testenv.Eventually(t, 2*time.Minute, "the export to end", func() bool {
		resp, answer = do(t, "GET", status, nil, "Accept", "application/json")
		return resp.StatusCode != http.StatusAccepted
	})
	var oo struct {
		ResourceType string
		Output       []any
		Issue        []struct{ Diagnostics string }
	}
	if err := json.Unmarshal(answer, &oo); err != nil || resp.StatusCode < 400 || oo.ResourceType != "OperationOutcome" ||
		len(oo.Issue) == 0 || !strings.Contains(oo.Issue[0].Diagnostics, "could not be exported") ||
		!strings.Contains(oo.Issue[0].Diagnostics, "maximum bytes") || oo.Output != nil {
		t.Fatalf("the export over a full store: %d %s; want a failure naming the cause, and no manifest", resp.StatusCode, answer)
	}
	t.Logf("the failed export says: %s", oo.Issue[0].Diagnostics)

	limit(-1) // room again
	m, _, _ := await(t, kickoff(t, base+"/$export?_type=Patient"))
	n := 0
	for _, o := range m.Output {
		n += *o.Count
	}
	if n != 3000 {
		t.Errorf("the export after room came back holds %d Patients, want 3000", n)
	}
}
