package ingester_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// owners counts the partitions each ingester holds ("" for released ones).
func owners(t testing.TB, e env) map[string]int {
	t.Helper()
	kv, err := e.js.KeyValue(t.Context(), streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for p := range streams.ChangePartitions {
		en, err := kv.Get(t.Context(), streams.KeyPartition(p))
		if err != nil {
			out["(never claimed)"]++
			continue
		}
		var st streams.PartitionState
		if err := streams.Decode(en.Value(), &st); err != nil {
			t.Fatal(err)
		}
		out[st.Owner]++
	}
	return out
}

// shared waits until n ingesters hold every partition between them,
// evenly.
func shared(t testing.TB, e env, n int) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d ingesters to share the partitions", n), func() bool {
		o := owners(t, e)
		if len(o) != n || o[""] > 0 || o["(never claimed)"] > 0 {
			return false
		}
		for _, k := range o {
			if k > (streams.ChangePartitions+n-1)/n {
				return false
			}
		}
		return true
	})
}

// crashable runs an ingester on a connection of its own; the returned
// crash closes the connection first, so the ingester can neither insert
// more nor release its partitions, as if killed: the others take them over
// once its claims lapse.
func crashable(t *testing.T, e env, cfg ingester.Config) (crash func()) {
	t.Helper()
	nc, err := nats.Connect(e.js.Conn().ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	in, err := ingester.New(cfg, ingester.Deps{
		JS: js, Store: e.store, Log: testenv.Logger(t),
		Tracer: tracenoop.NewTracerProvider(), Meter: metricnoop.NewMeterProvider(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = in.Run(ctx) }()
	crashed := false
	crash = func() {
		if crashed {
			return
		}
		crashed = true
		nc.Close()
		cancel()
		<-done
	}
	t.Cleanup(crash)
	return crash
}

// storedOnce checks that the versions stored are the changes up to last,
// each exactly once.
func storedOnce(t *testing.T, e env, last uint64) {
	t.Helper()
	stored := rows(t, e)
	if len(stored) != int(last) {
		t.Errorf("%d versions stored for %d changes", len(stored), last)
	}
	for i, r := range stored {
		if r.seq != uint64(i+1) {
			t.Fatalf("stored version %d has seq %d: a change stored twice or missed", i, r.seq)
		}
	}
}

// TestIngestersShareThePartitions: ingesters share the partitions of
// CHANGES evenly and insert at once, every change stored exactly once and
// the watermark gap-free. One that stops hands its partitions over at
// once; one that dies loses them once its claims lapse, and a change it
// had inserted without moving its watermarks is not stored twice; one
// that joins gets its share.
func TestIngestersShareThePartitions(t *testing.T) {
	e := newEnv(t)
	cfg := ingester.DefaultConfig()
	cfg.BatchSize = 50 // many inserts, many chances to collide
	cfg.LeaseTTL = time.Second
	crashA := crashable(t, e, cfg)
	stopB := start(t, e, cfg)
	shared(t, e, 2)
	for i := range 1000 {
		put(t, e, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d-a","gender":"other"}`, i))
	}
	caughtUp(t, e, flush(t, e), 30*time.Second)
	storedOnce(t, e, flush(t, e))

	// A dies while changes arrive.
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := range 1000 {
			if i == 300 {
				crashA()
			}
			put(t, e, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d-a","gender":"female"}`, i))
		}
	}()
	<-published
	caughtUp(t, e, flush(t, e), 30*time.Second)
	shared(t, e, 1)
	storedOnce(t, e, flush(t, e))

	// C joins and gets half; B stops and hands its half to C at once.
	start(t, e, cfg)
	shared(t, e, 2)
	for i := range 500 {
		put(t, e, fmt.Sprintf(`{"resourceType":"Observation","id":"o%d-b","status":"final","subject":{"reference":"Patient/p%d-a"}}`, i, i))
	}
	caughtUp(t, e, flush(t, e), 30*time.Second)
	stopB()
	shared(t, e, 1)
	for i := range 200 {
		put(t, e, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d-a","gender":"male"}`, i))
	}
	last := flush(t, e)
	caughtUp(t, e, last, 30*time.Second)
	storedOnce(t, e, last)
}
