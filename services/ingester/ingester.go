package ingester

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
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
	// LeaseTTL is how long the active ingester's lease outlives its last
	// renewal: a standby takes over that long after the active one dies.
	LeaseTTL time.Duration
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.BatchSize < 1 || c.BatchBytes < 1 || c.FlushInterval <= 0 || c.LeaseTTL <= 0 {
		return fmt.Errorf("ingester batch size, batch bytes, flush interval and lease TTL must be positive")
	}
	return nil
}

// DefaultConfig returns sane defaults.
func DefaultConfig() Config {
	return Config{BatchSize: 10000, BatchBytes: 16 << 20, FlushInterval: 50 * time.Millisecond, LeaseTTL: 10 * time.Second}
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
	rev      uint64 // of the watermark, owned by the committer
	lease    *streams.Lease
	// committed is the stamp of the committed watermark in microseconds,
	// and pending the changes after the last one read, for the lag gauge.
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
	if _, err = m.Float64ObservableGauge("flatfhir.ingest.lag", metric.WithUnit("s"),
		metric.WithDescription("now minus the watermark stamp while changes wait to be ingested; 0 when caught up"),
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
	return in, nil
}

// Run consumes until ctx is done. One ingester is active at a time: it
// holds the ingest lease, and the others wait to take it over.
func (in *Ingester) Run(ctx context.Context) error {
	kv, err := in.deps.JS.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", streams.BucketIngest, err)
	}
	in.lease = streams.NewLease(kv, streams.KeyIngestLease, in.cfg.LeaseTTL)
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		in.lease.Release(rctx) // a standby takes over at once
	}()
	for {
		if err := in.lease.Acquire(ctx); err != nil {
			return nil // ctx is done
		}
		in.deps.Log.InfoContext(ctx, "ingester active", slog.String("lease", in.lease.Owner()))
		err := in.active(ctx, kv)
		if ctx.Err() != nil {
			return nil
		}
		in.deps.Log.WarnContext(ctx, "ingester standing by", slog.Any("error", err))
	}
}

