package ingester

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// Config tunes batching.
type Config struct {
	// BatchSize and BatchBytes bound one ClickHouse insert.
	BatchSize  int
	BatchBytes int
	// FlushInterval is the longest a change waits for its batch to fill.
	FlushInterval time.Duration
	// InsertInterval spaces the inserts of an ingester that is behind
	// (more changes wait in the stream): one that inserted less than
	// InsertInterval times the number of ingesters ago gathers what it
	// reads meanwhile into its next insert (up to BatchSize times that
	// number of rows, or BatchBytes). Few large inserts leave ClickHouse
	// fewer parts to merge, however many ingesters share the work. An
	// ingester that has read everything inserts at once: a write that a
	// read waits for is not delayed.
	InsertInterval time.Duration
	// LeaseTTL is how long a partition claim outlives its last renewal:
	// another ingester takes a dead one's partitions over that long after
	// it died (ADR 0008).
	LeaseTTL time.Duration
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.BatchSize < 1 || c.BatchBytes < 1 || c.FlushInterval <= 0 || c.InsertInterval <= 0 || c.LeaseTTL <= 0 {
		return fmt.Errorf("ingester batch size, batch bytes, flush interval, insert interval and lease TTL must be positive")
	}
	return nil
}

// DefaultConfig returns sane defaults.
func DefaultConfig() Config {
	return Config{BatchSize: 10000, BatchBytes: 16 << 20, FlushInterval: 50 * time.Millisecond,
		InsertInterval: 250 * time.Millisecond, LeaseTTL: 10 * time.Second}
}

// Deps are what the ingester works with.
type Deps struct {
	JS     jetstream.JetStream
	Store  *chstore.Store
	Log    *slog.Logger
	Tracer trace.TracerProvider
	Meter  metric.MeterProvider
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Ingester is the CHANGES consumer.
type Ingester struct {
	cfg      Config
	deps     Deps
	tracer   trace.Tracer
	ingested metric.Int64Counter
	rejected metric.Int64Counter
	// committed is the stamp of the watermark of this ingester's
	// partitions in microseconds, and pending the changes after the last
	// one read, for the lag gauge.
	committed atomic.Int64
	pending   atomic.Int64
}

// New builds an ingester.
func New(cfg Config, deps Deps) (*Ingester, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.JS == nil || deps.Store == nil || deps.Log == nil || deps.Tracer == nil || deps.Meter == nil {
		return nil, errors.New("ingester needs jetstream, store, logger, tracer and meter")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	m := deps.Meter.Meter("flatfhir/ingester")
	in := &Ingester{cfg: cfg, deps: deps, tracer: deps.Tracer.Tracer("flatfhir/ingester")}
	var err error
	if in.ingested, err = m.Int64Counter("flatfhir.ingest.resources", metric.WithDescription("resource versions inserted into ClickHouse")); err != nil {
		return nil, err
	}
	if in.rejected, err = m.Int64Counter("flatfhir.ingest.rejected", metric.WithDescription("change messages that were not valid and were skipped")); err != nil {
		return nil, err
	}
	// Shown as 0 from the start, not missing until the first rejection.
	in.rejected.Add(context.Background(), 0)
	if _, err = m.Float64ObservableGauge("flatfhir.ingest.lag", metric.WithUnit("s"),
		metric.WithDescription("now minus the watermark stamp of this ingester's partitions while changes wait to be ingested; 0 when caught up"),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			lag := 0.0
			if in.pending.Load() > 0 {
				lag = deps.Now().Sub(time.UnixMicro(in.committed.Load())).Seconds()
			}
			o.Observe(lag)
			return nil
		})); err != nil {
		return nil, err
	}
	if _, err = m.Int64ObservableGauge("flatfhir.ingest.lag.messages",
		metric.WithDescription("changes in this ingester's partitions of CHANGES not yet read for ingest (the stream's sequence minus what was read)"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(in.pending.Load())
			return nil
		})); err != nil {
		return nil, err
	}
	return in, nil
}

