package streams

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// KeyIngestLease is the key, in BucketIngest, of the lease the active
// ingester holds: one ingester inserts at a time, the others stand by.
const KeyIngestLease = "lease"

// ErrLeaseLost means another holder took the lease, or it could not be
// renewed in time.
var ErrLeaseLost = errors.New("lease lost")

// Lease is a claim, held in a KV key, on work that one process does at a
// time. The holder renews it by compare-and-set; a contender takes it over
// when the key's revision has not changed for TTL, as its own clock
// measures. No clock is compared across machines. The holder acts only
// while Valid: within TTL/2 of its last renewal, so a holder that stops
// renewing has stopped acting TTL/2 before anyone takes over.
type Lease struct {
	kv    jetstream.KeyValue
	key   string
	owner string
	ttl   time.Duration

	mu      sync.Mutex
	rev     uint64
	renewed time.Time // local, monotonic: of the last claim or renewal
}

// NewLease prepares a lease on key in kv for this process, with a
// time-to-live of ttl.
func NewLease(kv jetstream.KeyValue, key string, ttl time.Duration) *Lease {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &Lease{kv: kv, key: key, owner: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b)), ttl: ttl}
}

// Owner names this holder in the key's value.
func (l *Lease) Owner() string { return l.owner }

// Acquire waits until this process holds the lease: the key is free, or
// its holder stopped renewing it TTL ago. ctx bounds the wait.
func (l *Lease) Acquire(ctx context.Context) error {
	var seenRev uint64
	var seenAt time.Time
	for {
		e, err := l.kv.Get(ctx, l.key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if rev, err := l.kv.Create(ctx, l.key, []byte(l.owner)); err == nil {
				l.held(rev)
				return nil
			}
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
		case e.Revision() != seenRev:
			seenRev, seenAt = e.Revision(), time.Now()
		case time.Since(seenAt) >= l.ttl:
			if rev, err := l.kv.Update(ctx, l.key, []byte(l.owner), seenRev); err == nil {
				l.held(rev)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(l.ttl / 8):
		}
	}
}

func (l *Lease) held(rev uint64) {
	l.mu.Lock()
	l.rev, l.renewed = rev, time.Now()
	l.mu.Unlock()
}

// Renew extends the lease. An error wrapping ErrLeaseLost means another
// holder has it.
func (l *Lease) Renew(ctx context.Context) error {
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	next, err := l.kv.Update(ctx, l.key, []byte(l.owner), rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("%w: %s was taken over", ErrLeaseLost, l.key)
		}
		return fmt.Errorf("renew lease %s: %w", l.key, err)
	}
	l.held(next)
	return nil
}

// Valid reports whether the holder may still act on the lease.
func (l *Lease) Valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev != 0 && time.Since(l.renewed) < l.ttl/2
}

// Hold renews the lease every TTL/8 until ctx ends or the lease can no
// longer be held (taken over, or not renewed within TTL/2): then it
// returns why. Run the work under a context that Hold's return cancels.
func (l *Lease) Hold(ctx context.Context) error {
	tick := time.NewTicker(l.ttl / 8)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		err := l.Renew(ctx)
		if errors.Is(err, ErrLeaseLost) {
			return err
		}
		if !l.Valid() {
			return fmt.Errorf("%w: not renewed for %s (%v)", ErrLeaseLost, l.ttl/2, err)
		}
	}
}

// Release gives the lease up, when this process still holds it, so that
// a standby takes over at once.
func (l *Lease) Release(ctx context.Context) {
	l.mu.Lock()
	rev := l.rev
	l.rev = 0
	l.mu.Unlock()
	if rev != 0 {
		_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev))
	}
}