// active follows CHANGES while this ingester holds the lease, and returns
// why it stopped holding it.
func (in *Ingester) active(ctx context.Context, kv jetstream.KeyValue) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() { cancel(in.lease.Hold(ctx)) }()
	for {
		err := in.follow(ctx, kv)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		// A broken consumer or a failed insert: reload the watermark and
		// resume from it.
		in.deps.Log.WarnContext(ctx, "ingester resuming from watermark", slog.Any("error", err))
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// follow reads CHANGES from the watermark on, until an error. Reading and
// stamping the next batch overlaps with inserting the previous one: batches
// go, in order, to one committer that inserts and then advances the
// watermark.
func (in *Ingester) follow(ctx context.Context, kv jetstream.KeyValue) error {
	wm, stored, err := in.resume(ctx)
	if err != nil {
		return err
	}
	cons, deleteConsumer, err := in.openConsumer(ctx, wm.Seq+1)
	if err != nil {
		return err
	}
	defer deleteConsumer()
	in.deps.Log.InfoContext(ctx, "ingester following changes", slog.Uint64("from_seq", wm.Seq+1))

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	commits := in.startCommitter(ctx, cancel, kv)
	defer commits.close()

	f := &follower{in: in, cons: cons, commits: commits, assigned: wm, stored: stored}
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

// resume loads the watermark, and the versions a crashed predecessor
// inserted after it without advancing it: they are replayed with the same
// seqs and stamps, so they are skipped rather than stored twice.
func (in *Ingester) resume(ctx context.Context) (streams.Watermark, map[chstore.VersionKey]bool, error) {
	wm, rev, err := streams.LoadWatermark(ctx, in.deps.JS)
	if err != nil {
		return streams.Watermark{}, nil, err
	}
	in.rev = rev
	in.committed.Store(wm.Stamp.UnixMicro())
	stored, err := in.deps.Store.Recover(ctx, wm.Seq, chstore.Micros(wm.Stamp))
	if err != nil {
		return streams.Watermark{}, nil, err
	}
	if len(stored) > 0 {
		in.deps.Log.WarnContext(ctx, "ingester skips versions already stored after the watermark", slog.Int("versions", len(stored)))
	}
	return wm, stored, nil
}

// openConsumer creates the follow's consumer from seq on, and returns it with
// the function that deletes it. One ephemeral consumer per follow, in stream
// order, without acks. An ordered consumer would do, but it recreates itself
// on every fetch; this one is created once, and a message lost between the
// server and here (a gap in its delivery sequence) ends the follow, which
// resumes from the watermark.
func (in *Ingester) openConsumer(ctx context.Context, seq uint64) (jetstream.Consumer, func(), error) {
	stream, err := in.deps.JS.Stream(ctx, streams.StreamChanges)
	if err != nil {
		return nil, nil, fmt.Errorf("open stream %s: %w", streams.StreamChanges, err)
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq,
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute,
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

// committer commits the batches sent to it, in order, in its own goroutine.
// The first error cancels the follow's context with it as the cause.
type committer struct {
	ctx     context.Context
	commits chan pendingCommit
	done    chan struct{}
}

// pendingCommit is a batch on its way to ClickHouse and the watermark.
type pendingCommit struct {
	rows []chstore.Row
	next streams.Watermark
}

// startCommitter starts a committer that commits under ctx and cancels it on
// an error.
func (in *Ingester) startCommitter(ctx context.Context, cancel context.CancelCauseFunc, kv jetstream.KeyValue) *committer {
	c := &committer{ctx: ctx, commits: make(chan pendingCommit, 1), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for p := range c.commits {
			if err := in.commit(ctx, kv, p.rows, p.next); err != nil {
				cancel(err)
				return
			}
		}
	}()
	return c
}

// send hands rows and the watermark after them to the committer; false if
// the follow ended first.
func (c *committer) send(rows []chstore.Row, next streams.Watermark) bool {
	select {
	case c.commits <- pendingCommit{rows, next}:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// close waits for the committer to finish the batches sent, or to stop at
// an error.
func (c *committer) close() {
	close(c.commits)
	<-c.done
}

// follower is the state of one follow between fetches.
type follower struct {
	in        *Ingester
	cons      jetstream.Consumer
	commits   *committer
	idle      bool                        // the last fetch found nothing
	delivered uint64                      // the consumer's delivery sequence of the last message
	assigned  streams.Watermark           // the position the stamps of the next messages follow
	stored    map[chstore.VersionKey]bool // versions already stored after the watermark, to skip
}

// fetchOnce fetches the next changes and sends them to the committer.
func (f *follower) fetchOnce(ctx context.Context) error {
	batch, cancelFetch, err := f.fetch(ctx)
	if err != nil {
		return fmt.Errorf("fetch changes: %w", err)
	}
	rows, next, err := f.read(ctx, batch)
	cancelFetch()
	if err != nil {
		return err
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
		return fmt.Errorf("fetch changes: %w", err)
	}
	f.idle = next.Seq == f.assigned.Seq
	if !f.idle {
		f.commits.send(rows, next)
		f.assigned = next
	}
	return nil
}

// fetch starts a fetch, and returns its batch with the function that ends
// it. Busy, a fetch takes a batch of up to BatchSize changes, waiting up to
// FlushInterval for it to fill. Idle (the last fetch found nothing), it
// waits at the server for the next change and returns with it at once: an
// idle ingester makes one request per streams.PullWait and writes nothing.
func (f *follower) fetch(ctx context.Context) (jetstream.MessageBatch, context.CancelFunc, error) {
	if !f.idle {
		batch, err := f.cons.Fetch(f.in.cfg.BatchSize, jetstream.FetchMaxWait(f.in.cfg.FlushInterval))
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

// read turns the messages of batch into rows stamped after f.assigned,
// sending what it has to the committer whenever it reaches BatchBytes, and
// returns the rows left with the position of the last message. A gap in the
// consumer's delivery sequence is an error: a change was lost.
func (f *follower) read(ctx context.Context, batch jetstream.MessageBatch) ([]chstore.Row, streams.Watermark, error) {
	rows := make([]chstore.Row, 0, 1024)
	next := f.assigned
	size := 0
	for msg := range batch.Messages() {
		md, err := msg.Metadata()
		if err != nil {
			return nil, next, fmt.Errorf("read change metadata: %w", err)
		}
		if md.Sequence.Consumer != f.delivered+1 {
			return nil, next, fmt.Errorf("fetch changes: delivery %d follows %d: a change was lost on the way", md.Sequence.Consumer, f.delivered)
		}
		f.delivered = md.Sequence.Consumer
		next.Seq = md.Sequence.Stream
		next.Stamp = nextStamp(next.Stamp, md.Timestamp)
		f.in.pending.Store(int64(md.NumPending))
		versions, err := toRows(msg, next)
		if err != nil {
			f.in.rejected.Add(ctx, 1)
			f.in.deps.Log.WarnContext(ctx, "change skipped", slog.Uint64("seq", next.Seq), slog.String("subject", msg.Subject()), slog.Any("error", err))
			continue
		}
		if len(f.stored) > 0 {
			versions = f.unstored(versions)
		}
		// A message's versions always go in one insert: a transaction
		// is stored, and passed by the watermark, whole (ADR 0003).
		for _, v := range versions {
			size += len(v.Body)
		}
		rows = append(rows, versions...)
		if size >= f.in.cfg.BatchBytes {
			// Insert what we have; the rest of the fetch continues the batch.
			if !f.commits.send(rows, next) {
				break
			}
			rows, size = make([]chstore.Row, 0, 1024), 0
		}
	}
	return rows, next, nil
}

// unstored leaves out of versions those a crashed predecessor stored. They
// are named one by one: a transaction spread over shards may have been
// stored on some and not on others.
func (f *follower) unstored(versions []chstore.Row) []chstore.Row {
	out := versions[:0]
	for _, v := range versions {
		k := chstore.VersionKey{Seq: v.Seq, Type: v.Type, ID: v.ID}
		if f.stored[k] {
			delete(f.stored, k)
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

// commit inserts rows and then moves the watermark to next, while this
// ingester's lease is valid: a lease that lapsed may be another's by now.
func (in *Ingester) commit(ctx context.Context, kv jetstream.KeyValue, rows []chstore.Row, next streams.Watermark) error {
	if !in.lease.Valid() {
		return fmt.Errorf("insert up to change %d: %w", next.Seq, streams.ErrLeaseLost)
	}
	if len(rows) > 0 {
		ctx, span := in.tracer.Start(ctx, "ingester.insert")
		err := in.deps.Store.Insert(ctx, rows)
		span.End()
		if err != nil {
			return err
		}
		in.ingested.Add(ctx, int64(len(rows)))
	}
	var rev uint64
	var err error
	if in.rev == 0 {
		rev, err = kv.Create(ctx, streams.KeyWatermark, streams.Encode(next))
	} else {
		rev, err = kv.Update(ctx, streams.KeyWatermark, streams.Encode(next), in.rev)
	}
	if err != nil {
		return fmt.Errorf("advance watermark to %d: %w", next.Seq, err)
	}
	in.rev = rev
	in.committed.Store(next.Stamp.UnixMicro())
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
