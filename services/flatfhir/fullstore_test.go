package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	f := startFullStoreEngine(t, t.TempDir(), 0)
	limit := func(maxBytes int64) {
		t.Helper()
		sc := f.filesConfig(t)
		sc.MaxBytes = maxBytes
		if _, err := f.js.UpdateStream(t.Context(), sc); err != nil {
			t.Fatal(err)
		}
	}
	limit(200 << 10) // room for a file or two of the export's 1 MB
	f.exportFails(t)
	limit(-1) // room again
	f.exportHoldsAll(t)
}

// TestE2EAFullDiskFailsTheExportClearlyAndRecovers: the disk that holds
// NATS's data (a 256 MiB filesystem of its own here) fills up, another
// program having taken nearly all of it. An export then fails with an
// OperationOutcome naming the cause and lists nothing; once the other
// program's file is gone, the next export completes exactly, without a
// restart. Without the engine's disk guard NATS's write fails for want of
// space, and it refuses every later file of that store until restarted.
func TestE2EAFullDiskFailsTheExportClearlyAndRecovers(t *testing.T) {
	dataDir := t.TempDir()
	natsDir := filepath.Join(dataDir, "nats")
	mountSmallDisk(t, natsDir, "256m")
	f := startFullStoreEngine(t, dataDir, 8<<20)

	filler := filepath.Join(natsDir, "another-program.bin")
	var fs syscall.Statfs_t
	if err := syscall.Statfs(natsDir, &fs); err != nil {
		t.Fatal(err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	// Leave 256 KiB: a quarter of what the export writes.
	if err := writeZeros(filler, free-(256<<10)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the engine to refuse new files", func() bool {
		return f.filesConfig(t).MaxBytes > 0
	})
	f.exportFails(t)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the engine to store files again", func() bool {
		return f.filesConfig(t).MaxBytes <= 0
	})
	f.exportHoldsAll(t)
}

// fullStore is an engine holding 3000 Patients (about 1 MB of export),
// with small tasks and files and writers that give up after 2 attempts.
type fullStore struct {
	base string
	js   jetstream.JetStream
}

func startFullStoreEngine(t *testing.T, dataDir string, diskReserve int64) fullStore {
	t.Helper()
	port, err := childproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: dataDir, Listen: "127.0.0.1:0", NATSPort: port, DiskReserve: diskReserve,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1, PollRate: 0,
		// Files stored plain: the export stores its 1 MB of NDJSON, which
		// its repetitive Patients would shrink a hundredfold compressed.
		FileCompression: "none",
	}
	pc := planner.DefaultConfig()
	pc.TaskRows, pc.MaxFileResources = 1000, 500
	wc := writer.DefaultConfig()
	wc.MaxDeliver = 2 // fail fast: the full store is not a passing fault here
	base, stop := runEngine(t, cfg, flatfhir.Tuning{Planner: pc, Writer: wc, Ingester: ingester.DefaultConfig()})
	t.Cleanup(stop)

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
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return fullStore{base: base, js: js}
}

// filesConfig is the configuration of the export files' stream.
func (f fullStore) filesConfig(t *testing.T) jetstream.StreamConfig {
	t.Helper()
	s, err := f.js.Stream(t.Context(), "OBJ_"+streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config
}

// exportFails runs an export of the Patients, which must fail with an
// OperationOutcome naming the full store, and list nothing.
func (f fullStore) exportFails(t *testing.T) {
	t.Helper()
	status := kickoff(t, f.base+"/$export?_type=Patient")
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
}

// exportHoldsAll runs an export of the Patients, which must hold all 3000.
func (f fullStore) exportHoldsAll(t *testing.T) {
	t.Helper()
	m, _, _ := await(t, kickoff(t, f.base+"/$export?_type=Patient"))
	n := 0
	for _, o := range m.Output {
		n += *o.Count
	}
	if n != 3000 {
		t.Errorf("the export after room came back holds %d Patients, want 3000", n)
	}
}

// mountSmallDisk mounts a filesystem of size (a tmpfs) on dir until the
// test ends. It needs root, as CI has.
func mountSmallDisk(t *testing.T, dir, size string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small filesystem needs root (CI runs as root)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "flatfhir-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a %s filesystem on %s: %v\n%s", size, dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
}

// writeZeros writes a file of n zero bytes.
func writeZeros(name string, n int64) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			f.Close()
			return err
		}
		n -= k
	}
	return f.Close()
}
