package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/bulkclient"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// exportRun runs flatfhir export and returns its exit code and output.
func exportRun(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := flatfhir.Command(t.Context(), append([]string{"export", "--plain"}, args...), &out, &errOut)
	return code, out.String() + errOut.String()
}

// exportedFiles counts the lines of the files flatfhir export wrote in
// dir, by array (output, deleted, error) and resource type (from the
// lines), over every export's directory.
func exportedFiles(t *testing.T, dir string) map[string]map[string]int {
	t.Helper()
	got := map[string]map[string]int{}
	subs, _ := filepath.Glob(filepath.Join(dir, "*", "*", "*.ndjson"))
	for _, f := range subs {
		kind := filepath.Base(filepath.Dir(f))
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(data)) {
			var r struct{ ResourceType string }
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if got[kind] == nil {
				got[kind] = map[string]int{}
			}
			got[kind][r.ResourceType]++
		}
	}
	return got
}

// TestE2EExportCommand: flatfhir export against the engine with
// authorization off: a system export into DIR with every file checked; a
// --since-last run that gets only what changed since (a Bundle of the
// deletion in deleted/); and a run interrupted mid-download that the same
// command, run again, completes from where it stopped.
func TestE2EExportCommand(t *testing.T) {
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1, PollRate: 0,
	}
	pc := planner.DefaultConfig()
	pc.TaskRows, pc.MaxFileResources = 100, 50 // several files
	base, stop := runEngine(t, cfg, flatfhir.Tuning{Planner: pc, Writer: writer.DefaultConfig(), Ingester: ingester.DefaultConfig()})
	defer stop()
	var body bytes.Buffer
	for i := range 200 {
		fmt.Fprintf(&body, `{"resourceType":"Patient","id":"x%d"}`+"\n", i)
		fmt.Fprintf(&body, `{"resourceType":"Observation","id":"xo%d","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/x%d"}}`+"\n", i, i)
	}
	if resp, answer := do(t, "POST", base+"/$ingest", &body, "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusOK {
		t.Fatalf("$ingest: %d %s", resp.StatusCode, answer)
	}
	if resp, answer := do(t, "GET", base+"/Observation/xo199", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("read: %d %s", resp.StatusCode, answer)
	}

	dir := t.TempDir()
	code, out := exportRun(t, "--url", base, "--out", dir, "--since-last")
	if code != 0 || !strings.Contains(out, "every file's lines match") {
		t.Fatalf("flatfhir export: exit %d\n%s", code, out)
	}
	t.Logf("flatfhir export --url BASE --out DIR --since-last:\n%s", out)
	if got := exportedFiles(t, dir); got["output"]["Patient"] != 200 || got["output"]["Observation"] != 200 || len(got["deleted"]) != 0 {
		t.Errorf("the first export's files: %v, want 200 Patients and 200 Observations", got)
	}

	// Nightly: what changed since.
	if resp, answer := do(t, "PUT", base+"/Patient/x7", strings.NewReader(`{"resourceType":"Patient","id":"x7","gender":"female"}`), "Content-Type", "application/fhir+json"); resp.StatusCode >= 300 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, answer)
	}
	if resp, answer := do(t, "DELETE", base+"/Observation/xo8", nil); resp.StatusCode >= 300 {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, answer)
	}
	before := exportedFiles(t, dir)
	code, out = exportRun(t, "--url", base, "--out", dir, "--since-last")
	if code != 0 {
		t.Fatalf("flatfhir export --since-last: exit %d\n%s", code, out)
	}
	after := exportedFiles(t, dir)
	if n := after["output"]["Patient"] - before["output"]["Patient"]; n != 1 || after["output"]["Observation"] != before["output"]["Observation"] || after["deleted"]["Bundle"] != 1 {
		t.Errorf("the --since-last export added %d Patients, %v; want 1 Patient and a deletion Bundle", n, after)
	}

	// Interrupted: the export completed on the server and one file was
	// half downloaded when the command stopped.
	c := &bulkclient.Client{}
	kick := base + "/$export?_type=Patient"
	status, err := c.Kickoff(t.Context(), kick)
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := c.Await(t.Context(), status)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	state := map[string]any{"current": map[string]any{"query": kick, "kickoff": kick, "status": status, "dir": "interrupted", "manifest": m}}
	raw, _ := json.Marshal(state)
	if err := os.WriteFile(filepath.Join(dir2, "flatfhir-export.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var first bytes.Buffer
	if _, err := c.Download(t.Context(), m.Output[0], &first); err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(m.Output[0].URL)
	half := first.Bytes()[:first.Len()/2]
	if err := os.MkdirAll(filepath.Join(dir2, "interrupted", "output"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir2, "interrupted", "output", name+".part"), half, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out = exportRun(t, "--url", base, "--out", dir2, "--type", "Patient")
	if code != 0 || !strings.Contains(out, "continuing the export") || !strings.Contains(out, "resumed") {
		t.Fatalf("the run after the interruption: exit %d\n%s", code, out)
	}
	if got := exportedFiles(t, dir2); got["output"]["Patient"] != 200 {
		t.Errorf("after resuming: %v, want the 200 Patients", got)
	}
	resumed, err := os.ReadFile(filepath.Join(dir2, "interrupted", "output", name))
	if err != nil || !bytes.Equal(resumed, first.Bytes()) {
		t.Errorf("the resumed file differs from the server's (%v)", err)
	}

	// A query the server refuses fails with the server's diagnostics.
	if code, out := exportRun(t, "--url", base, "--out", t.TempDir(), "--type", "NoSuchType"); code == 0 || !strings.Contains(out, "NoSuchType") {
		t.Errorf("an export of an unknown type: exit %d\n%s", code, out)
	}
}

// TestE2EExportCommandAuthorized: with authorization on, flatfhir export
// signs in as a registered SMART backend client and exports what its scopes
// allow; without credentials it fails with the server's 401.
func TestE2EExportCommandAuthorized(t *testing.T) {
	base, _ := startAuthorizedEngine(t)
	var ndjson bytes.Buffer
	for i := range 20 {
		fmt.Fprintf(&ndjson, `{"resourceType":"Patient","id":"a%d"}`+"\n", i)
	}
	if resp, body := do(t, "POST", base+"/$ingest", &ndjson, "Content-Type", "application/fhir+ndjson", "Authorization", "Bearer "+e2eAdminToken); resp.StatusCode != http.StatusOK {
		t.Fatalf("ingest: %d %s", resp.StatusCode, body)
	}
	key, _ := registerClient(t, base, t.TempDir(), "payer", "system/*.rs")
	if code, out := exportRun(t, "--url", base, "--out", t.TempDir()); code == 0 || !strings.Contains(out, "401") {
		t.Errorf("without credentials: exit %d\n%s", code, out)
	}
	dir := t.TempDir()
	code, out := exportRun(t, "--url", base, "--out", dir, "--client", "payer", "--key", key, "--type", "Patient", "--post")
	if code != 0 {
		t.Fatalf("flatfhir export with a client: exit %d\n%s", code, out)
	}
	t.Logf("flatfhir export --url BASE --out DIR --client payer --key payer.key.pem --type Patient --post:\n%s", out)
	if got := exportedFiles(t, dir); got["output"]["Patient"] != 20 {
		t.Errorf("the authorized export's files: %v, want 20 Patients", got)
	}
}
