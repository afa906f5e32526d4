package planner_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/flatfhir/flatfhir/services/planner"
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

// runPlanner runs a planner until the test ends and checks it stops cleanly.
func runPlanner(t testing.TB, e env, cfg planner.Config) {
	t.Helper()
	runPlannerLogging(t, e, cfg, testenv.Logger(t))
}

// runPlannerLogging is runPlanner, logging to log.
func runPlannerLogging(t testing.TB, e env, cfg planner.Config, log *slog.Logger) {
	t.Helper()
	p, err := planner.New(cfg, planner.Deps{
		JS: e.JS, Store: e.store, Log: log,
		Tracer: tracenoop.NewTracerProvider(), Meter: metricnoop.NewMeterProvider(),
	})
	if err != nil {
		t.Fatalf("new planner: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("planner stopped with: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("planner did not stop within 30s of cancel")
		}
	})
}

func setWatermark(t testing.TB, e env, wm streams.Watermark) {
	t.Helper()
	kv, err := e.JS.KeyValue(t.Context(), streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), streams.KeyWatermark, streams.Encode(wm)); err != nil {
		t.Fatalf("write watermark: %v", err)
	}
}

// insert stores n versions of typ stamped at stamp, ids prefix0..prefixN-1.
func insert(t testing.TB, e env, typ, prefix string, n int, stamp time.Time, seq *uint64) {
	t.Helper()
	rows := make([]chstore.Row, 0, n)
	for i := range n {
		*seq++
		id := fmt.Sprintf("%s%d", prefix, i)
		rows = append(rows, chstore.Row{
			Type: typ, ID: id, Seq: *seq, LastUpdated: chstore.Micros(stamp),
			Body: []byte(fmt.Sprintf(`{"resourceType":%q,"id":%q}`, typ, id)),
		})
	}
	if err := e.store.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
}

func newJob(id string, minSeq uint64) streams.Job {
	return streams.Job{
		ExportRequest: streams.ExportRequest{
			JobID: id, Level: streams.LevelSystem, RequestURL: "http://fhir.example/$export",
			MinChangeSeq: minSeq, SubmittedAt: time.Now().UTC(),
		},
		Status: streams.JobAccepted,
	}
}

func publish(t testing.TB, e env, subject string, data []byte) {
	t.Helper()
	if _, err := e.JS.Publish(t.Context(), subject, data); err != nil {
		t.Fatalf("publish on %s: %v", subject, err)
	}
}

func getJob(t testing.TB, e env, id string) streams.Job {
	t.Helper()
	j, _, err := e.Jobs.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("get job %s: %v", id, err)
	}
	return j
}

// queuedTasks reads, without consuming, the tasks of job waiting on EXPORT_TASKS.
func queuedTasks(t testing.TB, e env, job string) []streams.Task {
	t.Helper()
	ctx := t.Context()
	info, err := e.Tasks.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []streams.Task
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := e.Tasks.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("read task message %d: %v", seq, err)
		}
		if m.Subject != streams.SubjectTasks(job) {
			continue
		}
		var task streams.Task
		if err := streams.Decode(m.Data, &task); err != nil {
			t.Fatal(err)
		}
		out = append(out, task)
	}
	return out
}

func taskResultKeys(t testing.TB, e env, job string) []string {
	t.Helper()
	tasks, err := e.Jobs.TaskIDs(t.Context(), job)
	if err != nil {
		t.Fatal(err)
	}
	return tasks
}

func putResult(t testing.TB, e env, r streams.TaskResult) {
	t.Helper()
	if err := e.Jobs.RecordTaskResult(t.Context(), r); err != nil {
		t.Fatalf("record result of task %s: %v", r.TaskID, err)
	}
}

func testConfig() planner.Config {
	cfg := planner.DefaultConfig()
	cfg.TaskRows, cfg.MaxFileResources, cfg.MaxFileBytes = 100, 77, 1<<20
	return cfg
}