// Run consumes until ctx is done. Ingesters share the partitions of
// CHANGES (ADR 0008): each inserts the changes of the partitions it holds,
// and all stamp every change the same way.
func (in *Ingester) Run(ctx context.Context) error {
	kv, err := in.deps.JS.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", streams.BucketIngest, err)
	}
	c := newClaims(kv, in.cfg.LeaseTTL, in.deps.Log)
	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, fn := range []func(context.Context){c.watch, c.heartbeat, c.publishGlobal} {
		wg.Add(1)
		go func() { defer wg.Done(); fn(bg) }()
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		c.leave(rctx) // the others take the partitions over at once
		stopBG()
		wg.Wait()
	}()
	select {
	case <-ctx.Done():
		return nil
	case <-c.ready:
	}
	for ctx.Err() == nil {
		c.rebalance(ctx)
		held := c.heldList()
		if len(held) == 0 {
			select {
			case <-ctx.Done():
			case <-c.viewed:
			case <-time.After(in.cfg.LeaseTTL / 8):
			}
			continue
		}
		in.deps.Log.InfoContext(ctx, "ingester active", slog.String("owner", c.owner), slog.Any("partitions", held))
		err := in.active(ctx, c, held)
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, errRebalance) {
			in.deps.Log.WarnContext(ctx, "ingester lost its partitions", slog.Any("error", err))
		}
	}
	return nil
}

// active follows the changes of partitions held while this ingester holds
// them all, and returns why it stopped.
func (in *Ingester) active(ctx context.Context, c *claims, held []int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() { cancel(c.hold(ctx, held)) }()
	var delay time.Duration
	for {
		began := time.Now()
		err := in.follow(ctx, c, held)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		// A broken consumer or a failed insert: reload the watermarks and
		// resume from them.
		delay = resumeDelay(delay, time.Since(began))
		in.deps.Log.WarnContext(ctx, "ingester resuming from watermark", slog.Any("error", err), slog.Duration("in", delay))
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(delay):
		}
	}
}

// resumeDelay is the wait before resuming a follow that failed after
// running for ran, the last wait having been prev: 200 ms, doubled while
// follows keep failing at once (a shard down for minutes), up to 2 s; a
// follow that ran for a while starts again from 200 ms.
func resumeDelay(prev, ran time.Duration) time.Duration {
	const first, most = 200 * time.Millisecond, 2 * time.Second
	if prev == 0 || ran > 10*most {
		return first
	}
	return min(2*prev, most)
}

