package writer

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestRetryDelayBacksOff: failed attempts wait 1 s, then twice as long each
// time, at most 30 s.
func TestRetryDelayBacksOff(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := retryDelay(uint64(i + 1)); got != w {
			t.Errorf("delay after attempt %d = %s, want %s", i+1, got, w)
		}
	}
}

// TestHeartbeatsFollowTheAckWait: a task in progress is reported alive
// often enough that JetStream never hands it to another writer, however
// long it runs, and is handed out again within one ack wait once the
// heartbeats stop (the writer died).
func TestHeartbeatsFollowTheAckWait(t *testing.T) {
	ctx := t.Context()
	_, js := testenv.JetStream(t, testenv.NATS(t))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	const ackWait = 600 * time.Millisecond
	cons, err := js.CreateOrUpdateConsumer(ctx, "T", jetstream.ConsumerConfig{Durable: "w", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "t.task", []byte("task")); err != nil {
		t.Fatal(err)
	}
	fetch := func(wait time.Duration) jetstream.Msg {
		t.Helper()
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(wait))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			return m
		}
		return nil
	}
	msg := fetch(time.Second)
	if msg == nil {
		t.Fatal("no task")
	}
	// The cancellation check is far off: only heartbeats keep the task.
	w := &Writer{cfg: Config{CheckEvery: time.Minute}, heartbeat: heartbeatEvery(cons.CachedInfo().Config.AckWait, time.Minute)}
	if w.heartbeat != ackWait/5 {
		t.Errorf("heartbeat every %s, want a fifth of the ack wait %s", w.heartbeat, ackWait)
	}
	wctx, stop := context.WithCancelCause(ctx)
	go w.watch(wctx, stop, msg, streams.Task{})
	if again := fetch(4 * ackWait); again != nil {
		t.Fatal("a task in progress was handed out again")
	}
	stop(nil)
	start := time.Now()
	again := fetch(3 * ackWait)
	if again == nil {
		t.Fatal("the task of a writer that stopped was never handed out again")
	}
	md, err := again.Metadata()
	if err != nil || md.NumDelivered != 2 {
		t.Errorf("delivered %d times (%v), want 2", md.NumDelivered, err)
	}
	t.Logf("handed out again %s after the heartbeats stopped (ack wait %s)", time.Since(start).Round(time.Millisecond), ackWait)
}