// planned seeds resources and a watermark, submits job id and waits until
// its tasks are published. It returns the watermark stamp.
func planned(t *testing.T, e env, id string) time.Time {
	t.Helper()
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var seq uint64
	insert(t, e, "Patient", "p", 40, base, &seq)
	insert(t, e, "Observation", "o", 600, base.Add(time.Minute), &seq)
	insert(t, e, "Condition", "c", 3, base.Add(2*time.Minute), &seq)
	// Stamped after the watermark: not part of any plan made at it.
	insert(t, e, "Encounter", "e", 50, base.Add(2*time.Hour), &seq)
	stamp := base.Add(time.Hour).Add(123456 * time.Microsecond)
	setWatermark(t, e, streams.Watermark{Seq: 0, Stamp: stamp})
	if err := e.Jobs.Create(t.Context(), newJob(id, 0)); err != nil {
		t.Fatal(err)
	}
	publish(t, e, streams.SubjectJobSubmit(id), nil)
	testenv.Eventually(t, 30*time.Second, "job "+id+" planned", func() bool {
		j, _, err := e.Jobs.Get(t.Context(), id)
		return err == nil && j.Status == streams.JobRunning && j.TasksPublished
	})
	return stamp
}

func TestPlannerPlansAndCompletesExport(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	runPlanner(t, e, cfg)
	ctx := t.Context()
	const id = "job1"
	stamp := planned(t, e, id)

	job := getJob(t, e, id)
	if !job.TransactionTime.Equal(stamp) {
		t.Errorf("transactionTime %s, want the watermark stamp %s", job.TransactionTime, stamp)
	}
	tasks := queuedTasks(t, e, id)
	if n := streamstest.SubjectCount(t, e.Tasks, streams.SubjectTasks(id)); job.TasksTotal != int(n) || len(tasks) != int(n) {
		t.Fatalf("TasksTotal %d, %d task messages queued (%d read)", job.TasksTotal, n, len(tasks))
	}
	perType := map[string]int{}
	for _, task := range tasks {
		perType[task.TypeLabel()]++
		if task.JobID != id || !task.Until.Equal(stamp) || task.MaxFileResources != cfg.MaxFileResources || task.MaxFileBytes != cfg.MaxFileBytes {
			t.Errorf("task %+v does not carry the job, transactionTime and file limits", task)
		}
	}
	// Condition's 3 rows and Patient's 40 fit one task of TaskRows 100.
	if perType["Condition,Patient"] != 1 || perType["Observation"] < 5 || len(perType) != 2 {
		t.Errorf("tasks per type %v: want one of Condition and Patient packed, at least 5 Observation (600 rows / 100), no Encounter (stamped after the watermark)", perType)
	}
	counts, err := e.store.BucketCounts(ctx, nil, 0, chstore.Micros(stamp))
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, job, stamp, counts, cfg, tasks)

	// Writers record results in any order; the manifest lists task order.
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].TaskID < tasks[j].TaskID })
	results := make([]streams.TaskResult, len(tasks))
	var wantOutput, wantDeleted []streams.ManifestFile
	for i, task := range tasks {
		r := streams.TaskResult{JobID: id, TaskID: task.TaskID, Attempt: 1}
		for part := 1; part <= 1+i%2; part++ {
			f := streams.File{Name: fmt.Sprintf("%s-%s-a1-%03d.ndjson", task.Type, task.TaskID, part), Type: task.Type, Count: 10*i + part, Bytes: 100}
			r.Files = append(r.Files, f)
			wantOutput = append(wantOutput, streams.ManifestFile{Type: f.Type, Name: f.Name, Count: f.Count})
		}
		if i == 0 {
			// An empty file is never listed.
			r.Files = append(r.Files, streams.File{Name: "empty-" + task.TaskID + ".ndjson", Type: task.Type})
		}
		if i == 1 {
			f := streams.File{Name: "deleted-" + task.Type + "-" + task.TaskID + "-a1-001.ndjson", Type: "Bundle", Count: 2, Bytes: 50}
			r.Files = append(r.Files, f)
			wantDeleted = append(wantDeleted, streams.ManifestFile{Type: "Bundle", Name: f.Name, Count: 2})
		}
		results[i] = r
	}
	// All but the first, newest first: progress is counted, no manifest yet.
	for i := len(results) - 1; i >= 1; i-- {
		putResult(t, e, results[i])
		publish(t, e, streams.SubjectJobDone(id), []byte(results[i].TaskID))
	}
	testenv.Eventually(t, 30*time.Second, "progress counted", func() bool {
		return getJob(t, e, id).TasksDone == len(results)-1
	})
	if j := getJob(t, e, id); j.Status != streams.JobRunning || j.Manifest != "" {
		t.Fatalf("job with a task outstanding is %s with manifest %q", j.Status, j.Manifest)
	}
	putResult(t, e, results[0])
	publish(t, e, streams.SubjectJobDone(id), []byte(results[0].TaskID))
	testenv.Eventually(t, 30*time.Second, "job complete", func() bool {
		return getJob(t, e, id).Status == streams.JobComplete
	})

	job = getJob(t, e, id)
	if job.TasksDone != job.TasksTotal {
		t.Errorf("complete job has TasksDone %d of %d", job.TasksDone, job.TasksTotal)
	}
	if job.CompletedAt.IsZero() || !job.ExpiresAt.Equal(job.CompletedAt.Add(cfg.Retention)) {
		t.Errorf("completedAt %s expiresAt %s, want expiry %s after completion", job.CompletedAt, job.ExpiresAt, cfg.Retention)
	}
	if !strings.HasPrefix(job.Manifest, streams.ObjectName(id, "manifest-")) || !strings.HasSuffix(job.Manifest, ".json") {
		t.Errorf("manifest object %q", job.Manifest)
	}
	raw, err := e.Files.GetBytes(ctx, job.Manifest)
	if err != nil {
		t.Fatalf("read manifest %s: %v", job.Manifest, err)
	}
	var m streams.Manifest
	if err := streams.Decode(raw, &m); err != nil {
		t.Fatal(err)
	}
	if !m.TransactionTime.Equal(stamp) || m.Request != job.RequestURL {
		t.Errorf("manifest transactionTime %s request %q, want %s and %q", m.TransactionTime, m.Request, stamp, job.RequestURL)
	}
	if !slices.Equal(m.Output, wantOutput) {
		t.Errorf("manifest output:\n got %v\nwant %v", m.Output, wantOutput)
	}
	if !slices.Equal(m.Deleted, wantDeleted) {
		t.Errorf("manifest deleted %v, want %v", m.Deleted, wantDeleted)
	}
	if m.Error == nil || len(m.Error) != 0 || !strings.Contains(string(raw), `"error":[]`) {
		t.Errorf("manifest error %v, want an empty list: %s", m.Error, raw)
	}
}

