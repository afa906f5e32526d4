package ingester

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// errClaimLost means another ingester took a partition over, or its claim
// could not be renewed in time.
var errClaimLost = errors.New("partition claim lost")

// errRebalance ends a follow whose partitions should change: an ingester
// joined or left, or a partition came free.
var errRebalance = errors.New("the partitions are shared out anew")

// claims is this ingester's share of the CHANGES partitions (ADR 0008),
// and its view, kept by a watch on the ingest bucket, of every partition's
// claim and watermark and of the running ingesters.
//
// A partition's key holds its owner and its watermark. The owner renews
// it, by compare-and-set, with every commit and at least every TTL/8, and
// inserts only while its last renewal is less than TTL/2 old. Another
// ingester takes a partition over once its key's revision has not changed
// for TTL on its own clock, or at once when the owner released it. No
// clock is compared across machines.
//
// Ingesters share the partitions out evenly: each counts the running ones
// (their member keys, renewed every TTL/8), holds at most its share and
// releases what it holds above it.
type claims struct {
	kv    jetstream.KeyValue
	id    string // this ingester's member key id
	owner string // its name in the partition keys
	ttl   time.Duration
	log   *slog.Logger

	// wmu orders this ingester's writes of its partition keys: a commit's
	// and a renewal's compare-and-set of one key must not race.
	wmu sync.Mutex

	mu      sync.Mutex
	parts   [streams.ChangePartitions]partView
	members map[string]memberView
	held    map[int]time.Time // held partitions, and when each was last written
	ready   chan struct{}     // closed once the watch delivered the current values
	viewed  chan struct{}     // a claim or a member changed
	moved   chan struct{}     // a partition watermark moved

	// The watch's liveness. A watch can stop delivering without ending
	// (its consumer lost with a NATS node), which would freeze the view:
	// the other ingesters' renewals unseen, the global watermark stuck. This
	// ingester's own member key writes must come back through it.
	wroteRev    uint64    // the revision of its last member key write
	seenRev     uint64    // the highest revision of that key the watch delivered
	unseenSince time.Time // when the oldest write not delivered yet was made
}

type partView struct {
	present bool
	state   streams.PartitionState
	rev     uint64
	seen    time.Time // local: when the revision last changed
}

type memberView struct {
	rev  uint64
	seen time.Time
}

func newClaims(kv jetstream.KeyValue, ttl time.Duration, log *slog.Logger) *claims {
	host, _ := os.Hostname()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	return &claims{
		kv: kv, id: id, owner: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), id), ttl: ttl, log: log,
		members: map[string]memberView{}, held: map[int]time.Time{},
		ready: make(chan struct{}), viewed: make(chan struct{}, 1), moved: make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// watch keeps the view up to date until ctx ends, and closes ready once it
// holds the current values. A watch that ends, or that stops delivering
// this ingester's own writes, is replaced by a new one, which delivers the
// current values first.
func (c *claims) watch(ctx context.Context) {
	check := time.NewTicker(c.ttl / 8)
	defer check.Stop()
	for ctx.Err() == nil {
		w, err := c.kv.WatchFiltered(ctx, streams.KeysIngestCoordination())
		if err == nil {
			c.follow(ctx, w, check.C)
			_ = w.Stop()
		} else if ctx.Err() == nil {
			c.log.WarnContext(ctx, "watch ingest partitions", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// follow applies the updates of watch w until it ends, ctx ends, or it is
// found stale on a tick of check.
func (c *claims) follow(ctx context.Context, w jetstream.KeyWatcher, check <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				c.markReady()
				continue
			}
			c.apply(e)
		case <-check:
			if late := c.watchLate(); late > 0 {
				c.log.WarnContext(ctx, "the watch of the ingest bucket stopped delivering; watching anew",
					slog.Duration("ownWriteUnseenFor", late))
				return
			}
		}
	}
}

// watchLate is how long this ingester's oldest member key write has gone
// undelivered by the watch, when that is over TTL/4 (0 otherwise), and
// starts the count anew: the next watch gets its time to deliver.
func (c *claims) watchLate() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unseenSince.IsZero() || time.Since(c.unseenSince) <= c.ttl/4 {
		return 0
	}
	late := time.Since(c.unseenSince)
	c.unseenSince = time.Now()
	return late
}

