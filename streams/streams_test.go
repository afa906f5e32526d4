package streams_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// testConfig is the default configuration kept in memory.
func testConfig() streams.Config {
	c := streams.DefaultConfig()
	c.Memory = true
	return c
}

// ensured starts a JetStream server with every definition in place.
func ensured(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js := testenv.JetStream(t, testenv.NATS(t))
	if err := streams.Ensure(t.Context(), js, testConfig()); err != nil {
		t.Fatalf("ensure: %v", err)
	}
	return nc, js
}

// subjectCount is how many messages of stream are on subject.
func subjectCount(t testing.TB, js jetstream.JetStream, stream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatalf("open stream %s: %v", stream, err)
	}
	info, err := s.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	return info.State.Subjects[subject]
}

func TestStreamsEnsureCreatesEverythingAndIsIdempotent(t *testing.T) {
	_, js := testenv.JetStream(t, testenv.NATS(t))
	ctx := t.Context()
	for i := range 2 {
		if err := streams.Ensure(ctx, js, testConfig()); err != nil {
			t.Fatalf("ensure #%d: %v", i+1, err)
		}
	}

	wantStreams := []struct {
		name      string
		retention jetstream.RetentionPolicy
		subjects  []string
	}{
		{streams.StreamChanges, jetstream.LimitsPolicy, []string{"changes.>"}},
		{streams.StreamExportJobs, jetstream.WorkQueuePolicy, []string{"export.jobs.>"}},
		{streams.StreamExportTasks, jetstream.WorkQueuePolicy, []string{"export.tasks.>"}},
	}
	for _, w := range wantStreams {
		t.Run("stream "+w.name, func(t *testing.T) {
			s, err := js.Stream(ctx, w.name)
			if err != nil {
				t.Fatalf("stream missing after ensure: %v", err)
			}
			cfg := s.CachedInfo().Config
			if cfg.Retention != w.retention {
				t.Errorf("retention %v, want %v", cfg.Retention, w.retention)
			}
			if fmt.Sprint(cfg.Subjects) != fmt.Sprint(w.subjects) {
				t.Errorf("subjects %v, want %v", cfg.Subjects, w.subjects)
			}
		})
	}
	for _, c := range []struct{ stream, durable string }{
		{streams.StreamExportJobs, streams.ConsumerPlanner},
		{streams.StreamExportTasks, streams.ConsumerWriters},
	} {
		if _, err := js.Consumer(ctx, c.stream, c.durable); err != nil {
			t.Errorf("consumer %s on %s missing: %v", c.durable, c.stream, err)
		}
	}
	for _, b := range []string{streams.BucketJobs, streams.BucketIngest, streams.BucketAuthClients, streams.BucketAuthKeys, streams.BucketAuthJTI} {
		if _, err := js.KeyValue(ctx, b); err != nil {
			t.Errorf("key-value bucket %s missing: %v", b, err)
		}
	}
	// A used assertion id must outlive every assertion (5 minutes plus skew).
	if kv, err := js.KeyValue(ctx, streams.BucketAuthJTI); err == nil {
		if st, err := kv.Status(ctx); err != nil || st.TTL() < 7*time.Minute {
			t.Errorf("bucket %s keeps entries %v (%v), want at least 7 minutes", streams.BucketAuthJTI, st.TTL(), err)
		}
	}
	if _, err := js.ObjectStore(ctx, streams.ObjectFiles); err != nil {
		t.Errorf("object store %s missing: %v", streams.ObjectFiles, err)
	}
	// Exactly these streams: the buckets are streams too (KV_, OBJ_).
	names := map[string]bool{}
	for n := range js.StreamNames(ctx).Name() {
		names[n] = true
	}
	for _, want := range []string{streams.StreamChanges, streams.StreamExportJobs, streams.StreamExportTasks,
		"KV_" + streams.BucketJobs, "KV_" + streams.BucketIngest, "OBJ_" + streams.ObjectFiles,
		"KV_" + streams.BucketAuthClients, "KV_" + streams.BucketAuthKeys, "KV_" + streams.BucketAuthJTI} {
		if !names[want] {
			t.Errorf("stream %s not present; have %v", want, names)
		}
	}
	if len(names) != 9 {
		t.Errorf("ensure twice left %d streams, want 9: %v", len(names), names)
	}
}