func TestPlannerIgnoredParametersBecomeErrorFile(t *testing.T) {
	e := newEnv(t)
	runPlanner(t, e, testConfig())
	ctx := t.Context()
	// Nothing to export at all: a plan of no tasks completes at once.
	setWatermark(t, e, streams.Watermark{Seq: 0, Stamp: time.Now().UTC()})
	job := newJob("job1", 0)
	job.Ignored = []string{"_foo=bar", "_elements"}
	if err := e.Jobs.Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	publish(t, e, streams.SubjectJobSubmit(job.JobID), nil)
	testenv.Eventually(t, 30*time.Second, "empty export complete", func() bool {
		return getJob(t, e, job.JobID).Status == streams.JobComplete
	})
	got := getJob(t, e, job.JobID)
	if got.TasksTotal != 0 {
		t.Errorf("an export of an empty store has %d tasks", got.TasksTotal)
	}
	raw, err := e.Files.GetBytes(ctx, got.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	var m streams.Manifest
	if err := streams.Decode(raw, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Output) != 0 || len(m.Error) != 1 || m.Error[0].Type != "OperationOutcome" || m.Error[0].Count != 2 {
		t.Fatalf("manifest %s: want no output and one OperationOutcome file of 2", raw)
	}
	body, err := e.Files.GetString(ctx, streams.ObjectName(job.JobID, m.Error[0].Name))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(body), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "_foo=bar") || !strings.Contains(lines[1], "_elements") {
		t.Errorf("error file %q does not list each ignored parameter on its own line", body)
	}
}

