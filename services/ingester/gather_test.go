package ingester

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/streams"
)

// batch is a batch of n rows ending at change seq, read while more
// changes waited in the stream.
func batch(seq uint64, n int) pendingCommit {
	return pendingCommit{rows: make([]chstore.Row, n), bytes: 10 * n, next: streams.Watermark{Seq: seq}, behind: true}
}

// TestGathererSpacesInserts: batches that arrive while an insert waits for
// its turn go into it, in order, as long as they fit; one that does not fit
// starts the next insert; without a wait the batch goes at once; and when
// the follow ends, what was read is inserted at once.
func TestGathererSpacesInserts(t *testing.T) {
	ctx := context.Background()
	in := make(chan pendingCommit, 8)
	g := gatherer{in: in, maxRows: 10, maxBytes: 1 << 20}

	in <- batch(1, 3)
	p, ok := g.next(ctx, 0)
	if !ok || p.next.Seq != 1 || len(p.rows) != 3 {
		t.Fatalf("no wait: got seq %d, %d rows, %v; want the batch at once", p.next.Seq, len(p.rows), ok)
	}

	in <- batch(2, 3)
	in <- batch(3, 4)
	in <- batch(4, 5) // 3+4+5 > 10: the next insert's
	start := time.Now()
	p, _ = g.next(ctx, time.Minute)
	if p.next.Seq != 3 || len(p.rows) != 7 || p.bytes != 70 {
		t.Fatalf("gathered up to seq %d, %d rows, %d bytes; want seq 3, 7 rows, 70 bytes", p.next.Seq, len(p.rows), p.bytes)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("a full insert waited for the interval")
	}

	in <- batch(5, 1)
	close(in) // the follow ended
	p, ok = g.next(ctx, time.Minute)
	if !ok || p.next.Seq != 5 || len(p.rows) != 6 {
		t.Fatalf("after the carried batch: seq %d, %d rows, %v; want seq 5, 6 rows", p.next.Seq, len(p.rows), ok)
	}
	if _, ok := g.next(ctx, time.Minute); ok {
		t.Fatal("an insert after the batches ended")
	}
}

// TestGathererInsertsWhenTheWaitEnds: a batch alone is inserted once the
// wait is over, not held for company.
func TestGathererInsertsWhenTheWaitEnds(t *testing.T) {
	in := make(chan pendingCommit, 1)
	g := gatherer{in: in, maxRows: 10, maxBytes: 1 << 20}
	in <- batch(1, 1)
	start := time.Now()
	p, ok := g.next(context.Background(), 50*time.Millisecond)
	if !ok || p.next.Seq != 1 {
		t.Fatalf("got seq %d, %v", p.next.Seq, ok)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("inserted after %v, before the wait ended", d)
	}
}

// TestGathererDoesNotDelayACaughtUpIngester: a batch read with nothing
// more waiting in the stream goes at once, whatever the spacing, and a
// gathered insert ends with the batch that caught up: a read that waits
// for a write is not held up.
func TestGathererDoesNotDelayACaughtUpIngester(t *testing.T) {
	in := make(chan pendingCommit, 4)
	g := gatherer{in: in, maxRows: 100, maxBytes: 1 << 20}
	last := batch(1, 1)
	last.behind = false
	in <- last
	start := time.Now()
	if p, ok := g.next(context.Background(), time.Minute); !ok || p.next.Seq != 1 {
		t.Fatalf("got seq %d, %v", p.next.Seq, ok)
	}
	in <- batch(2, 1)
	caught := batch(3, 1)
	caught.behind = false
	in <- caught
	in <- batch(4, 1) // the next insert's
	p, _ := g.next(context.Background(), time.Minute)
	if p.next.Seq != 3 || len(p.rows) != 2 || p.behind {
		t.Errorf("gathered up to seq %d (%d rows, behind %v), want up to the batch that caught up, 3", p.next.Seq, len(p.rows), p.behind)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("a caught-up ingester waited %v", d)
	}
}

// TestResumeDelayBacksOff: while follows keep failing at once (a shard
// that is down), the ingester waits longer between them, up to 2 s, and
// does not log a warning every 200 ms for the whole outage; a follow that
// ran for a while is resumed quickly again.
func TestResumeDelayBacksOff(t *testing.T) {
	var got []time.Duration
	d := time.Duration(0)
	for range 6 {
		d = resumeDelay(d, 50*time.Millisecond)
		got = append(got, d)
	}
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 2 * time.Second, 2 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
	if d := resumeDelay(2*time.Second, time.Minute); d != 200*time.Millisecond {
		t.Errorf("after a follow that ran a minute: %v, want 200ms", d)
	}
}
