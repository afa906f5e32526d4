package ingester_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

type env struct {
	js    jetstream.JetStream
	store *chstore.Store
	pub   *streams.ChangePublisher
}

func newEnv(t testing.TB) env {
	t.Helper()
	js := streamstest.New(t).JS
	return env{js: js, store: testenv.Store(t), pub: streams.NewChangePublisher(js)}
}

// start runs an ingester; the returned stop cancels it and waits for it.
// The test's end stops it too.
func start(t testing.TB, e env, cfg ingester.Config) (stop func()) {
	t.Helper()
	in, err := ingester.New(cfg, ingester.Deps{
		JS: e.js, Store: e.store, Log: testenv.Logger(t),
		Tracer: tracenoop.NewTracerProvider(), Meter: metricnoop.NewMeterProvider(),
	})
	if err != nil {
		t.Fatalf("new ingester: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ingester stopped with: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("ingester did not stop within 30s of cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

func put(t testing.TB, e env, body string) {
	t.Helper()
	h, err := fhir.Inspect([]byte(body), true)
	if err != nil {
		t.Fatalf("test resource %s: %v", body, err)
	}
	if err := e.pub.Put(t.Context(), h.ResourceType, h.ID, []byte(body)); err != nil {
		t.Fatal(err)
	}
}

func flush(t testing.TB, e env) uint64 {
	t.Helper()
	if err := e.pub.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	last, err := streams.LastChangeSeq(t.Context(), e.js)
	if err != nil {
		t.Fatal(err)
	}
	return last
}

// caughtUp waits until the watermark covers seq and returns it.
func caughtUp(t testing.TB, e env, seq uint64, timeout time.Duration) streams.Watermark {
	t.Helper()
	var wm streams.Watermark
	testenv.Eventually(t, timeout, fmt.Sprintf("watermark at seq %d", seq), func() bool {
		w, _, err := streams.LoadWatermark(t.Context(), e.js)
		if err != nil {
			t.Fatal(err)
		}
		wm = w
		return w.Seq >= seq
	})
	if wm.Seq != seq {
		t.Fatalf("watermark seq %d, want %d", wm.Seq, seq)
	}
	return wm
}

func all(typ string, until time.Time) chstore.Range {
	return chstore.Range{Type: typ, HashLo: 0, HashHi: chstore.HashSpace, Until: chstore.Micros(until)}
}

// latest reads every live resource of typ at until, failing on a duplicate.
func latest(t testing.TB, e env, typ string, until time.Time) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	err := e.store.ReadLatest(t.Context(), all(typ, until), func(id string, body []byte) error {
		if _, dup := out[id]; dup {
			return fmt.Errorf("%s/%s read twice", typ, id)
		}
		var r map[string]any
		if err := json.Unmarshal(body, &r); err != nil {
			return fmt.Errorf("%s/%s body %s: %w", typ, id, body, err)
		}
		out[id] = r
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func deleted(t testing.TB, e env, typ string, until time.Time) []string {
	t.Helper()
	var ids []string
	if err := e.store.ReadDeleted(t.Context(), all(typ, until), func(id string, _ []byte) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

func meta(t testing.TB, r map[string]any) (version string, lastUpdated time.Time) {
	t.Helper()
	m, ok := r["meta"].(map[string]any)
	if !ok {
		t.Fatalf("resource %v has no meta", r)
	}
	version, _ = m["versionId"].(string)
	s, _ := m["lastUpdated"].(string)
	lu, err := fhir.ParseInstant(s)
	if err != nil {
		t.Fatalf("meta.lastUpdated of %v: %v", r["id"], err)
	}
	return version, lu
}

type storedRow struct {
	typ, id     string
	seq         uint64
	lastUpdated uint64
	deleted     uint8
	patients    []string
}

// rows reads every stored version in seq order, duplicates included.
func rows(t testing.TB, e env) []storedRow {
	t.Helper()
	rs, err := e.store.Conn().Query(t.Context(), "SELECT type, id, seq, last_updated, deleted, patients FROM "+e.store.TableName()+" ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []storedRow
	for rs.Next() {
		var r storedRow
		if err := rs.Scan(&r.typ, &r.id, &r.seq, &r.lastUpdated, &r.deleted, &r.patients); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestIngesterStampsAndStoresChanges(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	start(t, e, ingester.DefaultConfig())

	put(t, e, `{"resourceType":"Patient","id":"p1","name":[{"family":"First"}]}`)
	put(t, e, `{"resourceType":"Patient","id":"p2"}`)
	put(t, e, `{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"}}`)
	put(t, e, `{"resourceType":"Patient","id":"p1","name":[{"family":"Second"}],"meta":{"versionId":"77","lastUpdated":"2000-01-01T00:00:00Z","source":"#lab"}}`)
	if err := e.pub.Delete(ctx, "Patient", "p2"); err != nil {
		t.Fatal(err)
	}
	invalidSeq := flush(t, e) + 1
	bad := nats.NewMsg(streams.SubjectChange(streams.OpPut, "Patient", "p9"))
	bad.Header.Set(streams.HeaderOp, streams.OpPut)
	bad.Header.Set(streams.HeaderType, "Patient")
	bad.Header.Set(streams.HeaderID, "p9")
	bad.Data = []byte("this is not JSON")
	if ack, err := e.js.PublishMsg(ctx, bad); err != nil || ack.Sequence != invalidSeq {
		t.Fatalf("publish invalid change: seq %v, %v", ack, err)
	}
	put(t, e, `{"resourceType":"Patient","id":"p3"}`)
	if err := e.pub.Delete(ctx, "NotAType", "x"); err != nil {
		t.Fatal(err)
	}
	// A put whose headers name another resource than its body.
	mismatch := nats.NewMsg(streams.SubjectChange(streams.OpPut, "Patient", "p8"))
	mismatch.Header.Set(streams.HeaderOp, streams.OpPut)
	mismatch.Header.Set(streams.HeaderType, "Patient")
	mismatch.Header.Set(streams.HeaderID, "p8")
	mismatch.Data = []byte(`{"resourceType":"Patient","id":"p7"}`)
	if _, err := e.js.PublishMsg(ctx, mismatch); err != nil {
		t.Fatal(err)
	}
	last := flush(t, e)

	wm := caughtUp(t, e, last, 30*time.Second)
	// Change i's sequence and acceptance time, from the stream itself.
	changes, err := e.js.Stream(ctx, streams.StreamChanges)
	if err != nil {
		t.Fatal(err)
	}
	accepted := map[uint64]time.Time{}
	latestSeq := map[string]uint64{}
	for seq := uint64(1); seq <= last; seq++ {
		m, err := changes.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		accepted[seq] = m.Time
		if m.Header.Get(streams.HeaderOp) == streams.OpPut && seq != invalidSeq {
			latestSeq[m.Header.Get(streams.HeaderType)+"/"+m.Header.Get(streams.HeaderID)] = seq
		}
	}

	patients := latest(t, e, "Patient", wm.Stamp)
	observations := latest(t, e, "Observation", wm.Stamp)
	if len(patients) != 2 || patients["p1"] == nil || patients["p3"] == nil {
		t.Fatalf("live Patients %v, want p1 and p3", keys(patients))
	}
	if len(observations) != 1 || observations["o1"] == nil {
		t.Fatalf("live Observations %v, want o1", keys(observations))
	}
	for _, c := range []struct {
		key string
		r   map[string]any
	}{{"Patient/p1", patients["p1"]}, {"Patient/p3", patients["p3"]}, {"Observation/o1", observations["o1"]}} {
		version, lu := meta(t, c.r)
		seq := latestSeq[c.key]
		if version != strconv.FormatUint(seq, 10) {
			t.Errorf("%s meta.versionId %q, want its stream sequence %d", c.key, version, seq)
		}
		if lu.After(wm.Stamp) {
			t.Errorf("%s meta.lastUpdated %s after the watermark stamp %s", c.key, lu, wm.Stamp)
		}
		if lu.Before(accepted[seq].Truncate(time.Microsecond)) {
			t.Errorf("%s meta.lastUpdated %s before the stream accepted it at %s", c.key, lu, accepted[seq])
		}
	}
	p1 := patients["p1"]
	if name := fmt.Sprint(p1["name"]); name != "[map[family:Second]]" {
		t.Errorf("p1 name %s, want the update's", name)
	}
	if m := p1["meta"].(map[string]any); m["source"] != "#lab" || m["versionId"] == "77" {
		t.Errorf("p1 meta %v: want the server's versionId and the client's source kept", m)
	}
	if got := deleted(t, e, "Patient", wm.Stamp); !slices.Equal(got, []string{"p2"}) {
		t.Errorf("deleted Patients %v, want [p2]", got)
	}

	stored := rows(t, e)
	var seqs []uint64
	for i, r := range stored {
		seqs = append(seqs, r.seq)
		if r.lastUpdated > chstore.Micros(wm.Stamp) {
			t.Errorf("seq %d stamped %d, after the watermark %d", r.seq, r.lastUpdated, chstore.Micros(wm.Stamp))
		}
		if i > 0 && r.lastUpdated <= stored[i-1].lastUpdated {
			t.Errorf("seq %d stamped %d, not after seq %d stamped %d", r.seq, r.lastUpdated, stored[i-1].seq, stored[i-1].lastUpdated)
		}
		if r.id == "o1" && !slices.Equal(r.patients, []string{"p1"}) {
			t.Errorf("o1 is in the compartments of %v, want [p1]", r.patients)
		}
		if r.id == "p1" && !slices.Equal(r.patients, []string{"p1"}) {
			t.Errorf("p1 is in the compartments of %v, want [p1]", r.patients)
		}
	}
	// The invalid put, the delete of no resource type and the put whose
	// headers disagree with its body are skipped.
	if want := []uint64{1, 2, 3, 4, 5, invalidSeq + 1}; !slices.Equal(seqs, want) {
		t.Errorf("stored seqs %v, want %v (invalid changes skipped)", seqs, want)
	}
	if stored[4].deleted != 1 || stored[4].id != "p2" {
		t.Errorf("seq 5 stored as %+v, want the delete of p2", stored[4])
	}

	// A mark stores nothing, and the watermark passes it with a stamp at
	// or after the moment it was published.
	before := time.Now().UTC().Truncate(time.Microsecond)
	mark, err := streams.PublishMark(ctx, e.js)
	if err != nil {
		t.Fatal(err)
	}
	marked, err := streams.AwaitWatermark(ctx, e.js, mark)
	if err != nil {
		t.Fatal(err)
	}
	if marked.Seq != mark || marked.Stamp.Before(before) {
		t.Errorf("watermark %d at %s after the mark %d published at %s", marked.Seq, marked.Stamp, mark, before)
	}
	if n := len(rows(t, e)); n != len(stored) {
		t.Errorf("%d versions stored after the mark, want %d", n, len(stored))
	}
}

func keys(m map[string]map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestIngesterBatches(t *testing.T) {
	cases := []struct {
		name       string
		batchSize  int
		batchBytes int
	}{
		{"batch size 5000", 5000, 16 << 20},
		{"batch bytes 64KiB", 5000, 64 << 10},
	}
	const n = 25_000
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			for i := range n {
				put(t, e, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d","active":true}`, i))
			}
			last := flush(t, e)
			if last != n {
				t.Fatalf("%d changes stored, want %d", last, n)
			}
			cfg := ingester.DefaultConfig()
			cfg.BatchSize, cfg.BatchBytes = c.batchSize, c.batchBytes
			start(t, e, cfg)
			wm := caughtUp(t, e, last, 2*time.Minute)
			got := latest(t, e, "Patient", wm.Stamp)
			if len(got) != n {
				t.Fatalf("%d Patients queryable, want %d", len(got), n)
			}
			for i := range n {
				if got[fmt.Sprintf("p%d", i)] == nil {
					t.Fatalf("p%d missing", i)
				}
			}
			if stored := len(rows(t, e)); stored != n {
				t.Errorf("%d versions stored for %d changes", stored, n)
			}
		})
	}
}

func TestIngesterReplayIsDeterministic(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	body := func(i, round int) string {
		return fmt.Sprintf(`{"resourceType":"Patient","id":"p%d","gender":"other","birthDate":"19%02d-01-01"}`, i, round)
	}
	// First half, ingested; its watermark is kept.
	for i := range 300 {
		put(t, e, body(i, 1))
	}
	first := flush(t, e)
	stop := start(t, e, ingester.DefaultConfig())
	caughtUp(t, e, first, 30*time.Second)
	stop() // stopped: the saved watermark is the one the next changes follow
	saved, _, err := streams.LoadWatermark(ctx, e.js)
	if err != nil || saved.Seq != first {
		t.Fatalf("saved watermark %+v, %v", saved, err)
	}

	// Second half: updates of half the resources and new ones.
	for i := 150; i < 500; i++ {
		put(t, e, body(i, 2))
	}
	if err := e.pub.Delete(ctx, "Patient", "p7"); err != nil {
		t.Fatal(err)
	}
	last := flush(t, e)
	cfg := ingester.DefaultConfig()
	cfg.BatchSize = 64 // the replay batches differently from the first pass
	stop = start(t, e, ingester.DefaultConfig())
	wm := caughtUp(t, e, last, 30*time.Second)
	stop()
	before := latest(t, e, "Patient", wm.Stamp)
	if len(before) != 499 {
		t.Fatalf("%d live Patients, want 499", len(before))
	}
	beforeRows := rows(t, e)

	// A crash after inserting but before moving the watermark, replayed:
	// the watermark goes back to the saved copy and a new ingester runs.
	kv, err := e.js.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	for p := range streams.ChangePartitions {
		if _, err := kv.Put(ctx, streams.KeyPartition(p), streams.Encode(streams.PartitionState{Watermark: saved})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(ctx, streams.KeyWatermark, streams.Encode(saved)); err != nil {
		t.Fatal(err)
	}
	start(t, e, cfg)
	caughtUp(t, e, last, 30*time.Second)
	after := latest(t, e, "Patient", wm.Stamp)
	if len(after) != len(before) {
		t.Fatalf("%d live Patients after the replay, %d before", len(after), len(before))
	}
	for id, r := range before {
		v1, lu1 := meta(t, r)
		v2, lu2 := meta(t, after[id])
		if v1 != v2 || !lu1.Equal(lu2) {
			t.Errorf("%s was version %s at %s, replayed as version %s at %s", id, v1, lu1, v2, lu2)
		}
	}
	if got := deleted(t, e, "Patient", wm.Stamp); !slices.Equal(got, []string{"p7"}) {
		t.Errorf("deleted %v after the replay, want [p7]", got)
	}
	// The replay stored nothing twice: the versions already inserted after
	// the saved watermark were skipped, and every stored row is as first stored.
	afterRows := rows(t, e)
	bySeq := map[uint64]storedRow{}
	for _, r := range beforeRows {
		bySeq[r.seq] = r
	}
	copies := 0
	for _, r := range afterRows {
		orig, ok := bySeq[r.seq]
		if !ok {
			t.Fatalf("replay stored seq %d that the first pass did not", r.seq)
		}
		if r.lastUpdated != orig.lastUpdated || r.id != orig.id || r.deleted != orig.deleted {
			t.Errorf("seq %d replayed as %+v, first stored as %+v", r.seq, r, orig)
		}
		if r.seq > first {
			copies++
		}
	}
	if want := int(last - first); copies != want {
		t.Errorf("%d rows after the saved watermark, want each of %d changes once", copies, last-first)
	}
}