func TestPlannerWatermark(t *testing.T) {
	cases := []struct {
		name string
		// the watermark when the kick-off arrives, and the one written once
		// the planner holds the kick-off (zero: none).
		first, later streams.Watermark
		minSeq       uint64
		wantStatus   string
		wantTime     int // 1: first stamp, 2: later stamp
	}{
		{"behind, then caught up", streams.Watermark{Seq: 4, Stamp: time.Unix(1000, 0).UTC()}, streams.Watermark{Seq: 5, Stamp: time.Unix(2000, 0).UTC()}, 5, streams.JobRunning, 2},
		{"already there", streams.Watermark{Seq: 9, Stamp: time.Unix(1000, 0).UTC()}, streams.Watermark{}, 5, streams.JobRunning, 1},
		{"never ingested", streams.Watermark{Seq: 4, Stamp: time.Unix(1000, 0).UTC()}, streams.Watermark{}, 5, streams.JobFailed, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			cfg := testConfig()
			cfg.WatermarkTimeout = 2 * time.Second
			if c.later.Seq != 0 {
				cfg.WatermarkTimeout = time.Minute
			}
			runPlanner(t, e, cfg)
			var seq uint64
			insert(t, e, "Patient", "p", 1, time.Unix(500, 0), &seq) // one task: the job stays running
			setWatermark(t, e, c.first)
			if err := e.Jobs.Create(t.Context(), newJob("job1", c.minSeq)); err != nil {
				t.Fatal(err)
			}
			publish(t, e, streams.SubjectJobSubmit("job1"), nil)
			if c.later.Seq != 0 {
				cons, err := e.JS.Consumer(t.Context(), streams.StreamExportJobs, streams.ConsumerPlanner)
				if err != nil {
					t.Fatal(err)
				}
				testenv.Eventually(t, 10*time.Second, "planner holds the kick-off", func() bool {
					info, err := cons.Info(t.Context())
					return err == nil && info.NumAckPending == 1
				})
				if s := getJob(t, e, "job1").Status; s != streams.JobAccepted {
					t.Fatalf("job %s before its changes were ingested", s)
				}
				setWatermark(t, e, c.later)
			}
			testenv.Eventually(t, 30*time.Second, "job "+c.wantStatus, func() bool {
				return getJob(t, e, "job1").Status == c.wantStatus
			})
			job := getJob(t, e, "job1")
			switch c.wantTime {
			case 1, 2:
				want := c.first.Stamp
				if c.wantTime == 2 {
					want = c.later.Stamp
				}
				if !job.TransactionTime.Equal(want) {
					t.Errorf("transactionTime %s, want %s", job.TransactionTime, want)
				}
			default:
				if !job.TransactionTime.IsZero() || !strings.Contains(job.Error, "not ingested") {
					t.Errorf("failed job has transactionTime %s and error %q", job.TransactionTime, job.Error)
				}
			}
		})
	}
}

