package writer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

// env is one test's world: real JetStream and a fresh ClickHouse database.
type env struct {
	streamstest.Bus
	store *chstore.Store
}

func newEnv(t testing.TB) env {
	t.Helper()
	return env{Bus: streamstest.New(t), store: testenv.Store(t)}
}

// listPatients stores the patients of job as the planner lists them, and
// reports whether tasks should read the list (some patients given).
func listPatients(t testing.TB, e env, job string, patients []string) bool {
	t.Helper()
	if len(patients) == 0 {
		return false
	}
	if err := streams.PutPatients(t.Context(), e.Files, job, patients); err != nil {
		t.Fatal(err)
	}
	return true
}

// runWriters runs n writers until the test ends and checks they stop.
func runWriters(t testing.TB, e env, n int) {
	t.Helper()
	cfg := writer.DefaultConfig()
	cfg.CheckEvery = 200 * time.Millisecond
	runWritersWith(t, e, n, cfg)
}

// runWritersWith runs n writers of cfg, each set up by setUp first.
func runWritersWith(t testing.TB, e env, n int, cfg writer.Config, setUp ...func(*writer.Writer)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, n)
	for range n {
		w, err := writer.New(cfg, writer.Deps{
			JS: e.JS, Store: e.store, Log: testenv.Logger(t),
			Tracer: tracenoop.NewTracerProvider(), Meter: metricnoop.NewMeterProvider(),
		})
		if err != nil {
			t.Fatalf("new writer: %v", err)
		}
		for _, f := range setUp {
			f(w)
		}
		go func() { done <- w.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range n {
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("writer stopped with: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("writer did not stop within 30s of cancel")
				return
			}
		}
	})
}

// version is one row of the model of the store.
type version struct {
	seq     uint64
	stamp   time.Time
	deleted bool
	body    string
}

// model is what was inserted, by id, versions in seq order.
type model map[string][]version

// at returns the latest version of id at until, and whether there is one.
func (m model) at(id string, until time.Time) (version, bool) {
	var v version
	ok := false
	for _, x := range m[id] {
		if !x.stamp.After(until) {
			v, ok = x, true
		}
	}
	return v, ok
}

// live is id -> body of every resource a task of [since, until] exports.
func (m model) live(since, until time.Time) map[string]string {
	out := map[string]string{}
	for id := range m {
		if v, ok := m.at(id, until); ok && !v.deleted && (since.IsZero() || v.stamp.After(since)) {
			out[id] = v.body
		}
	}
	return out
}

// deleted is the set of ids whose latest version at until is a delete made after since.
func (m model) deleted(since, until time.Time) map[string]bool {
	out := map[string]bool{}
	for id := range m {
		if v, ok := m.at(id, until); ok && v.deleted && v.stamp.After(since) {
			out[id] = true
		}
	}
	return out
}

var base = time.Date(2025, 2, 3, 4, 5, 6, 0, time.UTC)

// seed inserts 2,500 Observations with updates, deletes, a re-creation,
// versions after the export's time, and some Patients; it returns the
// Observations' model.
func seed(t testing.TB, e env) model {
	t.Helper()
	m := model{}
	var rows []chstore.Row
	var seq uint64
	add := func(typ, id string, stamp time.Time, deleted bool, status string) {
		seq++
		body := ""
		if !deleted {
			body = fmt.Sprintf(`{"resourceType":%q,"id":%q,"meta":{"versionId":"%d"},"status":%q}`, typ, id, seq, status)
		}
		rows = append(rows, chstore.Row{Type: typ, ID: id, Seq: seq, LastUpdated: chstore.Micros(stamp), Deleted: deleted, Body: []byte(body)})
		if typ == "Observation" {
			m[id] = append(m[id], version{seq: seq, stamp: stamp, deleted: deleted, body: body})
		}
	}
	for i := range 2500 {
		add("Observation", fmt.Sprintf("o%04d", i), base, false, "final")
	}
	for i := range 30 {
		add("Patient", fmt.Sprintf("p%d", i), base, false, "")
	}
	for i := range 2500 {
		id := fmt.Sprintf("o%04d", i)
		switch {
		case i%25 == 0:
			add("Observation", id, base.Add(time.Minute), true, "")
		case i%10 == 1:
			add("Observation", id, base.Add(time.Minute), false, "amended")
		}
	}
	add("Observation", "o0000", base.Add(2*time.Minute), false, "recreated")
	for i := 2; i < 2500; i += 100 {
		add("Observation", fmt.Sprintf("o%04d", i), base.Add(2*time.Hour), false, "entered-in-error") // after the export's time
	}
	add("Observation", "o0025", base.Add(2*time.Hour), false, "recreated-too-late")
	if err := e.store.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	return m
}

