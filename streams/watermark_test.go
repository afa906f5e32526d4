package streams_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestStreamsAwaitWatermarkWakesOnTheWriteThatReachesIt: waiters for many
// sequences, started while the watermark moves, all return once it passes
// theirs, the last ones woken by the very last write (nothing polls).
func TestStreamsAwaitWatermarkWakesOnTheWriteThatReachesIt(t *testing.T) {
	_, js := testenv.JetStream(t, testenv.NATS(t))
	ctx := t.Context()
	cfg := streams.DefaultConfig()
	cfg.Memory = true
	if err := streams.Ensure(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	const last = 300
	var wg sync.WaitGroup
	errs := make(chan error, last)
	for seq := uint64(1); seq <= last; seq++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			if wm, err := streams.AwaitWatermark(wctx, js, seq); err != nil || wm.Seq < seq {
				errs <- err
			}
		}()
	}
	for seq := uint64(1); seq <= last; seq++ {
		wm := streams.Watermark{Seq: seq, Stamp: time.Now().UTC()}
		if _, err := kv.Put(ctx, streams.KeyWatermark, streams.Encode(wm)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a waiter did not see the watermark pass it: %v", err)
	}
}