func TestStreamsEnsureUpdatesConsumerSettings(t *testing.T) {
	_, js := testenv.JetStream(t, testenv.NATS(t))
	ctx := t.Context()
	cases := []struct {
		ackWait    time.Duration
		maxDeliver int
	}{
		{60 * time.Second, 5},
		{7 * time.Second, 3},
	}
	for _, c := range cases {
		cfg := testConfig()
		cfg.TaskAckWait, cfg.TaskMaxDeliver = c.ackWait, c.maxDeliver
		if err := streams.Ensure(ctx, js, cfg); err != nil {
			t.Fatalf("ensure with ack wait %s: %v", c.ackWait, err)
		}
		cons, err := js.Consumer(ctx, streams.StreamExportTasks, streams.ConsumerWriters)
		if err != nil {
			t.Fatal(err)
		}
		got := cons.CachedInfo().Config
		if got.AckWait != c.ackWait || got.MaxDeliver != c.maxDeliver {
			t.Errorf("writers consumer ack wait %s max deliver %d, want %s and %d", got.AckWait, got.MaxDeliver, c.ackWait, c.maxDeliver)
		}
	}
}

func TestStreamsSubjectsLandInTheirStream(t *testing.T) {
	_, js := ensured(t)
	cases := []struct {
		name    string
		subject string
		stream  string
	}{
		{"change put", streams.SubjectChange(streams.OpPut, "Patient", "p1"), streams.StreamChanges},
		{"change delete", streams.SubjectChange(streams.OpDelete, "Observation", "o1"), streams.StreamChanges},
		{"transaction", streams.SubjectTransaction("p1"), streams.StreamChanges},
		{"mark", streams.SubjectMark(), streams.StreamChanges},
		{"job submit", streams.SubjectJobSubmit("job1"), streams.StreamExportJobs},
		{"job done", streams.SubjectJobDone("job1"), streams.StreamExportJobs},
		{"job cancel", streams.SubjectJobCancel("job1"), streams.StreamExportJobs},
		{"tasks", streams.SubjectTasks("job1"), streams.StreamExportTasks},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if seen[c.subject] {
				t.Fatalf("subject %s is shared with another kind of message", c.subject)
			}
			seen[c.subject] = true
			ack, err := js.Publish(t.Context(), c.subject, []byte("x"))
			if err != nil {
				t.Fatalf("publish on %s: %v", c.subject, err)
			}
			if ack.Stream != c.stream {
				t.Errorf("%s stored in %s, want %s", c.subject, ack.Stream, c.stream)
			}
			if n := subjectCount(t, js, c.stream, c.subject); n != 1 {
				t.Errorf("%s holds %d messages on %s, want 1", c.stream, n, c.subject)
			}
		})
	}
	p := streams.PartitionOf("p1")
	if got, want := streams.SubjectChange(streams.OpDelete, "Patient", "p1"), fmt.Sprintf("changes.%d.delete.Patient", p); got != want {
		t.Errorf("delete subject %q, want %q", got, want)
	}
	if got, want := streams.SubjectChange("anything-else", "Patient", "p1"), fmt.Sprintf("changes.%d.put.Patient", p); got != want {
		t.Errorf("non-delete op subject %q, want the put subject %q", got, want)
	}
}