// follow reads CHANGES from the lowest watermark of the partitions held on,
// until an error. Every change is stamped; those of the partitions held
// are stored. Reading and stamping the next batch overlaps with inserting
// the previous one: batches go, in order, to one committer that inserts and
// then advances the partitions' watermarks.
//
// Holding every partition, the ingester reads the stream once. Holding
// some, it reads the headers of every change (to stamp them) and the
// bodies of its partitions' changes, from a second consumer filtered on
// their subjects, matching them up by sequence.
func (in *Ingester) follow(ctx context.Context, c *claims, held []int) error {
	marks := c.watermarks(held)
	var from streams.Watermark
	for i, p := range held {
		if wm := marks[p]; i == 0 || wm.Seq < from.Seq {
			from = wm
		}
	}
	in.committed.Store(from.Stamp.UnixMicro())
	stored, err := in.deps.Store.Recover(ctx, from.Seq, chstore.Micros(from.Stamp))
	if err != nil {
		return err
	}
	all := len(held) == streams.ChangePartitions
	stream, err := in.deps.JS.Stream(ctx, streams.StreamChanges)
	if err != nil {
		return fmt.Errorf("open stream %s: %w", streams.StreamChanges, err)
	}
	cons, deleteConsumer, err := openConsumer(ctx, stream, from.Seq+1, !all, nil)
	if err != nil {
		return err
	}
	defer deleteConsumer()
	var bodies *bodyReader
	if !all {
		bcons, deleteBodies, err := openConsumer(ctx, stream, from.Seq+1, false, streams.PartitionFilters(held))
		if err != nil {
			return err
		}
		defer deleteBodies()
		if bodies, err = newBodyReader(bcons, in.cfg.BatchSize); err != nil {
			return err
		}
		defer bodies.stop()
	}
	in.deps.Log.InfoContext(ctx, "ingester following changes", slog.Uint64("from_seq", from.Seq+1), slog.Int("partitions", len(held)))

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	commits := in.startCommitter(ctx, cancel, c, held, chstore.Micros(from.Stamp))
	defer commits.close()

	f := &follower{in: in, stream: stream, cons: cons, bodies: bodies, commits: commits, assigned: from, marks: marks, stored: stored,
		// A share of the partitions gets a share of each fetch's changes:
		// fetch more, so that a busy ingester's inserts keep their size.
		scale: streams.ChangePartitions / len(held)}
	for ctx.Err() == nil {
		if err := f.fetchOnce(ctx); err != nil {
			return err
		}
	}
	if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// openConsumer creates a follow's consumer on stream from seq on, of every
// change or of the subjects filters, and returns it with the function that
// deletes it. One ephemeral consumer per follow, in stream order, without
// acks. An ordered consumer would do, but it recreates itself on every
// fetch; this one is created once, and a message lost between the server
// and here (a gap in its delivery sequence) ends the follow, which resumes
// from the watermarks.
func openConsumer(ctx context.Context, stream jetstream.Stream, seq uint64, headersOnly bool, filters []string) (jetstream.Consumer, func(), error) {
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq,
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute,
		HeadersOnly: headersOnly, FilterSubjects: filters,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("create a consumer on %s: %w", streams.StreamChanges, err)
	}
	return cons, func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}, nil
}

// bodyReader reads the bodies of the partitions held, in stream order,
// pulling ahead of the headers.
type bodyReader struct {
	it        jetstream.MessagesContext
	delivered uint64
}

func newBodyReader(cons jetstream.Consumer, batch int) (*bodyReader, error) {
	it, err := cons.Messages(jetstream.PullMaxMessages(batch))
	if err != nil {
		return nil, fmt.Errorf("read change bodies: %w", err)
	}
	return &bodyReader{it: it}, nil
}

// bodyWait bounds the wait for a body whose header arrived: the stream
// holds it, so only a broken consumer delays it that long (one placed on a
// server whose replica of the stream lags, see checkDelivering).
const bodyWait = 10 * time.Second

// next returns the body of change seq: the next message of the consumer.
func (b *bodyReader) next(ctx context.Context, seq uint64) (jetstream.Msg, error) {
	wctx, cancel := context.WithTimeout(ctx, bodyWait)
	defer cancel()
	msg, err := b.it.Next(jetstream.NextContext(wctx))
	if err != nil {
		return nil, fmt.Errorf("read the body of change %d: %w", seq, err)
	}
	md, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("read change metadata: %w", err)
	}
	if md.Sequence.Consumer != b.delivered+1 {
		return nil, fmt.Errorf("fetch change bodies: delivery %d follows %d: a change was lost on the way", md.Sequence.Consumer, b.delivered)
	}
	b.delivered = md.Sequence.Consumer
	if md.Sequence.Stream != seq {
		return nil, fmt.Errorf("the body of change %d came as change %d", seq, md.Sequence.Stream)
	}
	return msg, nil
}

func (b *bodyReader) stop() { b.it.Stop() }

// committer commits the batches sent to it, in order, in its own goroutine.
// The first error cancels the follow's context with it as the cause.
type committer struct {
	ctx     context.Context
	commits chan pendingCommit
	done    chan struct{}
}

// pendingCommit is a batch on its way to ClickHouse and the watermarks:
// its rows, the position after them, and the changes whose versions a
// crashed predecessor stored (their change log is completed first).
type pendingCommit struct {
	rows      []chstore.Row
	bytes     int
	next      streams.Watermark
	recovered []uint64
	// behind: more changes waited in the stream when the batch was read.
	behind bool
}