// wroteMember notes a write of this ingester's member key at rev.
func (c *claims) wroteMember(rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev <= c.seenRev {
		return // the watch was faster
	}
	if c.unseenSince.IsZero() {
		c.unseenSince = time.Now()
	}
	c.wroteRev = rev
}

func (c *claims) markReady() {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
}

// apply records one update of a partition or member key.
func (c *claims) apply(e jetstream.KeyValueEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	put := e.Operation() == jetstream.KeyValuePut
	if p, ok := streams.ParsePartitionKey(e.Key()); ok {
		v := &c.parts[p]
		if e.Revision() <= v.rev {
			return // this ingester's own write, recorded already
		}
		var st streams.PartitionState
		if put && streams.Decode(e.Value(), &st) != nil {
			c.log.Warn("unreadable partition claim", slog.String("key", e.Key()))
			return
		}
		*v = partView{present: put, state: st, rev: e.Revision(), seen: now}
		if _, mine := c.held[p]; mine && st.Owner != c.owner {
			delete(c.held, p) // taken over: Valid fails from now on
		}
		signal(c.viewed)
		signal(c.moved)
		return
	}
	if id, ok := streams.ParseMemberKey(e.Key()); ok {
		if id == c.id && e.Revision() > c.seenRev {
			c.seenRev = e.Revision()
			if c.seenRev >= c.wroteRev {
				c.unseenSince = time.Time{}
			}
		}
		if !put {
			delete(c.members, id)
		} else if m := c.members[id]; e.Revision() > m.rev {
			c.members[id] = memberView{rev: e.Revision(), seen: now}
		}
		signal(c.viewed)
	}
}

// heartbeat renews this ingester's member key every TTL/8 until ctx ends,
// and removes the keys of ingesters gone for 2 TTL.
func (c *claims) heartbeat(ctx context.Context) {
	tick := time.NewTicker(c.ttl / 8)
	defer tick.Stop()
	for {
		if rev, err := c.kv.Put(ctx, streams.KeyMember(c.id), []byte(c.owner)); err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "renew ingester membership", slog.Any("error", err))
		} else if err == nil {
			c.wroteMember(rev)
		}
		c.mu.Lock()
		var gone []string
		var revs []uint64
		for id, m := range c.members {
			if id != c.id && time.Since(m.seen) > 2*c.ttl {
				gone, revs = append(gone, id), append(revs, m.rev)
			}
		}
		c.mu.Unlock()
		for i, id := range gone {
			_ = c.kv.Delete(ctx, streams.KeyMember(id), jetstream.LastRevision(revs[i]))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// share is how many partitions this ingester should hold: an even share
// among the ingesters whose member key changed within TTL, itself included.
func (c *claims) share() int {
	n := 1
	for id, m := range c.members {
		if id != c.id && time.Since(m.seen) < c.ttl {
			n++
		}
	}
	return (streams.ChangePartitions + n - 1) / n
}

// claimable: nobody holds partition p, its owner released it, or its key
// has not changed for TTL. Called with c.mu held.
func (c *claims) claimable(p int) bool {
	v := c.parts[p]
	if _, mine := c.held[p]; mine {
		return false
	}
	return !v.present || v.state.Owner == "" || time.Since(v.seen) >= c.ttl
}

// rebalance releases the partitions held above this ingester's share and
// claims claimable ones up to it.
func (c *claims) rebalance(ctx context.Context) {
	c.mu.Lock()
	share := c.share()
	held := c.heldLocked()
	var extra []int
	if len(held) > share {
		extra = held[share:]
	}
	var want []int
	start := int(c.id[0]) // spread the first claims of ingesters starting together
	for i := range streams.ChangePartitions {
		p := (start + i) % streams.ChangePartitions
		if len(held)-len(extra)+len(want) < share && c.claimable(p) {
			want = append(want, p)
		}
	}
	c.mu.Unlock()
	c.wmu.Lock()
	for _, p := range extra {
		if err := c.write(ctx, p, "", nil); err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "release partition", slog.Int("partition", p), slog.Any("error", err))
		}
	}
	c.wmu.Unlock()
	for _, p := range want {
		if err := c.claim(ctx, p); err != nil && ctx.Err() == nil {
			c.log.DebugContext(ctx, "claim partition", slog.Int("partition", p), slog.Any("error", err))
		}
	}
}