func createJob(t testing.TB, e env, id, status string, until time.Time) {
	t.Helper()
	job := streams.Job{
		ExportRequest:   streams.ExportRequest{JobID: id, Level: streams.LevelSystem, SubmittedAt: time.Now().UTC()},
		Status:          status,
		TransactionTime: until,
	}
	if err := e.Jobs.Create(t.Context(), job); err != nil {
		t.Fatal(err)
	}
}

// thirds are tasks of job over three ranges covering the hash space.
func thirds(job, typ string, since, until time.Time, maxRes int, maxBytes int64) []streams.Task {
	bounds := []uint64{0, chstore.HashSpace / 3, 2 * chstore.HashSpace / 3, chstore.HashSpace}
	var out []streams.Task
	for i := range 3 {
		out = append(out, streams.Task{
			JobID: job, TaskID: fmt.Sprintf("%05d", i), Type: typ, HashLo: bounds[i], HashHi: bounds[i+1],
			Since: since, Until: until, MaxFileResources: maxRes, MaxFileBytes: maxBytes,
		})
	}
	return out
}

func publishTasks(t testing.TB, e env, tasks []streams.Task) {
	t.Helper()
	for _, task := range tasks {
		if _, err := e.JS.Publish(t.Context(), streams.SubjectTasks(task.JobID), streams.Encode(task)); err != nil {
			t.Fatal(err)
		}
	}
}

func result(t testing.TB, e env, job, task string) (streams.TaskResult, bool) {
	t.Helper()
	r, ok, err := e.Jobs.TaskResult(t.Context(), job, task)
	if err != nil {
		t.Fatal(err)
	}
	return r, ok
}

// exportedFile is one file a task's result lists, with its lines.
type exportedFile struct {
	task  streams.Task
	file  streams.File
	lines [][]byte
}

// readResults reads every file of the results of tasks, checking each
// against its File entry, and that nothing else is stored for the job.
func readResults(t testing.TB, e env, tasks []streams.Task) []exportedFile {
	t.Helper()
	var out []exportedFile
	names := map[string]bool{}
	for _, task := range tasks {
		r, ok := result(t, e, task.JobID, task.TaskID)
		if !ok {
			t.Fatalf("task %s/%s has no result", task.JobID, task.TaskID)
		}
		if r.JobID != task.JobID || r.TaskID != task.TaskID || r.Attempt < 1 {
			t.Errorf("result %+v does not name its task and attempt", r)
		}
		for _, f := range r.Files {
			if names[f.Name] {
				t.Errorf("file name %s listed twice", f.Name)
			}
			names[f.Name] = true
			// Stored compressed, with its decompressed size; ReadFile
			// checks that the two agree.
			raw, err := streams.ReadFile(t.Context(), e.Files, streams.ObjectName(task.JobID, f.Name))
			if err != nil {
				t.Fatalf("file %s of task %s: %v", f.Name, task.TaskID, err)
			}
			if int64(len(raw)) != f.Bytes {
				t.Errorf("%s: %d bytes stored, result says %d", f.Name, len(raw), f.Bytes)
			}
			info, err := e.Files.GetInfo(t.Context(), streams.ObjectName(task.JobID, f.Name))
			if err != nil || info.Headers.Get(streams.HeaderContentEncoding) != "gzip" {
				t.Errorf("%s: stored with headers %v (%v), want gzip", f.Name, info.Headers, err)
			} else if f.Bytes >= 64<<10 && int64(info.Size)*2 > f.Bytes {
				t.Errorf("%s: %d bytes stored for %d, want less than half", f.Name, info.Size, f.Bytes)
			}
			if len(raw) > 0 && raw[len(raw)-1] != '\n' {
				t.Errorf("%s does not end with a newline", f.Name)
			}
			lines := bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n"))
			if len(raw) == 0 {
				lines = nil
			}
			if len(lines) != f.Count {
				t.Errorf("%s: %d lines, result says %d", f.Name, len(lines), f.Count)
			}
			out = append(out, exportedFile{task: task, file: f, lines: lines})
		}
		if r.AttachmentIndex != "" {
			names[r.AttachmentIndex] = true // stored too, listed in no manifest
		}
		if task.PatientList {
			names[streams.PatientsObject] = true // the planner's
		}
	}
	if len(names) == 0 {
		return out
	}
	// Nothing stored beyond what the results list (no abandoned attempt's
	// files or attachment index).
	stored := e.ObjectNames(t, tasks[0].JobID+"/")
	if len(stored) != len(names) {
		t.Errorf("%d objects stored for job %s, results list %d: %v", len(stored), tasks[0].JobID, len(names), stored)
	}
	return out
}