func TestStreamsKeysAndNames(t *testing.T) {
	cases := []struct{ got, want string }{
		{streams.KeyJob("abc"), "job.abc"},
		{streams.KeyTask("abc", "00001"), "task.abc.00001"},
		{streams.KeyTasksOfJob("abc"), "task.abc.*"},
		{streams.ObjectName("abc", "Patient-1.ndjson"), "abc/Patient-1.ndjson"},
		{streams.AttachmentBase("https://fhir.example/r4", "abc"), "https://fhir.example/r4/files/abc/attachments/"},
		{streams.AttachmentBase("https://fhir.example/r4/", "abc"), "https://fhir.example/r4/files/abc/attachments/"},
		{streams.AttachmentBase("", "abc"), ""},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	valid := []struct {
		name string
		fn   func(string) bool
		in   string
		want bool
	}{
		{"type", streams.ValidType, "Patient", true},
		{"type lower", streams.ValidType, "patient", false},
		{"type with dot", streams.ValidType, "Pat.ient", false},
		{"type wildcard", streams.ValidType, "Patient>", false},
		{"id", streams.ValidID, "a-1.B", true},
		{"id with star", streams.ValidID, "a*", false},
		{"id too long", streams.ValidID, strings.Repeat("x", 65), false},
		{"job", streams.ValidJobID, "AbC123", true},
		{"job with dot", streams.ValidJobID, "a.b", false},
		{"job empty", streams.ValidJobID, "", false},
	}
	for _, v := range valid {
		if got := v.fn(v.in); got != v.want {
			t.Errorf("%s %q valid = %v, want %v", v.name, v.in, got, v.want)
		}
	}
}

func TestStreamsChangePublisherStoresChangesWithHeaders(t *testing.T) {
	_, js := ensured(t)
	ctx := t.Context()
	p := streams.NewChangePublisher(js)
	p.MaxPending = 2 // Put waits for acks on the way.
	type change struct {
		op, typ, id string
		body        string
	}
	want := []change{
		{streams.OpPut, "Patient", "p1", `{"resourceType":"Patient","id":"p1"}`},
		{streams.OpPut, "Observation", "o1", `{"resourceType":"Observation","id":"o1"}`},
		{streams.OpDelete, "Patient", "p1", ""},
		{streams.OpPut, "Patient", "p2", `{"resourceType":"Patient","id":"p2"}`},
		{streams.OpPut, "Patient", "p3", `{"resourceType":"Patient","id":"p3"}`},
	}
	for _, c := range want {
		var err error
		if c.op == streams.OpDelete {
			err = p.Delete(ctx, c.typ, c.id)
		} else {
			err = p.Put(ctx, c.typ, c.id, []byte(c.body))
		}
		if err != nil {
			t.Fatalf("%s %s/%s: %v", c.op, c.typ, c.id, err)
		}
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("wait: %v", err)
	}
	last, err := streams.LastChangeSeq(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if last != uint64(len(want)) {
		t.Fatalf("last change seq %d after wait, want %d", last, len(want))
	}
	s, err := js.Stream(ctx, streams.StreamChanges)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range want {
		m, err := s.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatalf("read change %d: %v", i+1, err)
		}
		if m.Subject != streams.SubjectChange(c.op, c.typ, c.id) {
			t.Errorf("change %d subject %q, want %q", i+1, m.Subject, streams.SubjectChange(c.op, c.typ, c.id))
		}
		got := change{m.Header.Get(streams.HeaderOp), m.Header.Get(streams.HeaderType), m.Header.Get(streams.HeaderID), string(m.Data)}
		if got != c {
			t.Errorf("change %d = %+v, want %+v", i+1, got, c)
		}
	}
	// Waiting again with nothing pending returns at once.
	if err := p.Wait(ctx); err != nil {
		t.Errorf("second wait: %v", err)
	}
}

func TestStreamsChangePublisherWaitReportsUnstoredChange(t *testing.T) {
	// No Ensure: nothing captures changes.>, so no change can be stored.
	_, js := testenv.JetStream(t, testenv.NATS(t))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	p := streams.NewChangePublisher(js)
	if err := p.Put(ctx, "Patient", "p1", []byte(`{}`)); err != nil {
		t.Logf("put refused at once: %v", err) // also a report of the failure
		return
	}
	if err := p.Wait(ctx); err == nil {
		t.Fatal("wait returned nil for a change no stream stored")
	} else if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait hung until the deadline instead of reporting the failure: %v", err)
	}
}