// claim takes partition p over, from its owner's watermark; a partition
// never claimed before starts at the global watermark, up to which every
// change was stored before partitions existed.
func (c *claims) claim(ctx context.Context, p int) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	v := c.parts[p]
	c.mu.Unlock()
	st := streams.PartitionState{Owner: c.owner, Watermark: v.state.Watermark}
	var rev uint64
	var err error
	if v.present {
		rev, err = c.kv.Update(ctx, streams.KeyPartition(p), streams.Encode(st), v.rev)
	} else {
		if st.Watermark, _, err = streams.ReadWatermark(ctx, c.kv); err != nil {
			return err
		}
		rev, err = c.kv.Create(ctx, streams.KeyPartition(p), streams.Encode(st))
	}
	if err != nil {
		return err
	}
	c.record(p, st, rev, true)
	return nil
}

// record notes this ingester's successful write of partition p.
func (c *claims) record(p int, st streams.PartitionState, rev uint64, hold bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev > c.parts[p].rev {
		c.parts[p] = partView{present: true, state: st, rev: rev, seen: time.Now()}
	}
	if hold {
		c.held[p] = time.Now()
	} else {
		delete(c.held, p)
	}
	signal(c.moved)
}

// write sets held partition p's owner to owner ("" releases it) and, when
// wm is not nil, its watermark. A lost compare-and-set means another
// ingester took the partition over: errClaimLost.
func (c *claims) write(ctx context.Context, p int, owner string, wm *streams.Watermark) error {
	c.mu.Lock()
	v := c.parts[p]
	_, mine := c.held[p]
	c.mu.Unlock()
	if !mine {
		return fmt.Errorf("%w: partition %d", errClaimLost, p)
	}
	st := streams.PartitionState{Owner: owner, Watermark: v.state.Watermark}
	if wm != nil {
		st.Watermark = *wm
	}
	rev, err := c.kv.Update(ctx, streams.KeyPartition(p), streams.Encode(st), v.rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		c.mu.Lock()
		delete(c.held, p)
		c.mu.Unlock()
		return fmt.Errorf("%w: partition %d was taken over", errClaimLost, p)
	}
	if err != nil {
		return fmt.Errorf("write partition %d: %w", p, err)
	}
	c.record(p, st, rev, owner != "")
	return nil
}

// advance moves the watermarks of partitions ps to wm, which renews them.
func (c *claims) advance(ctx context.Context, ps []int, wm streams.Watermark) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.eachPartition(ps, func(p int) error { return c.write(ctx, p, c.owner, &wm) })
}

// eachPartition runs fn for every partition of ps at once.
func (c *claims) eachPartition(ps []int, fn func(p int) error) error {
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(p)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// renew rewrites the held partitions not written for TTL/8.
func (c *claims) renew(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	var due []int
	for p, at := range c.held {
		if time.Since(at) >= c.ttl/8 {
			due = append(due, p)
		}
	}
	c.mu.Unlock()
	return c.eachPartition(due, func(p int) error { return c.write(ctx, p, c.owner, nil) })
}

// valid reports whether this ingester may still insert the changes of
// partitions ps: it holds each, renewed less than TTL/2 ago.
func (c *claims) valid(ps []int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range ps {
		at, ok := c.held[p]
		if !ok || time.Since(at) >= c.ttl/2 {
			return false
		}
	}
	return true
}

// hold renews the partitions ps until ctx ends, one of them is taken over
// (errClaimLost), or they should change (errRebalance).
//
// A claim whose renewals failed for TTL/2 (the ingest bucket unavailable
// while its NATS leader moved) is not given up: it stops being valid, so
// nothing is inserted, and renewing goes on. A renewal is a compare-and-set
// of the key at the revision this ingester last wrote, so one that
// succeeds late proves that nobody took the partition over meanwhile, and
// the claim is valid again. Giving the claims up instead left every
// ingester holding its partitions unrenewed for good: each still counted
// them as its share, so none claimed them anew, and ingest stopped.
func (c *claims) hold(ctx context.Context, ps []int) error {
	tick := time.NewTicker(c.ttl / 8)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-c.viewed:
		}
		if err := c.renew(ctx); errors.Is(err, errClaimLost) {
			return err
		}
		if p, ok := c.holdsAll(ps); !ok {
			return fmt.Errorf("%w: partition %d was taken over", errClaimLost, p)
		}
		if c.unbalanced(len(ps)) {
			return errRebalance
		}
	}
}

