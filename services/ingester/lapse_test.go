package ingester

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

// downKV is the real ingest bucket whose writes fail while down is set:
// what the bucket looks like while its NATS leader is being elected anew
// after a node died ("no response from stream").
type downKV struct {
	jetstream.KeyValue
	down atomic.Bool
}

var errBucketDown = errors.New("nats: no response from stream")

func (d *downKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	if d.down.Load() {
		return 0, errBucketDown
	}
	return d.KeyValue.Update(ctx, key, value, rev)
}

func (d *downKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if d.down.Load() {
		return 0, errBucketDown
	}
	return d.KeyValue.Put(ctx, key, value)
}

// TestClaimsSurviveABucketOutageLongerThanTheirValidity: when the ingest
// bucket refuses writes for longer than TTL/2, the claims stop being valid
// (nothing may be inserted) but are kept and renewed once the bucket is
// back, and the commit that waited goes on. Before, the ingester gave them
// up and held them unrenewed for good: in the cluster test, after the NATS
// node leading CHANGES was killed, both ingesters spun on "partition claim
// lost" and ingest never resumed. A partition another ingester takes over
// meanwhile is still lost.
func TestClaimsSurviveABucketOutageLongerThanTheirValidity(t *testing.T) {
	js := streamstest.New(t).JS
	kv, err := js.KeyValue(t.Context(), streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	dkv := &downKV{KeyValue: kv}
	const ttl = 2 * time.Second
	c := newClaims(dkv, ttl, testenv.Logger(t))
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.watch(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	<-c.ready
	c.rebalance(ctx)
	held := c.heldList()
	if len(held) != streams.ChangePartitions || !c.valid(held) {
		t.Fatalf("held %v, valid %v; want every partition", held, c.valid(held))
	}

	holdCtx, endHold := context.WithCancel(ctx)
	defer endHold()
	ended := make(chan error, 1)
	go func() { ended <- c.hold(holdCtx, held) }()

	dkv.down.Store(true)
	testenv.Eventually(t, 2*ttl, "the claims to lapse while the bucket is down", func() bool { return !c.valid(held) })
	// A commit arriving now waits for the renewal instead of inserting.
	committed := make(chan error, 1)
	go func() { committed <- c.awaitValid(holdCtx, held) }()
	outage := time.NewTimer(ttl) // down for TTL in all, well past TTL/2
	select {
	case err := <-ended:
		t.Fatalf("the hold ended during the outage: %v", err)
	case err := <-committed:
		t.Fatalf("a commit went on with lapsed claims: %v", err)
	case <-outage.C:
	}

	dkv.down.Store(false)
	select {
	case err := <-committed:
		if err != nil {
			t.Fatalf("the commit waiting for the renewal failed: %v", err)
		}
	case err := <-ended:
		t.Fatalf("the hold ended after the outage instead of renewing: %v", err)
	case <-time.After(2 * ttl):
		t.Fatal("the claims were not renewed after the outage")
	}
	if !c.valid(held) {
		t.Error("the claims are not valid after their renewal")
	}

	// Another ingester takes partition 3 over (its key unchanged for TTL
	// on its clock): the hold ends with the claim lost.
	st := streams.PartitionState{Owner: "other", Watermark: streams.Watermark{Seq: 1}}
	testenv.Eventually(t, 2*ttl, "another ingester to take partition 3 over", func() bool {
		e, err := kv.Get(ctx, streams.KeyPartition(3))
		if err != nil {
			t.Fatal(err)
		}
		// A renewal between the read and the write makes it fail: again.
		_, err = kv.Update(ctx, streams.KeyPartition(3), streams.Encode(st), e.Revision())
		return err == nil
	})
	select {
	case err := <-ended:
		if !errors.Is(err, errClaimLost) {
			t.Errorf("the hold ended with %v, want the claim lost", err)
		}
	case <-time.After(2 * ttl):
		t.Fatal("the hold went on after partition 3 was taken over")
	}
	if err := c.awaitValid(ctx, held); !errors.Is(err, errClaimLost) {
		t.Errorf("a commit after the takeover: %v, want the claim lost", err)
	}
}