// TestPlannerWarnsOfAnExportWaitingForIngest: a kick-off whose changes are
// not ingested yet does not wait in silence: the planner warns, while it
// waits, which export waits, for which change, and where ingest stands.
// (In the cluster test an export once waited five minutes for a stalled
// ingester with nothing in any log.)
func TestPlannerWarnsOfAnExportWaitingForIngest(t *testing.T) {
	planner.SetSlowWatermark(t, 200*time.Millisecond)
	e := newEnv(t)
	cfg := testConfig()
	cfg.WatermarkTimeout = 3 * time.Second
	warnings := newLogged("export waits for its changes to be ingested")
	runPlannerLogging(t, e, cfg, slog.New(warnings))

	setWatermark(t, e, streams.Watermark{Seq: 4, Stamp: time.Unix(1000, 0).UTC()})
	if err := e.Jobs.Create(t.Context(), newJob("job1", 7)); err != nil {
		t.Fatal(err)
	}
	publish(t, e, streams.SubjectJobSubmit("job1"), nil)
	testenv.Eventually(t, 10*time.Second, "a warning of the wait", func() bool {
		return len(warnings.records()) > 0
	})
	w := warnings.records()[0]
	if w["level"] != "WARN" || w["job"] != "job1" || w["needs_seq"] != "7" || w["ingested_seq"] != "4" || w["waited"] == "" {
		t.Errorf("warning %v, want job1 waiting for change 7 with ingest at 4", w)
	}
	testenv.Eventually(t, 10*time.Second, "the export to fail when the wait times out", func() bool {
		return getJob(t, e, "job1").Status == streams.JobFailed
	})
}

