package writer_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// Exported resources carry absolute attachment URLs: a relative
// Binary/<id> (and its history and own-base forms) points at the export's
// attachment route; other servers' URLs and bodies without attachments are
// written as stored; a patient's Binary becomes a DocumentReference whose
// attachment url is its own.
func TestWriterRewritesAttachmentURLs(t *testing.T) {
	e := newEnv(t)
	const baseURL = "https://fhir.example/r4"
	const abs = baseURL + "/files/att/attachments/Binary/"
	stored := map[string]string{
		"DocumentReference/d1": `{"resourceType":"DocumentReference","id":"d1","status":"current","content":[{"attachment":{"contentType":"text/plain","url":"Binary/b1"}},{"attachment":{"url":"Binary/b1/_history/2"}}]}`,
		"DocumentReference/d2": `{"resourceType":"DocumentReference","id":"d2","status":"current","content":[{"attachment":{"url":"` + baseURL + `/Binary/b1"}}]}`,
		"DocumentReference/d3": `{"resourceType":"DocumentReference","id":"d3","status":"current","content":[{"attachment":{"url":"https://other.example/Binary/b1"}}]}`,
		"DocumentReference/d4": `{"resourceType":"DocumentReference", "id":"d4", "status":"current", "content":[{"attachment":{"data":"aGk="}}]}`,
		"Binary/b1":            `{"resourceType":"Binary","id":"b1","contentType":"text/plain","securityContext":{"reference":"Patient/p1"},"data":"aGVsbG8="}`,
		"Binary/b2":            `{"resourceType":"Binary","id":"b2","contentType":"text/plain","data":"aGk="}`,
	}
	var rows []chstore.Row
	seq := uint64(0)
	for key, body := range stored {
		typ, id, _ := strings.Cut(key, "/")
		seq++
		rows = append(rows, chstore.Row{Type: typ, ID: id, Seq: seq, LastUpdated: chstore.Micros(base), Body: []byte(body)})
	}
	if err := e.store.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	until := base.Add(time.Minute)
	createJob(t, e, "att", streams.JobRunning, until)
	var tasks []streams.Task
	for i, typ := range []string{"DocumentReference", "Binary"} {
		tasks = append(tasks, streams.Task{JobID: "att", TaskID: "0000" + string(rune('0'+i)), Type: typ, Level: streams.LevelSystem,
			HashHi: chstore.HashSpace, Until: until, MaxFileResources: 100, MaxFileBytes: 1 << 20,
			BaseURL: baseURL, AttachmentBase: streams.AttachmentBase(baseURL, "att")})
	}
	publishTasks(t, e, tasks)
	runWriters(t, e, 1)
	testenv.Eventually(t, time.Minute, "every task acked", func() bool {
		info, err := e.Tasks.Info(t.Context())
		return err == nil && info.State.Msgs == 0
	})
	// Each task's result names its attachment index: the Binaries its
	// files point at (b2 is exported as itself and named nowhere).
	for _, task := range tasks {
		r, _ := result(t, e, task.JobID, task.TaskID)
		if !strings.HasPrefix(r.AttachmentIndex, "attachments-"+task.TaskID+"-") || !strings.HasSuffix(r.AttachmentIndex, ".ids") {
			t.Fatalf("task %s: attachment index %q", task.TaskID, r.AttachmentIndex)
		}
		for _, f := range r.Files {
			if f.Name == r.AttachmentIndex {
				t.Errorf("task %s lists its attachment index as a file", task.TaskID)
			}
		}
		ids, err := e.Files.GetBytes(t.Context(), streams.ObjectName("att", r.AttachmentIndex))
		if err != nil || string(ids) != "b1\n" {
			t.Errorf("task %s: attachment index %q, %v; want b1", task.TaskID, ids, err)
		}
	}
	got := map[string]string{}
	for _, f := range readResults(t, e, tasks) {
		for _, raw := range f.lines {
			var l line
			if err := json.Unmarshal(raw, &l); err != nil {
				t.Fatal(err)
			}
			got[l.ResourceType+"/"+l.ID] = string(raw)
		}
	}
	want := map[string]string{
		"DocumentReference/d1":     `{"resourceType":"DocumentReference","id":"d1","status":"current","content":[{"attachment":{"contentType":"text/plain","url":"` + abs + `b1"}},{"attachment":{"url":"` + abs + `b1"}}]}`,
		"DocumentReference/d2":     `{"resourceType":"DocumentReference","id":"d2","status":"current","content":[{"attachment":{"url":"` + abs + `b1"}}]}`,
		"DocumentReference/d3":     stored["DocumentReference/d3"],
		"DocumentReference/d4":     stored["DocumentReference/d4"],
		"DocumentReference/bin-b1": `{"resourceType":"DocumentReference","id":"bin-b1","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"text/plain","data":"aGVsbG8=","url":"` + abs + `b1"}}]}`,
		"Binary/b2":                stored["Binary/b2"],
	}
	// The store stamps meta; compare without it.
	for key, body := range got {
		var v map[string]any
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		delete(v, "meta")
		var w map[string]any
		if err := json.Unmarshal([]byte(want[key]), &w); err != nil {
			t.Errorf("unexpected %s: %s", key, body)
			continue
		}
		if a, b := mustJSON(t, v), mustJSON(t, w); a != b {
			t.Errorf("%s:\n got %s\nwant %s", key, a, b)
		}
	}
	if len(got) != len(want) {
		t.Errorf("exported %d resources, want %d", len(got), len(want))
	}
	// A body without attachments to rewrite is written byte for byte.
	if got["DocumentReference/d4"] != stored["DocumentReference/d4"] || got["DocumentReference/d3"] != stored["DocumentReference/d3"] {
		t.Errorf("untouched bodies changed:\n%s\n%s", got["DocumentReference/d4"], got["DocumentReference/d3"])
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