type line struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Type         string `json:"type"`
	Entry        []struct {
		Request struct {
			Method string `json:"method"`
			URL    string `json:"url"`
		} `json:"request"`
	} `json:"entry"`
}

func TestWriterExportsTasks(t *testing.T) {
	e := newEnv(t)
	m := seed(t, e)
	until := base.Add(30 * time.Minute)
	since := base.Add(30 * time.Second)
	const maxRes = 400

	createJob(t, e, "full", streams.JobRunning, until)
	createJob(t, e, "since", streams.JobRunning, until)
	createJob(t, e, "bytes", streams.JobRunning, until)
	full := thirds("full", "Observation", time.Time{}, until, maxRes, 1<<30)
	sinceTasks := thirds("since", "Observation", since, until, maxRes, 1<<30)
	bytesTask := streams.Task{JobID: "bytes", TaskID: "00000", Type: "Observation", HashHi: chstore.HashSpace, Until: until, MaxFileResources: 100_000, MaxFileBytes: 20_000}
	publishTasks(t, e, full)
	publishTasks(t, e, sinceTasks)
	publishTasks(t, e, []streams.Task{bytesTask})
	runWriters(t, e, 2)
	testenv.Eventually(t, 2*time.Minute, "every task done and acked", func() bool {
		info, err := e.Tasks.Info(t.Context())
		return err == nil && info.State.Msgs == 0
	})

	t.Run("full export", func(t *testing.T) {
		want := m.live(time.Time{}, until)
		if len(want) != 2401 {
			t.Fatalf("model has %d live resources, want 2401", len(want))
		}
		files := readResults(t, e, full)
		seen := map[string]int{}
		full400 := 0
		for _, f := range files {
			if f.file.Type != "Observation" || strings.HasPrefix(f.file.Name, "deleted-") {
				t.Errorf("file %s of type %s in an export without _since", f.file.Name, f.file.Type)
			}
			if f.file.Count > maxRes {
				t.Errorf("%s holds %d resources, more than %d", f.file.Name, f.file.Count, maxRes)
			}
			if f.file.Count == maxRes {
				full400++
			}
			for _, raw := range f.lines {
				var l line
				if err := json.Unmarshal(raw, &l); err != nil {
					t.Fatalf("%s: line is not JSON: %v", f.file.Name, err)
				}
				if l.ResourceType != f.file.Type {
					t.Fatalf("%s of type %s holds a %s", f.file.Name, f.file.Type, l.ResourceType)
				}
				if h := uint64(chstore.IDHash(l.ID)); h < f.task.HashLo || h >= f.task.HashHi {
					t.Errorf("%s exported by task %s whose range [%d, %d) excludes its hash %d", l.ID, f.task.TaskID, f.task.HashLo, f.task.HashHi, h)
				}
				seen[l.ID]++
				if w, ok := want[l.ID]; !ok {
					t.Errorf("%s exported but not live at the export's time", l.ID)
				} else if string(raw) != w {
					t.Errorf("%s exported as %s, want the version at the export's time %s", l.ID, raw, w)
				}
			}
		}
		for id := range want {
			if seen[id] != 1 {
				t.Errorf("%s exported %d times, want once", id, seen[id])
			}
		}
		if len(files) <= 3 || full400 == 0 {
			t.Errorf("%d files, %d of them full, for ~800 resources per task at %d per file: no rollover", len(files), full400, maxRes)
		}
		if n := streamstest.SubjectCount(t, e.JobEvents, streams.SubjectJobDone("full")); n != 3 {
			t.Errorf("%d completions announced, want 3", n)
		}
	})

	t.Run("since exports changes and deletions", func(t *testing.T) {
		wantLive, wantDeleted := m.live(since, until), m.deleted(since, until)
		if len(wantLive) != 251 || len(wantDeleted) != 99 {
			t.Fatalf("model: %d changed and %d deleted since, want 251 and 99", len(wantLive), len(wantDeleted))
		}
		gotLive, gotDeleted := map[string]int{}, map[string]int{}
		for _, f := range readResults(t, e, sinceTasks) {
			isDeleted := strings.HasPrefix(f.file.Name, "deleted-")
			if isDeleted != (f.file.Type == "Bundle") {
				t.Errorf("file %s has type %s", f.file.Name, f.file.Type)
			}
			if f.file.Count > maxRes {
				t.Errorf("%s holds %d lines, more than %d", f.file.Name, f.file.Count, maxRes)
			}
			for _, raw := range f.lines {
				var l line
				if err := json.Unmarshal(raw, &l); err != nil {
					t.Fatalf("%s: line is not JSON: %v", f.file.Name, err)
				}
				if l.ResourceType != f.file.Type {
					t.Fatalf("%s of type %s holds a %s", f.file.Name, f.file.Type, l.ResourceType)
				}
				if !isDeleted {
					gotLive[l.ID]++
					if string(raw) != wantLive[l.ID] {
						t.Errorf("%s exported as %s, want %s", l.ID, raw, wantLive[l.ID])
					}
					continue
				}
				if l.Type != "transaction" || len(l.Entry) != 1 || l.Entry[0].Request.Method != "DELETE" || !strings.HasPrefix(l.Entry[0].Request.URL, "Observation/") {
					t.Fatalf("%s: deletion line %s is not a transaction Bundle with one DELETE of an Observation", f.file.Name, raw)
				}
				gotDeleted[strings.TrimPrefix(l.Entry[0].Request.URL, "Observation/")]++
			}
		}
		for id := range wantLive {
			if gotLive[id] != 1 {
				t.Errorf("changed %s exported %d times, want once", id, gotLive[id])
			}
		}
		for id := range wantDeleted {
			if gotDeleted[id] != 1 {
				t.Errorf("deleted %s reported %d times, want once", id, gotDeleted[id])
			}
		}
		if len(gotLive) != len(wantLive) || len(gotDeleted) != len(wantDeleted) {
			t.Errorf("exported %d changed and %d deleted, want %d and %d", len(gotLive), len(gotDeleted), len(wantLive), len(wantDeleted))
		}
	})

	t.Run("deleted resources appear nowhere without since", func(t *testing.T) {
		deleted := m.deleted(time.Time{}, until)
		for _, f := range readResults(t, e, full) {
			for _, raw := range f.lines {
				var l line
				_ = json.Unmarshal(raw, &l)
				if deleted[l.ID] {
					t.Errorf("deleted %s exported in %s", l.ID, f.file.Name)
				}
			}
		}
	})

	t.Run("files roll over by size", func(t *testing.T) {
		files := readResults(t, e, []streams.Task{bytesTask})
		total, short := 0, 0
		for _, f := range files {
			total += f.file.Count
			last := int64(len(f.lines[len(f.lines)-1]) + 1)
			if f.file.Bytes-last >= bytesTask.MaxFileBytes {
				t.Errorf("%s is %d bytes: it went on past %d", f.file.Name, f.file.Bytes, bytesTask.MaxFileBytes)
			}
			if f.file.Bytes < bytesTask.MaxFileBytes {
				short++
			}
		}
		if total != 2401 || len(files) < 2 {
			t.Errorf("%d resources in %d files, want 2401 over several files of about %d bytes", total, len(files), bytesTask.MaxFileBytes)
		}
		if short > 1 {
			t.Errorf("%d files below the size limit: only the last one may be", short)
		}
	})
}