func TestStreamsLoadWatermark(t *testing.T) {
	_, js := ensured(t)
	ctx := t.Context()
	wm, rev, err := streams.LoadWatermark(ctx, js)
	if err != nil {
		t.Fatalf("load from empty bucket: %v", err)
	}
	if wm.Seq != 0 || !wm.Stamp.IsZero() || rev != 0 {
		t.Fatalf("empty bucket watermark = %+v rev %d, want zero", wm, rev)
	}
	kv, err := js.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	stamp := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	put, err := kv.Put(ctx, streams.KeyWatermark, streams.Encode(streams.Watermark{Seq: 42, Stamp: stamp}))
	if err != nil {
		t.Fatal(err)
	}
	wm, rev, err = streams.LoadWatermark(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if wm.Seq != 42 || !wm.Stamp.Equal(stamp) || rev != put {
		t.Errorf("watermark = %+v rev %d, want seq 42 stamp %s rev %d", wm, rev, stamp, put)
	}
	if _, err := kv.Put(ctx, streams.KeyWatermark, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := streams.LoadWatermark(ctx, js); err == nil {
		t.Error("a corrupt watermark loaded without error")
	}
}

func TestStreamsLoadWatermarkWithoutBucketFails(t *testing.T) {
	_, js := testenv.JetStream(t, testenv.NATS(t))
	if _, _, err := streams.LoadWatermark(t.Context(), js); err == nil {
		t.Error("LoadWatermark succeeded without the ingest bucket")
	}
	if _, err := streams.LastChangeSeq(t.Context(), js); err == nil {
		t.Error("LastChangeSeq succeeded without the CHANGES stream")
	}
}

func TestStreamsJobsCreateGetUpdate(t *testing.T) {
	_, js := ensured(t)
	ctx := t.Context()
	jobs, err := streams.OpenJobs(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "j1", Level: streams.LevelSystem, Types: []string{"Patient"}}, Status: streams.JobAccepted}
	if err := jobs.Create(ctx, job); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := jobs.Create(ctx, job); err == nil {
		t.Error("creating the same job twice succeeded")
	}
	got, rev, err := jobs.Get(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if got.JobID != "j1" || got.Status != streams.JobAccepted || fmt.Sprint(got.Types) != "[Patient]" {
		t.Errorf("got %+v", got)
	}
	if _, _, err := jobs.Get(ctx, "nope"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("get of missing job: %v, want ErrKeyNotFound", err)
	}
	if _, err := jobs.Update(ctx, "nope", func(*streams.Job) bool { return true }); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("update of missing job: %v, want ErrKeyNotFound", err)
	}
	// A change that declines leaves the record untouched.
	if _, err := jobs.Update(ctx, "j1", func(j *streams.Job) bool { j.Status = streams.JobFailed; return false }); err != nil {
		t.Fatal(err)
	}
	after, rev2, err := jobs.Get(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if rev2 != rev || after.Status != streams.JobAccepted {
		t.Errorf("declined update stored status %q at revision %d (was %d)", after.Status, rev2, rev)
	}
	// An accepted change is stored.
	if _, err := jobs.Update(ctx, "j1", func(j *streams.Job) bool { j.Status = streams.JobRunning; return true }); err != nil {
		t.Fatal(err)
	}
	if after, rev3, _ := jobs.Get(ctx, "j1"); after.Status != streams.JobRunning || rev3 <= rev {
		t.Errorf("update stored status %q at revision %d (was %d)", after.Status, rev3, rev)
	}
}

func TestStreamsJobsUpdateRetriesConflicts(t *testing.T) {
	_, js := ensured(t)
	ctx := t.Context()
	jobs, err := streams.OpenJobs(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if err := jobs.Create(ctx, streams.Job{ExportRequest: streams.ExportRequest{JobID: "j1"}, Status: streams.JobRunning}); err != nil {
		t.Fatal(err)
	}
	const workers, each = 2, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	start := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range each {
				if _, err := jobs.Update(ctx, "j1", func(j *streams.Job) bool { j.TasksDone++; return true }); err != nil {
					errs <- err
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("update: %v", err)
	}
	job, _, err := jobs.Get(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if job.TasksDone != workers*each {
		t.Errorf("TasksDone = %d after %d concurrent increments, want %d", job.TasksDone, workers*each, workers*each)
	}
}

func TestStreamsEncodeDecodeRoundTrip(t *testing.T) {
	stamp := time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)
	in := streams.Task{JobID: "j", TaskID: "00003", Type: "Patient", Level: streams.LevelGroup, GroupID: "g", PatientList: true, EmitAs: "DocumentReference",
		HashLo: 1 << 20, HashHi: 1 << 32, Until: stamp, MaxFileResources: 10, MaxFileBytes: 1 << 20}
	var out streams.Task
	if err := streams.Decode(streams.Encode(in), &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, in) {
		t.Errorf("round trip %+v, want %+v", out, in)
	}
	if !out.Since.IsZero() {
		t.Errorf("zero Since came back as %s", out.Since)
	}
	if err := streams.Decode([]byte("{"), &out); err == nil {
		t.Error("decode of broken JSON succeeded")
	}
}

func TestStreamsTraceContextCrossesHeaders(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	h := nats.Header{}
	streams.InjectTrace(ctx, h)
	var parent string
	for k, v := range h {
		if strings.EqualFold(k, "traceparent") && len(v) == 1 {
			parent = v[0]
		}
	}
	if want := "00-" + tid.String() + "-" + sid.String() + "-01"; parent != want {
		t.Fatalf("traceparent header %q, want %q (headers %v)", parent, want, h)
	}
	got := trace.SpanContextFromContext(streams.ExtractTrace(context.Background(), h))
	if got.TraceID() != tid || got.SpanID() != sid || !got.IsRemote() {
		t.Errorf("extracted %v, want trace %s span %s (remote)", got, tid, sid)
	}
}

func TestStreamsParseJobSubject(t *testing.T) {
	for _, c := range []struct {
		subject, kind, job string
		ok                 bool
	}{
		{streams.SubjectJobSubmit("abc123"), streams.JobSubmit, "abc123", true},
		{streams.SubjectJobDone("abc123"), streams.JobDone, "abc123", true},
		{streams.SubjectJobCancel("abc123"), streams.JobCancel, "abc123", true},
		{"export.jobs.explode.abc123", "", "", false},
		{"export.jobs.done", "", "", false},
		{"export.jobs.done.a.b", "", "", false},
		{streams.SubjectTasks("abc123"), "", "", false},
	} {
		kind, job, ok := streams.ParseJobSubject(c.subject)
		if kind != c.kind || job != c.job || ok != c.ok {
			t.Errorf("%s: %q %q %v, want %q %q %v", c.subject, kind, job, ok, c.kind, c.job, c.ok)
		}
	}
}

func TestStreamsFileKindsAndNames(t *testing.T) {
	out := streams.PartName(streams.KindOutput, "Patient", "00003", 2, "tok", 1)
	del := streams.PartName(streams.KindDeleted, "Patient", "00003", 2, "tok", 1)
	if out != "Patient-00003-a2-tok-001.ndjson" || del != "deleted-Patient-00003-a2-tok-001.ndjson" {
		t.Errorf("part names %q and %q", out, del)
	}
	// Results recorded before files carried a kind are told apart by name.
	for _, c := range []struct {
		f    streams.File
		want string
	}{
		{streams.File{Name: out, Type: "Patient"}, streams.KindOutput},
		{streams.File{Name: del, Type: "Bundle"}, streams.KindDeleted},
		{streams.File{Name: "x.ndjson", Type: "OperationOutcome", Kind: streams.KindError}, streams.KindError},
	} {
		if got := c.f.FileKind(); got != c.want {
			t.Errorf("%+v: kind %q, want %q", c.f, got, c.want)
		}
	}
	idx := streams.AttachmentIndexName("00003", 2, "tok")
	if !streams.IsAttachmentIndex(idx) || streams.IsAttachmentIndex("../"+idx) || streams.IsAttachmentIndex(out) {
		t.Errorf("attachment index name %q not recognised as the only index", idx)
	}
}