// holdsAll reports whether this ingester still holds every partition of
// ps, renewed in time or not, and if not, one it lost.
func (c *claims) holdsAll(ps []int) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range ps {
		if _, ok := c.held[p]; !ok {
			return p, false
		}
	}
	return 0, true
}

// awaitValid waits until this ingester may insert the changes of
// partitions ps (see valid): at once, unless their renewals lapsed, and
// then until hold renews them. It fails when one was taken over, or when
// ctx ends: the hold ends the follow's context when the claims are lost.
func (c *claims) awaitValid(ctx context.Context, ps []int) error {
	wait := time.NewTicker(c.ttl / 32)
	defer wait.Stop()
	for !c.valid(ps) {
		if p, ok := c.holdsAll(ps); !ok {
			return fmt.Errorf("%w: partition %d was taken over", errClaimLost, p)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: not renewed (%w)", errClaimLost, context.Cause(ctx))
		case <-wait.C:
		}
	}
	return nil
}

// unbalanced: holding n partitions, this ingester holds more than its
// share, or less while a partition is free to claim.
func (c *claims) unbalanced(n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	share := c.share()
	if n > share {
		return true
	}
	if n == share {
		return false
	}
	for p := range streams.ChangePartitions {
		if c.claimable(p) {
			return true
		}
	}
	return false
}

// holds reports whether this ingester holds partition p.
func (c *claims) holds(p int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.held[p]
	return ok
}

// heldList is the partitions held, in order.
func (c *claims) heldList() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.heldLocked()
}

func (c *claims) heldLocked() []int {
	out := make([]int, 0, len(c.held))
	for p := range c.held {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// watermarks are the watermarks of partitions ps.
func (c *claims) watermarks(ps []int) map[int]streams.Watermark {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int]streams.Watermark, len(ps))
	for _, p := range ps {
		out[p] = c.parts[p].state.Watermark
	}
	return out
}

// lowest is the lowest watermark of all partitions: every change up to it
// is stored. ok is false while a partition was never claimed.
func (c *claims) lowest() (wm streams.Watermark, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, v := range c.parts {
		if !v.present {
			return streams.Watermark{}, false
		}
		if p == 0 || v.state.Seq < wm.Seq {
			wm = v.state.Watermark
		}
	}
	return wm, true
}

// publishGlobal keeps the global watermark, which readers wait on, at the
// lowest partition watermark, until ctx ends. The holder of partition 0
// does it (one writer, no contention), from the watch, so the last
// partition to move is always seen; the key only ever moves up. Whoever
// takes partition 0 over takes this over too.
func (c *claims) publishGlobal(ctx context.Context) {
	var cur streams.Watermark
	var rev uint64
	loaded := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.moved:
		}
		if !c.holds(0) {
			loaded = false
			continue
		}
		for ctx.Err() == nil {
			low, ok := c.lowest()
			if !ok || (loaded && low.Seq <= cur.Seq) {
				break
			}
			if !loaded {
				var err error
				if cur, rev, err = streams.ReadWatermark(ctx, c.kv); err != nil {
					c.log.WarnContext(ctx, "read the global watermark", slog.Any("error", err))
					time.Sleep(100 * time.Millisecond)
					continue
				}
				loaded = true
				continue
			}
			var err error
			var next uint64
			if rev == 0 {
				next, err = c.kv.Create(ctx, streams.KeyWatermark, streams.Encode(low))
			} else {
				next, err = c.kv.Update(ctx, streams.KeyWatermark, streams.Encode(low), rev)
			}
			if err != nil {
				loaded = false // another ingester moved it: read it again
				if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
					c.log.WarnContext(ctx, "advance the global watermark", slog.Any("error", err))
					time.Sleep(100 * time.Millisecond)
				}
				continue
			}
			cur, rev = low, next
		}
	}
}

// leave releases every held partition, so that others take them over at
// once, and removes this ingester's member key.
func (c *claims) leave(ctx context.Context) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.eachPartition(c.heldList(), func(p int) error { return c.write(ctx, p, "", nil) })
	_ = c.kv.Delete(ctx, streams.KeyMember(c.id))
}