// merge appends q, the batch after p, to p.
func (p *pendingCommit) merge(q pendingCommit) {
	p.rows = append(p.rows, q.rows...)
	p.bytes += q.bytes
	p.next = q.next
	p.recovered = append(p.recovered, q.recovered...)
	p.behind = q.behind
}

// maxInsertInterval caps the spacing of inserts, however many ingesters
// share the partitions: well within a claim's renewal period.
const maxInsertInterval = time.Second

// startCommitter starts a committer that commits under ctx, for partitions
// held, and cancels ctx on an error. from is the follow's starting stamp.
// It spaces its inserts by InsertInterval times the ingesters' number
// (16 / partitions held), gathering the batches that arrive meanwhile.
func (in *Ingester) startCommitter(ctx context.Context, cancel context.CancelCauseFunc, c *claims, held []int, from uint64) *committer {
	cm := &committer{ctx: ctx, commits: make(chan pendingCommit, 1), done: make(chan struct{})}
	scale := streams.ChangePartitions / len(held)
	interval := min(in.cfg.InsertInterval*time.Duration(scale), maxInsertInterval)
	g := gatherer{in: cm.commits, maxRows: in.cfg.BatchSize * scale, maxBytes: in.cfg.BatchBytes}
	go func() {
		defer close(cm.done)
		var last time.Time
		for {
			p, ok := g.next(ctx, time.Until(last.Add(interval)))
			if !ok {
				return
			}
			last = time.Now()
			if err := in.commit(ctx, c, held, p, from); err != nil {
				cancel(err)
				return
			}
		}
	}()
	return cm
}

// gatherer takes the batches sent to a committer and gathers them into
// inserts.
type gatherer struct {
	in                chan pendingCommit
	carry             *pendingCommit // a batch taken that the last insert had no room for
	closed            bool
	maxRows, maxBytes int
}

