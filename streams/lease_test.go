package streams_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestLeaseOneHolderAtATime: a lease held and renewed is never taken; one
// released passes at once; one no longer renewed passes after its TTL,
// when its holder has long stopped counting it valid.
func TestLeaseOneHolderAtATime(t *testing.T) {
	_, js := ensured(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	kv, err := js.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 400 * time.Millisecond
	a := streams.NewLease(kv, streams.KeyIngestLease, ttl)
	b := streams.NewLease(kv, streams.KeyIngestLease, ttl)
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.Valid() {
		t.Fatal("a fresh lease is not valid")
	}
	holdCtx, stopHolding := context.WithCancel(ctx)
	held := make(chan error, 1)
	go func() { held <- a.Hold(holdCtx) }()

	// Held and renewed: b waits well past the TTL in vain.
	wait, cancelWait := context.WithTimeout(ctx, 3*ttl)
	err = b.Acquire(wait)
	cancelWait()
	if !errors.Is(err, context.DeadlineExceeded) || b.Valid() {
		t.Fatalf("b acquired a lease a holds and renews: %v", err)
	}
	if !a.Valid() {
		t.Fatal("a's lease lapsed while a renewed it")
	}

	// Released: b gets it at once, long before a lapse could pass it on.
	stopHolding()
	<-held
	a.Release(ctx)
	if a.Valid() {
		t.Error("a still counts a released lease valid")
	}
	a2, b2 := streams.NewLease(kv, "released", time.Hour), streams.NewLease(kv, "released", time.Hour)
	if err := a2.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	a2.Release(ctx)
	soon, cancelSoon := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSoon()
	if err := b2.Acquire(soon); err != nil {
		t.Fatalf("a released lease with a TTL of an hour did not pass on: %v", err)
	}
	if err := b.Acquire(ctx); err != nil {
		t.Fatal(err)
	}

	// b stops renewing (a crash): a takes over after the TTL, by which time
	// b has stopped counting it valid, and b's renewal fails.
	testenv.Eventually(t, ttl, "b's unrenewed lease to stop being valid", func() bool { return !b.Valid() })
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Renew(ctx); !errors.Is(err, streams.ErrLeaseLost) {
		t.Errorf("b renewed a lease a took over: %v, want ErrLeaseLost", err)
	}
	if a.Owner() == b.Owner() {
		t.Errorf("two holders share the owner name %q", a.Owner())
	}
}
