package ingester

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

// stallingKV is the real ingest bucket whose first watch stops delivering,
// without ending, once stall is closed: what a watch whose consumer was
// lost with a NATS node looks like to its reader.
type stallingKV struct {
	jetstream.KeyValue
	stall   chan struct{}
	watches atomic.Int32
}

func (s *stallingKV) WatchFiltered(ctx context.Context, keys []string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	w, err := s.KeyValue.WatchFiltered(ctx, keys, opts...)
	if err != nil || s.watches.Add(1) > 1 {
		return w, err
	}
	sw := &stalledWatcher{KeyWatcher: w, out: make(chan jetstream.KeyValueEntry)}
	go func() {
		for e := range w.Updates() {
			select {
			case <-s.stall:
				continue // delivered no more; the channel stays open
			default:
			}
			select {
			case sw.out <- e:
			case <-s.stall:
			}
		}
	}()
	return sw, nil
}

type stalledWatcher struct {
	jetstream.KeyWatcher
	out chan jetstream.KeyValueEntry
}

func (w *stalledWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.out }

// TestClaimsWatchReplacesAWatchThatStoppedDelivering: when the watch of the
// ingest bucket goes silent, the ingester notices that its own membership
// renewals no longer come back, watches anew, and sees what the other
// ingesters wrote meanwhile (without it, their renewals and watermarks
// stay unseen: the global watermark froze for minutes once, after a NATS
// node died).
func TestClaimsWatchReplacesAWatchThatStoppedDelivering(t *testing.T) {
	js := streamstest.New(t).JS
	kv, err := js.KeyValue(t.Context(), streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	skv := &stallingKV{KeyValue: kv, stall: make(chan struct{})}
	const ttl = 2 * time.Second
	c := newClaims(skv, ttl, testenv.Logger(t))
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, fn := range []func(context.Context){c.watch, c.heartbeat} {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	<-c.ready

	close(skv.stall)
	// Another ingester claims partition 5 while the watch is silent.
	st := streams.PartitionState{Owner: "other", Watermark: streams.Watermark{Seq: 77}}
	if _, err := kv.Put(t.Context(), streams.KeyPartition(5), streams.Encode(st)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*ttl, "the view to show the other ingester's claim", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		v := c.parts[5]
		return v.present && v.state.Owner == "other" && v.state.Seq == 77
	})
	if n := skv.watches.Load(); n < 2 {
		t.Errorf("%d watches; the silent one was not replaced", n)
	}
}