// TestPlannerLetsGoOfAnExportRemovedWhileItWaits: an export cancelled and
// removed while the planner waits for its changes to be ingested is let go
// at once: no task, no error, no redelivered kick-off. Before, the plan
// failed on the missing record ("nats: key not found"), logged an error
// and was retried (found by bulkbench -soak, with 327 cancellations).
func TestPlannerLetsGoOfAnExportRemovedWhileItWaits(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	cfg.WatermarkTimeout = time.Minute
	runPlanner(t, e, cfg)
	var seq uint64
	insert(t, e, "Patient", "p", 1, time.Unix(500, 0), &seq)
	setWatermark(t, e, streams.Watermark{Seq: 4, Stamp: time.Unix(1000, 0).UTC()})
	if err := e.Jobs.Create(t.Context(), newJob("job1", 5)); err != nil {
		t.Fatal(err)
	}
	publish(t, e, streams.SubjectJobSubmit("job1"), nil)
	cons, err := e.JS.Consumer(t.Context(), streams.StreamExportJobs, streams.ConsumerPlanner)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "planner holds the kick-off", func() bool {
		info, err := cons.Info(t.Context())
		return err == nil && info.NumAckPending == 1
	})
	if err := e.Jobs.Remove(t.Context(), "job1"); err != nil {
		t.Fatal(err)
	}
	setWatermark(t, e, streams.Watermark{Seq: 5, Stamp: time.Unix(2000, 0).UTC()})
	testenv.Eventually(t, 20*time.Second, "the kick-off acked", func() bool {
		info, err := cons.Info(t.Context())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	// A kick-off sent back is delivered again a second later.
	<-time.After(2 * time.Second)
	// The consumer's sequence counts deliveries, redeliveries included.
	info, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 1 {
		t.Errorf("the kick-off of the removed export was delivered %d times, want once", info.Delivered.Consumer)
	}
	if info, err := e.Tasks.Info(t.Context()); err != nil || info.State.Msgs != 0 {
		t.Errorf("tasks published for the removed export: %v %v", info, err)
	}
}

func TestPlannerCancelRemovesEverything(t *testing.T) {
	e := newEnv(t)
	runPlanner(t, e, testConfig())
	ctx := t.Context()
	const id, other = "job1", "job2"
	planned(t, e, id)
	tasks := queuedTasks(t, e, id)
	if len(tasks) < 2 {
		t.Fatalf("%d tasks queued, want several", len(tasks))
	}
	// One task done with a file written, another job untouched.
	putResult(t, e, streams.TaskResult{JobID: id, TaskID: tasks[0].TaskID, Attempt: 1,
		Files: []streams.File{{Name: "Patient-a.ndjson", Type: "Patient", Count: 1}}})
	for _, name := range []string{streams.ObjectName(id, "Patient-a.ndjson"), streams.ObjectName(id, "Observation-b.ndjson"), streams.ObjectName(other, "Patient-a.ndjson")} {
		if _, err := e.Files.PutString(ctx, name, `{"resourceType":"Patient","id":"x"}`+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	otherJob := newJob(other, 0)
	otherJob.Status = streams.JobComplete
	if err := e.Jobs.Create(ctx, otherJob); err != nil {
		t.Fatal(err)
	}
	putResult(t, e, streams.TaskResult{JobID: other, TaskID: "00000", Attempt: 1})

	publish(t, e, streams.SubjectJobCancel(id), nil)
	testenv.Eventually(t, 30*time.Second, "job record removed", func() bool {
		_, _, err := e.Jobs.Get(ctx, id)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	if n := streamstest.SubjectCount(t, e.Tasks, streams.SubjectTasks(id)); n != 0 {
		t.Errorf("%d tasks of the cancelled job still queued", n)
	}
	if keys := taskResultKeys(t, e, id); len(keys) != 0 {
		t.Errorf("task results left: %v", keys)
	}
	if names := e.ObjectNames(t, id+"/"); len(names) != 0 {
		t.Errorf("files left: %v", names)
	}
	// The other job keeps everything.
	if names := e.ObjectNames(t, other+"/"); len(names) != 1 {
		t.Errorf("other job's files %v, want its one file", names)
	}
	if keys := taskResultKeys(t, e, other); len(keys) != 1 {
		t.Errorf("other job's results %v, want one", keys)
	}
	if j := getJob(t, e, other); j.Status != streams.JobComplete {
		t.Errorf("other job is %s", j.Status)
	}
	// A late kick-off or completion of the removed job recreates nothing.
	publish(t, e, streams.SubjectJobSubmit(id), nil)
	publish(t, e, streams.SubjectJobDone(id), nil)
	testenv.Eventually(t, 30*time.Second, "late messages handled", func() bool {
		info, err := mustStream(t, e, streams.StreamExportJobs).Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	if _, _, err := e.Jobs.Get(ctx, id); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("removed job came back: %v", err)
	}
	if n := streamstest.SubjectCount(t, e.Tasks, streams.SubjectTasks(id)); n != 0 {
		t.Errorf("%d tasks queued for a removed job", n)
	}
}

func mustStream(t testing.TB, e env, name string) jetstream.Stream {
	t.Helper()
	s, err := e.JS.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A planner that dies after publishing a job's tasks but before recording
// that it did leaves the job running with TasksPublished false. Writers
// finish the tasks meanwhile and announce them; the kick-off is then
// redelivered and the plan is published again (deduplicated). The job must
// still complete.
func TestPlannerCompletesJobWhoseTasksFinishedBeforeThePlanWasRecorded(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	ctx := t.Context()
	const id = "job1"
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var seq uint64
	insert(t, e, "Patient", "p", 250, base, &seq)
	stamp := base.Add(time.Hour)
	setWatermark(t, e, streams.Watermark{Seq: 0, Stamp: stamp})

	// The dead planner's work: the plan recorded and its tasks published.
	job := newJob(id, 0)
	counts, err := e.store.BucketCounts(ctx, nil, 0, chstore.Micros(stamp))
	if err != nil {
		t.Fatal(err)
	}
	tasks := planner.Split(job, stamp, counts, cfg)
	if len(tasks) < 2 {
		t.Fatalf("plan of %d tasks, want several", len(tasks))
	}
	job.Status, job.TransactionTime, job.TasksTotal = streams.JobRunning, stamp, len(tasks)
	if err := e.Jobs.Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		m := nats.NewMsg(streams.SubjectTasks(id))
		m.Data = streams.Encode(task)
		m.Header.Set(jetstream.MsgIDHeader, id+"."+task.TaskID)
		if _, err := e.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	runPlanner(t, e, cfg)

	// Writers finish every task and announce it.
	var lastDone uint64
	for _, task := range tasks {
		putResult(t, e, streams.TaskResult{JobID: id, TaskID: task.TaskID, Attempt: 1,
			Files: []streams.File{{Name: task.TaskID + ".ndjson", Type: task.Type, Count: 1}}})
		ack, err := e.JS.Publish(ctx, streams.SubjectJobDone(id), []byte(task.TaskID))
		if err != nil {
			t.Fatal(err)
		}
		lastDone = ack.Sequence
	}
	cons, err := e.JS.Consumer(ctx, streams.StreamExportJobs, streams.ConsumerPlanner)
	if err != nil {
		t.Fatal(err)
	}
	// Let the planner handle every announcement before the kick-off returns
	// (acked, or refused and waiting for redelivery).
	testenv.Eventually(t, 30*time.Second, "announcements handled", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.Delivered.Stream >= lastDone && (info.NumAckPending == 0 || info.NumRedelivered > 0)
	})

	// The kick-off of the dead planner is redelivered.
	publish(t, e, streams.SubjectJobSubmit(id), nil)
	testenv.Eventually(t, 30*time.Second, "job complete", func() bool {
		return getJob(t, e, id).Status == streams.JobComplete
	})
	if j := getJob(t, e, id); j.TasksDone != len(tasks) {
		t.Errorf("complete with %d of %d tasks done", j.TasksDone, len(tasks))
	}
	if n := streamstest.SubjectCount(t, e.Tasks, streams.SubjectTasks(id)); n != uint64(len(tasks)) {
		t.Errorf("%d tasks queued after the plan was published again, want %d (deduplicated)", n, len(tasks))
	}
}

// logged records what a planner logs with one message: each record's
// attributes, and its level as "level".
type logged struct {
	msg string
	mu  *sync.Mutex
	got *[]map[string]string
}

func newLogged(msg string) logged {
	return logged{msg: msg, mu: &sync.Mutex{}, got: &[]map[string]string{}}
}

// records are the records logged so far.
func (h logged) records() []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.got)
}

func (h logged) Enabled(context.Context, slog.Level) bool { return true }
func (h logged) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h logged) WithGroup(string) slog.Handler            { return h }
func (h logged) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.msg {
		return nil
	}
	attrs := map[string]string{"level": r.Level.String()}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	*h.got = append(*h.got, attrs)
	h.mu.Unlock()
	return nil
}

// TestPlannerCompletesAnExportOnce: when the "done" messages of every task
// are handled at once, the export completes once and is reported once.
func TestPlannerCompletesAnExportOnce(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	const id, tasks = "job1", 24
	job := newJob(id, 0)
	job.Status, job.TransactionTime, job.TasksTotal, job.TasksPublished = streams.JobRunning, time.Now().UTC(), tasks, true
	if err := e.Jobs.Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	// Every result is in before any announcement is handled.
	for i := range tasks {
		task := fmt.Sprintf("%05d", i)
		putResult(t, e, streams.TaskResult{JobID: id, TaskID: task, Attempt: 1,
			Files: []streams.File{{Name: task + ".ndjson", Type: "Patient", Count: 1}}})
		publish(t, e, streams.SubjectJobDone(id), []byte(task))
	}
	completions := newLogged("export complete")
	p, err := planner.New(testConfig(), planner.Deps{
		JS: e.JS, Store: e.store, Log: slog.New(completions),
		Tracer: tracenoop.NewTracerProvider(), Meter: metricnoop.NewMeterProvider(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	cons, err := e.JS.Consumer(ctx, streams.StreamExportJobs, streams.ConsumerPlanner)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "every announcement handled", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if j := getJob(t, e, id); j.Status != streams.JobComplete || j.TasksDone != tasks {
		t.Fatalf("job %s with %d of %d tasks done, want complete", j.Status, j.TasksDone, tasks)
	}
	if n := len(completions.records()); n != 1 {
		t.Errorf("the export was reported complete %d times, want once", n)
	}
	// Concurrent assemblies never rewrite one object (a status request
	// may be reading it): the losers delete their own manifests.
	objects, err := e.Files.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range objects {
		names = append(names, o.Name)
	}
	if j := getJob(t, e, id); len(names) != 1 || names[0] != j.Manifest {
		t.Errorf("objects %v, want only the manifest the job names, %s", names, j.Manifest)
	}
	if _, err := e.Files.GetBytes(ctx, names[0]); err != nil {
		t.Errorf("read the manifest: %v", err)
	}
}