// next returns the next insert: the next batch, and, while the ingester is
// behind, those that arrive within wait after it, while they fit. false
// when the batches have ended. Batches gathered are never split: a
// message's versions go in one insert.
func (g *gatherer) next(ctx context.Context, wait time.Duration) (pendingCommit, bool) {
	var p pendingCommit
	switch {
	case g.carry != nil:
		p, g.carry = *g.carry, nil
	case g.closed:
		return p, false
	default:
		var ok bool
		if p, ok = <-g.in; !ok {
			return p, false
		}
	}
	if wait <= 0 || g.closed || !p.behind {
		return p, true
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for len(p.rows) < g.maxRows && p.bytes < g.maxBytes {
		select {
		case q, ok := <-g.in:
			if !ok {
				g.closed = true // the follow ended: insert what it read at once
				return p, true
			}
			if len(p.rows)+len(q.rows) > g.maxRows || p.bytes+q.bytes > g.maxBytes {
				g.carry = &q
				return p, true
			}
			p.merge(q)
			if !p.behind {
				return p, true // caught up: nothing more is coming soon
			}
		case <-timer.C:
			return p, true
		case <-ctx.Done():
			return p, true
		}
	}
	return p, true
}

// send hands a batch to the committer; false if the follow ended first.
func (cm *committer) send(p pendingCommit) bool {
	select {
	case cm.commits <- p:
		return true
	case <-cm.ctx.Done():
		return false
	}
}

// close waits for the committer to finish the batches sent, or to stop at
// an error.
func (cm *committer) close() {
	close(cm.commits)
	<-cm.done
}

// follower is the state of one follow between fetches.
type follower struct {
	in        *Ingester
	stream    jetstream.Stream // CHANGES
	cons      jetstream.Consumer
	bodies    *bodyReader // nil when cons delivers bodies
	commits   *committer
	scale     int                         // a busy fetch takes up to BatchSize times scale changes
	idle      bool                        // the last fetch found nothing
	delivered uint64                      // the consumer's delivery sequence of the last message
	assigned  streams.Watermark           // the position the stamps of the next messages follow
	marks     map[int]streams.Watermark   // the watermarks of the partitions held as the follow began
	stored    map[chstore.VersionKey]bool // versions already stored after the watermark, to skip
	recovered []uint64                    // changes of this batch some of whose versions were skipped
	// undelivered is the stream's last change, seen after a long pull that
	// brought nothing while it was beyond assigned; 0 when none.
	undelivered uint64
}

// fetchOnce fetches the next changes and sends them to the committer.
func (f *follower) fetchOnce(ctx context.Context) error {
	waited := f.idle // this fetch is a long pull
	batch, cancelFetch, err := f.fetch(ctx)
	if err != nil {
		return fmt.Errorf("fetch changes: %w", err)
	}
	rows, size, next, err := f.read(ctx, batch)
	cancelFetch()
	if err != nil {
		return err
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
		return fmt.Errorf("fetch changes: %w", err)
	}
	f.idle = next.Seq == f.assigned.Seq
	if !f.idle {
		f.commits.send(pendingCommit{rows: rows, bytes: size, next: next, recovered: f.takeRecovered(), behind: f.in.pending.Load() > 0})
		f.assigned = next
		f.undelivered = 0
		return nil
	}
	if waited {
		return f.checkDelivering(ctx)
	}
	return nil
}

// checkDelivering follows a long pull that brought nothing. A change the
// stream held one whole pull ago and the consumer has still not delivered
// means the consumer stalled: a follow's consumers are single-replica,
// placed at random among the stream's servers, and deliver only what
// that server's replica holds, so one placed on a server whose replica
// lags (or stopped catching up after a restart) delivers nothing new,
// without an error. The follow then ends, and the next one creates its
// consumers anew. Such a consumer is the likely cause of an export in
// the cluster test that once waited five minutes for the watermark, with
// nothing logged, after a NATS node was restarted.
func (f *follower) checkDelivering(ctx context.Context) error {
	if f.undelivered > f.assigned.Seq {
		return fmt.Errorf("the consumer of %s delivered nothing for %s, while the stream held change %d: %w",
			streams.StreamChanges, streams.PullWait, f.undelivered, errConsumerStalled)
	}
	f.undelivered = 0
	info, err := f.stream.Info(ctx)
	if err != nil {
		return nil // its leader may be being elected: look again after the next pull
	}
	if st := info.State; st.Msgs > 0 && st.LastSeq > f.assigned.Seq && st.LastSeq >= st.FirstSeq {
		f.undelivered = st.LastSeq
	}
	return nil
}

// errConsumerStalled ends a follow whose consumer stopped delivering.
var errConsumerStalled = errors.New("consumer stalled")

func (f *follower) takeRecovered() []uint64 {
	r := f.recovered
	f.recovered = nil
	return r
}

// fetch starts a fetch, and returns its batch with the function that ends
// it. Busy, a fetch takes a batch of up to BatchSize changes, waiting up to
// FlushInterval for it to fill; holding a share of the partitions, it takes
// up to BatchSize times 16 / partitions held, so that its inserts keep
// their size when it is behind. The wait stays FlushInterval: it is the
// latency of a change that arrives while changes are being ingested. Idle (the last fetch found nothing), it
// waits at the server for the next change and returns with it at once: an
// idle ingester makes one request per streams.PullWait and writes nothing.
func (f *follower) fetch(ctx context.Context) (jetstream.MessageBatch, context.CancelFunc, error) {
	if !f.idle {
		batch, err := f.cons.Fetch(f.in.cfg.BatchSize*f.scale, jetstream.FetchMaxWait(f.in.cfg.FlushInterval))
		return batch, func() {}, err
	}
	fctx, cancel := context.WithTimeout(ctx, streams.PullWait)
	batch, err := f.cons.Fetch(1, jetstream.FetchContext(fctx))
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return batch, cancel, nil
}

// read stamps the messages of batch after f.assigned and turns those of
// the partitions held into rows, sending what it has to the committer
// whenever it reaches BatchBytes, and returns the rows left, their bytes
// of resource and the position of the last message. A gap in the
// consumer's delivery sequence is an error: a change was lost.
func (f *follower) read(ctx context.Context, batch jetstream.MessageBatch) ([]chstore.Row, int, streams.Watermark, error) {
	rows := make([]chstore.Row, 0, 1024)
	next := f.assigned
	size := 0
	for msg := range batch.Messages() {
		md, err := msg.Metadata()
		if err != nil {
			return nil, 0, next, fmt.Errorf("read change metadata: %w", err)
		}
		if md.Sequence.Consumer != f.delivered+1 {
			return nil, 0, next, fmt.Errorf("fetch changes: delivery %d follows %d: a change was lost on the way", md.Sequence.Consumer, f.delivered)
		}
		f.delivered = md.Sequence.Consumer
		seq := md.Sequence.Stream
		stamp := nextStamp(next.Stamp, md.Timestamp)
		f.in.pending.Store(int64(md.NumPending))
		p, ok := streams.PartitionOfSubject(msg.Subject())
		mark, held := f.marks[p]
		if !ok || !held {
			next = streams.Watermark{Seq: seq, Stamp: stamp} // stamped, stored by another
			if !ok && held && seq > mark.Seq && msg.Subject() != streams.SubjectMark() {
				// Partition 0's holder speaks for a subject of no partition.
				f.in.rejected.Add(ctx, 1)
				f.in.deps.Log.WarnContext(ctx, "change skipped", slog.Uint64("seq", seq), slog.String("subject", msg.Subject()),
					slog.String("error", "the subject names no partition of "+streams.StreamChanges))
			}
			continue
		}
		body := msg
		if f.bodies != nil {
			if body, err = f.bodies.next(ctx, seq); err != nil {
				return nil, 0, next, err
			}
		}
		next = streams.Watermark{Seq: seq, Stamp: stamp}
		if seq <= mark.Seq {
			continue // stored before this follow began
		}
		versions, err := toRows(body, next)
		if err != nil {
			f.in.rejected.Add(ctx, 1)
			f.in.deps.Log.WarnContext(ctx, "change skipped", slog.Uint64("seq", seq), slog.String("subject", msg.Subject()), slog.Any("error", err))
			continue
		}
		if len(f.stored) > 0 {
			versions = f.unstored(seq, versions)
		}
		// A message's versions always go in one insert: a transaction
		// is stored, and passed by the watermark, whole (ADR 0003).
		for _, v := range versions {
			size += len(v.Body)
		}
		rows = append(rows, versions...)
		if size >= f.in.cfg.BatchBytes {
			// Insert what we have; the rest of the fetch continues the batch.
			if !f.commits.send(pendingCommit{rows: rows, bytes: size, next: next, recovered: f.takeRecovered(), behind: true}) {
				break
			}
			rows, size = make([]chstore.Row, 0, 1024), 0
		}
	}
	return rows, size, next, nil
}

// unstored leaves out of the versions of change seq those a crashed
// predecessor stored, and notes the change for its change log to be
// completed. They are named one by one: a transaction spread over shards
// may have been stored on some and not on others.
func (f *follower) unstored(seq uint64, versions []chstore.Row) []chstore.Row {
	out := versions[:0]
	for _, v := range versions {
		k := chstore.VersionKey{Seq: v.Seq, Type: v.Type, ID: v.ID}
		if f.stored[k] {
			delete(f.stored, k)
			if n := len(f.recovered); n == 0 || f.recovered[n-1] != seq {
				f.recovered = append(f.recovered, seq)
			}
			continue
		}
		out = append(out, v)
	}
	return out
}

// nextStamp is the stamp of the change after one stamped prev, accepted by
// the stream at accepted: strictly increasing, in microseconds.
func nextStamp(prev, accepted time.Time) time.Time {
	t := accepted.UTC().Truncate(time.Microsecond)
	if floor := prev.Add(time.Microsecond); t.Before(floor) {
		return floor
	}
	return t
}

// commit inserts a batch and then moves the watermarks of partitions held
// to the position after it, while this ingester's claims on them are
// valid: a claim that lapsed may be another's by now, so a lapsed claim
// waits for its renewal first.
func (in *Ingester) commit(ctx context.Context, c *claims, held []int, p pendingCommit, from uint64) error {
	if err := c.awaitValid(ctx, held); err != nil {
		return fmt.Errorf("insert up to change %d: %w", p.next.Seq, err)
	}
	if len(p.recovered) > 0 {
		if err := in.deps.Store.CompleteChangeLog(ctx, p.recovered, from); err != nil {
			return err
		}
	}
	if len(p.rows) > 0 {
		ctx, span := in.tracer.Start(ctx, "ingester.insert")
		err := in.deps.Store.Insert(ctx, p.rows)
		span.End()
		if err != nil {
			return err
		}
		in.ingested.Add(ctx, int64(len(p.rows)))
	}
	if err := c.advance(ctx, held, p.next); err != nil {
		return fmt.Errorf("advance the watermarks to %d: %w", p.next.Seq, err)
	}
	in.committed.Store(p.next.Stamp.UnixMicro())
	return nil
}

// toRows turns a change message into the resource versions it stores,
// stamped with wm: one for a put or a delete, one per change of a
// transaction. Any invalid change rejects the whole message.
func toRows(msg jetstream.Msg, wm streams.Watermark) ([]chstore.Row, error) {
	h := msg.Headers()
	switch h.Get(streams.HeaderOp) {
	case streams.OpMark:
		return nil, nil // stores nothing; the watermark passes it
	case streams.OpTransaction:
	default:
		row, err := toRow(streams.Change{Op: h.Get(streams.HeaderOp), Type: h.Get(streams.HeaderType), ID: h.Get(streams.HeaderID), Body: msg.Data()}, wm)
		if err != nil {
			return nil, err
		}
		return []chstore.Row{row}, nil
	}
	changes, err := streams.DecodeTransaction(msg.Data())
	if err != nil {
		return nil, err
	}
	rows := make([]chstore.Row, len(changes))
	for i, c := range changes {
		if rows[i], err = toRow(c, wm); err != nil {
			return nil, fmt.Errorf("transaction entry %d: %w", i, err)
		}
	}
	return rows, nil
}

// toRow turns one change into a resource version stamped with wm.
func toRow(c streams.Change, wm streams.Watermark) (chstore.Row, error) {
	version := strconv.FormatUint(wm.Seq, 10)
	row := chstore.Row{Seq: wm.Seq, LastUpdated: chstore.Micros(wm.Stamp)}
	switch c.Op {
	case streams.OpDelete:
		row.Type, row.ID, row.Deleted = c.Type, c.ID, true
		if !fhir.IsResourceType(row.Type) || !fhir.ValidID(row.ID) {
			return chstore.Row{}, fmt.Errorf("delete of %q/%q names no valid resource", row.Type, row.ID)
		}
		return row, nil
	case streams.OpPut:
		hdr, err := fhir.Inspect(c.Body, true)
		if err != nil {
			return chstore.Row{}, err
		}
		row.Type, row.ID = hdr.ResourceType, hdr.ID
		if c.Type != row.Type || c.ID != row.ID {
			return chstore.Row{}, fmt.Errorf("the change names %s/%s but the body is %s/%s", c.Type, c.ID, row.Type, row.ID)
		}
		if row.Patients, err = compartment.PatientIDs(row.Type, c.Body); err != nil {
			return chstore.Row{}, err
		}
		if row.Body, err = fhir.SetMeta(nil, c.Body, version, fhir.FormatInstant(wm.Stamp)); err != nil {
			return chstore.Row{}, err
		}
		return row, nil
	default:
		return chstore.Row{}, fmt.Errorf("unknown change operation %q", c.Op)
	}
}