func TestWriterSkipsMootTasks(t *testing.T) {
	e := newEnv(t)
	seed(t, e)
	until := base.Add(30 * time.Minute)
	ctx := t.Context()

	// A job that is no longer running, or is gone, gets no files.
	for _, status := range []string{streams.JobCancelled, streams.JobFailed, streams.JobComplete, streams.JobAccepted} {
		createJob(t, e, status, status, until)
	}
	// A task whose result is already recorded is not written again.
	createJob(t, e, "done", streams.JobRunning, until)
	pre := streams.TaskResult{JobID: "done", TaskID: "00000", Attempt: 99, Files: []streams.File{{Name: "earlier.ndjson", Type: "Observation", Count: 7, Bytes: 70}}}
	if err := e.Jobs.RecordTaskResult(ctx, pre); err != nil {
		t.Fatal(err)
	}
	// A running job, to show the writers do work.
	createJob(t, e, "live", streams.JobRunning, until)

	task := func(job string) streams.Task {
		return streams.Task{JobID: job, TaskID: "00000", Type: "Observation", HashHi: chstore.HashSpace, Until: until, MaxFileResources: 400, MaxFileBytes: 1 << 30}
	}
	moot := []string{streams.JobCancelled, streams.JobFailed, streams.JobComplete, streams.JobAccepted, "removed", "done"}
	for _, job := range append(moot, "live") {
		publishTasks(t, e, []streams.Task{task(job)})
	}
	runWriters(t, e, 2)
	testenv.Eventually(t, time.Minute, "every task acked", func() bool {
		info, err := e.Tasks.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	if _, ok := result(t, e, "live", "00000"); !ok {
		t.Fatal("the running job's task has no result")
	}
	for _, job := range moot {
		t.Run(job, func(t *testing.T) {
			r, ok := result(t, e, job, "00000")
			if job == "done" {
				if !ok || r.Attempt != 99 || len(r.Files) != 1 || r.Files[0].Name != "earlier.ndjson" {
					t.Errorf("recorded result replaced: %+v", r)
				}
			} else if ok {
				t.Errorf("task of a %s job recorded %+v", job, r)
			}
			if names := e.ObjectNames(t, job+"/"); len(names) != 0 {
				t.Errorf("task of a %s job stored %v", job, names)
			}
			if job == "done" {
				return // whether it re-announces: TestWriterAnnouncesTaskRecordedByEarlierAttempt
			}
			if n := streamstest.SubjectCount(t, e.JobEvents, streams.SubjectJobDone(job)); n != 0 {
				t.Errorf("task of a %s job announced %d completions", job, n)
			}
		})
	}
}

// TestWriterLeavesNothingOfAnExportCancelledWhileItWrites: an export is
// cancelled while a task of it is being written, and its clean-up runs
// before the task's files and result are stored. The attempt must remove
// them itself; before, they stayed in the object store and KV for good
// (found by bulkbench -soak, whose stores never came back to their
// baseline). An attempt that finds its job only marked cancelled removes
// them too: the clean-up may have listed the files before they were
// stored.
func TestWriterLeavesNothingOfAnExportCancelledWhileItWrites(t *testing.T) {
	e := newEnv(t)
	seed(t, e)
	until := base.Add(30 * time.Minute)
	ctx := t.Context()
	jobs := []string{"removed", "marked"}
	var tasks []streams.Task
	for _, job := range jobs {
		createJob(t, e, job, streams.JobRunning, until)
		tasks = append(tasks, streams.Task{JobID: job, TaskID: "00000", Type: "Observation", HashHi: chstore.HashSpace, Until: until, MaxFileResources: 400, MaxFileBytes: 1 << 30})
	}
	cancelled := make(chan string, len(jobs))
	cfg := writer.DefaultConfig()
	cfg.CheckEvery = time.Hour // the attempt must not see the cancel while it writes
	runWritersWith(t, e, 1, cfg, func(w *writer.Writer) {
		w.SetTestWriting(func(task streams.Task) {
			// What DELETE on the status URL does, then (for "removed")
			// the planner's clean-up, finding nothing of the task yet.
			if _, err := e.Jobs.Update(ctx, task.JobID, func(j *streams.Job) bool { j.Status = streams.JobCancelled; return true }); err != nil {
				t.Error(err)
			}
			if task.JobID == "removed" {
				if err := e.Jobs.Remove(ctx, task.JobID); err != nil {
					t.Error(err)
				}
			}
			cancelled <- task.JobID
		})
	})
	publishTasks(t, e, tasks)
	for range jobs {
		select {
		case <-cancelled:
		case <-time.After(time.Minute):
			t.Fatal("the writer did not start the tasks")
		}
	}
	testenv.Eventually(t, time.Minute, "every task acked", func() bool {
		info, err := e.Tasks.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	for _, job := range jobs {
		if names := e.ObjectNames(t, job+"/"); len(names) != 0 {
			t.Errorf("the %s export's files stayed: %v", job, names)
		}
		if r, ok := result(t, e, job, "00000"); ok {
			t.Errorf("the %s export's task result stayed: %+v", job, r)
		}
		if n := streamstest.SubjectCount(t, e.JobEvents, streams.SubjectJobDone(job)); n != 0 {
			t.Errorf("a task of the %s export was announced done %d times", job, n)
		}
	}
}

// TestWriterLetsGoOfATaskWhoseExportIsCancelledBeforeItReads: the export
// is cancelled as an attempt begins, and the attempt's watch stops it
// before its read of ClickHouse opens. The task is let go at once: it is
// not failed, logged as an error and retried (the soak's writer errors).
func TestWriterLetsGoOfATaskWhoseExportIsCancelledBeforeItReads(t *testing.T) {
	e := newEnv(t)
	seed(t, e)
	until := base.Add(30 * time.Minute)
	ctx := t.Context()
	createJob(t, e, "job1", streams.JobRunning, until)
	listPatients(t, e, "job1", []string{"p1", "p2"})
	cfg := writer.DefaultConfig()
	cfg.CheckEvery = 50 * time.Millisecond
	started := make(chan struct{}, 1)
	runWritersWith(t, e, 1, cfg, func(w *writer.Writer) {
		w.SetTestWriting(func(task streams.Task) {
			if _, err := e.Jobs.Update(ctx, task.JobID, func(j *streams.Job) bool { j.Status = streams.JobCancelled; return true }); err != nil {
				t.Error(err)
			}
			// Long enough for the watch to see it and stop the attempt.
			<-time.After(time.Second)
			started <- struct{}{}
		})
	})
	// A Patient-level task reads its export's patient list first.
	publishTasks(t, e, []streams.Task{{JobID: "job1", TaskID: "00000", Type: "Observation", Level: streams.LevelPatient, PatientList: true,
		HashHi: chstore.HashSpace, Until: until, MaxFileResources: 400, MaxFileBytes: 1 << 30}})
	select {
	case <-started:
	case <-time.After(time.Minute):
		t.Fatal("the writer did not start the task")
	}
	testenv.Eventually(t, time.Minute, "the task acked", func() bool {
		info, err := e.Tasks.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	cons, err := e.JS.Consumer(ctx, streams.StreamExportTasks, streams.ConsumerWriters)
	if err != nil {
		t.Fatal(err)
	}
	// A task sent back would be delivered again a second later.
	<-time.After(2 * time.Second)
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 1 {
		t.Errorf("the task of the cancelled export was delivered %d times, want once", info.Delivered.Consumer)
	}
	if names := e.ObjectNames(t, "job1/"); len(names) != 1 || names[0] != "job1/"+streams.PatientsObject {
		t.Errorf("the cancelled export's objects: %v, want only its patient list (the planner's)", names)
	}
	if job, _, err := e.Jobs.Get(ctx, "job1"); err != nil || job.Status != streams.JobCancelled {
		t.Errorf("the export after the writer let it go: %+v %v", job, err)
	}
}

// An attempt that recorded its result and died before announcing it leaves
// the task to be redelivered. The planner only counts results when a
// completion is announced, so the redelivered task must announce it, or the
// job never completes.
func TestWriterAnnouncesTaskRecordedByEarlierAttempt(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	until := base.Add(30 * time.Minute)
	createJob(t, e, "job1", streams.JobRunning, until)
	earlier := streams.TaskResult{JobID: "job1", TaskID: "00000", Attempt: 1, Files: []streams.File{{Name: "Observation-00000-a1-001.ndjson", Type: "Observation", Count: 1, Bytes: 44}}}
	if _, err := e.Files.PutString(ctx, streams.ObjectName("job1", earlier.Files[0].Name), `{"resourceType":"Observation","id":"o1"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	if err := e.Jobs.RecordTaskResult(ctx, earlier); err != nil {
		t.Fatal(err)
	}
	publishTasks(t, e, []streams.Task{{JobID: "job1", TaskID: "00000", Type: "Observation", HashHi: chstore.HashSpace, Until: until, MaxFileResources: 400, MaxFileBytes: 1 << 30}})
	runWriters(t, e, 1)
	testenv.Eventually(t, time.Minute, "task acked", func() bool {
		info, err := e.Tasks.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	if names := e.ObjectNames(t, "job1/"); len(names) != 1 {
		t.Errorf("files %v, want the earlier attempt's file kept and nothing new", names)
	}
	if r, _ := result(t, e, "job1", "00000"); r.Attempt != 1 {
		t.Errorf("result replaced by attempt %d", r.Attempt)
	}
	if n := streamstest.SubjectCount(t, e.JobEvents, streams.SubjectJobDone("job1")); n != 1 {
		t.Errorf("task finished by an earlier attempt acked with %d completion announcements, want 1: the planner never counts it", n)
	}
}

// TestWriterTaskThatKeepsFailingFailsTheExport: after its last attempt a
// failing task fails the job with a message naming the type, the id-hash
// range and the cause; it records no result, so no manifest can complete
// without its resources.
func TestWriterTaskThatKeepsFailingFailsTheExport(t *testing.T) {
	e := newEnv(t)
	until := time.Now().UTC()
	createJob(t, e, "job", streams.JobRunning, until)
	// A type ClickHouse reads refuse: every attempt fails the same way.
	bad := streams.Task{JobID: "job", TaskID: "00000", Type: "Bad'Type", HashLo: 0, HashHi: chstore.HashSpace, Until: until, MaxFileResources: 10, MaxFileBytes: 1 << 20}
	publishTasks(t, e, []streams.Task{bad})
	cfg := writer.DefaultConfig()
	cfg.CheckEvery, cfg.MaxDeliver = 200*time.Millisecond, 2
	runWritersWith(t, e, 1, cfg)

	var job streams.Job
	testenv.Eventually(t, 30*time.Second, "the job to fail", func() bool {
		var err error
		job, _, err = e.Jobs.Get(t.Context(), "job")
		return err == nil && job.Status == streams.JobFailed
	})
	for _, want := range []string{"Bad'Type", fmt.Sprintf("[0, %d)", chstore.HashSpace), "after 2 attempts"} {
		if !strings.Contains(job.Error, want) {
			t.Errorf("job error %q does not name %q", job.Error, want)
		}
	}
	if r, ok := result(t, e, "job", "00000"); ok {
		t.Errorf("a failed task recorded a result: %+v", r)
	}
}

// TestWriterPatientLevelProvenanceFollowsTargets: at Patient and Group
// level, a Provenance goes out when any target is in the exported
// compartments, not only when it targets the Patient (the IG's default
// Provenance rule).
func TestWriterPatientLevelProvenanceFollowsTargets(t *testing.T) {
	e := newEnv(t)
	rows := []chstore.Row{
		{Type: "Patient", ID: "p1", Seq: 1, LastUpdated: 10, Patients: []string{"p1"}, Body: []byte(`{"resourceType":"Patient","id":"p1"}`)},
		{Type: "Patient", ID: "p2", Seq: 2, LastUpdated: 10, Patients: []string{"p2"}, Body: []byte(`{"resourceType":"Patient","id":"p2"}`)},
		{Type: "Observation", ID: "o1", Seq: 3, LastUpdated: 10, Patients: []string{"p1"}, Body: []byte(`{"resourceType":"Observation","id":"o1"}`)},
		{Type: "Observation", ID: "o2", Seq: 4, LastUpdated: 10, Patients: []string{"p2"}, Body: []byte(`{"resourceType":"Observation","id":"o2"}`)},
	}
	prov := map[string]string{
		"prov-obs1":  `"Observation/o1"`,
		"prov-obs2":  `"http://fhir.example/Observation/o2/_history/3"`,
		"prov-pat1":  `"Patient/p1"`,
		"prov-org":   `"Organization/x"`,
		"prov-ghost": `"Observation/never-stored"`,
	}
	seq := uint64(10)
	for id, target := range prov {
		seq++
		var patients []string
		if id == "prov-pat1" {
			patients = []string{"p1"} // what the ingester's compartment computes
		}
		rows = append(rows, chstore.Row{Type: "Provenance", ID: id, Seq: seq, LastUpdated: 10, Patients: patients,
			Body: []byte(`{"resourceType":"Provenance","id":"` + id + `","target":[{"reference":` + target + `}],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Practitioner/d"}}]}`)})
	}
	if err := e.store.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	until := time.UnixMicro(100).UTC()
	runWriters(t, e, 1)
	cases := []struct {
		job      string
		patients []string
		want     string
	}{
		{"all", nil, "prov-obs1 prov-obs2 prov-pat1"},
		{"p1only", []string{"p1"}, "prov-obs1 prov-pat1"},
		{"p2only", []string{"p2"}, "prov-obs2"},
	}
	for _, c := range cases {
		createJob(t, e, c.job, streams.JobRunning, until)
		task := streams.Task{JobID: c.job, TaskID: "00000", Type: "Provenance", Level: streams.LevelPatient,
			PatientList: listPatients(t, e, c.job, c.patients), HashLo: 0, HashHi: chstore.HashSpace, Until: until, MaxFileResources: 100, MaxFileBytes: 1 << 20}
		publishTasks(t, e, []streams.Task{task})
		testenv.Eventually(t, 30*time.Second, "provenance task result", func() bool { _, ok := result(t, e, c.job, "00000"); return ok })
		var ids []string
		for _, f := range readResults(t, e, []streams.Task{task}) {
			for _, l := range f.lines {
				var r struct{ ID string }
				if err := json.Unmarshal(l, &r); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, r.ID)
			}
		}
		sort.Strings(ids)
		if got := strings.Join(ids, " "); got != c.want {
			t.Errorf("%s: Provenances %q, want %q", c.job, got, c.want)
		}
	}
}

// A task of several types (the planner packs small types) exports each
// type exactly as a task of that type alone would: the same lines in
// files of that type, its deletions included, and nothing for a type
// without rows.
func TestWriterPackedTaskExportsEachTypeAsItsOwnTaskWould(t *testing.T) {
	e := newEnv(t)
	seed(t, e)
	until := base.Add(30 * time.Minute)
	since := base.Add(30 * time.Second)
	types := []string{"Observation", "Patient", "Condition"}
	var alone []streams.Task
	var packed []streams.Task
	for _, s := range []struct {
		name  string
		since time.Time
	}{{"full", time.Time{}}, {"since", since}} {
		createJob(t, e, s.name+"-alone", streams.JobRunning, until)
		createJob(t, e, s.name+"-packed", streams.JobRunning, until)
		for i, typ := range types {
			alone = append(alone, streams.Task{JobID: s.name + "-alone", TaskID: fmt.Sprintf("%05d", i), Type: typ,
				HashHi: chstore.HashSpace, Since: s.since, Until: until, MaxFileResources: 400, MaxFileBytes: 1 << 30})
		}
		packed = append(packed, streams.Task{JobID: s.name + "-packed", TaskID: "00000", Types: types,
			HashHi: chstore.HashSpace, Since: s.since, Until: until, MaxFileResources: 400, MaxFileBytes: 1 << 30})
	}
	publishTasks(t, e, alone)
	publishTasks(t, e, packed)
	runWriters(t, e, 2)
	testenv.Eventually(t, 2*time.Minute, "every task done and acked", func() bool {
		info, err := e.Tasks.Info(t.Context())
		return err == nil && info.State.Msgs == 0
	})
	// byFile is each job's lines by kind and type, sorted.
	byFile := func(tasks []streams.Task, job string) map[string][]string {
		var mine []streams.Task
		for _, task := range tasks {
			if task.JobID == job {
				mine = append(mine, task)
			}
		}
		out := map[string][]string{}
		for _, f := range readResults(t, e, mine) {
			key := f.file.Kind + "/" + f.file.Type
			for _, l := range f.lines {
				out[key] = append(out[key], string(l))
			}
		}
		for _, lines := range out {
			sort.Strings(lines)
		}
		return out
	}
	for _, name := range []string{"full", "since"} {
		want, got := byFile(alone, name+"-alone"), byFile(packed, name+"-packed")
		if len(got) != len(want) {
			t.Errorf("%s: the packed task wrote files of %d kinds and types, the tasks alone %d", name, len(got), len(want))
		}
		for key, lines := range want {
			if !slices.Equal(got[key], lines) {
				t.Errorf("%s: the packed task wrote %d lines to %s files, the task alone %d (or other lines)", name, len(got[key]), key, len(lines))
			}
		}
	}
	// The seed's Patients and both kinds of Observation lines are there.
	full, since2 := byFile(packed, "full-packed"), byFile(packed, "since-packed")
	if len(full["output/Patient"]) != 30 || len(full["output/Observation"]) != 2401 || len(since2["deleted/Bundle"]) != 99 {
		t.Errorf("packed: %d Patients and %d Observations in full, %d deletions since; want 30, 2401 and 99",
			len(full["output/Patient"]), len(full["output/Observation"]), len(since2["deleted/Bundle"]))
	}
}
