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
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.BatchSize < 1 || c.BatchBytes < 1 || c.FlushInterval <= 0 {
		return fmt.Errorf("ingester batch size, batch bytes and flush interval must be positive")
	}
	return nil
}

// DefaultConfig returns sane defaults.
func DefaultConfig() Config {
	return Config{BatchSize: 10000, BatchBytes: 16 << 20, FlushInterval: 50 * time.Millisecond}
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

// Run consumes until ctx is done.
func (in *Ingester) Run(ctx context.Context) error {
	kv, err := in.deps.JS.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", streams.BucketIngest, err)
	}
	for {
		err := in.follow(ctx, kv)
		if ctx.Err() != nil {
			return nil
		}
		// A lost CAS (another ingester moved the watermark) or a broken
		// consumer: reload the watermark and resume from it.
		in.deps.Log.WarnContext(ctx, "ingester resuming from watermark", slog.Any("error", err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// follow reads CHANGES from the watermark on, until an error. Reading and
// stamping the next batch overlaps with inserting the previous one: batches
// go, in order, to one committer that inserts and then advances the
// watermark.
func (in *Ingester) follow(ctx context.Context, kv jetstream.KeyValue) error {
	wm, rev, err := streams.LoadWatermark(ctx, in.deps.JS)
	if err != nil {
		return err
	}
	in.rev = rev
	in.committed.Store(wm.Stamp.UnixMicro())
	// Versions a crashed predecessor inserted without advancing the
	// watermark: they are replayed with the same seqs and stamps, so skip
	// them rather than store them twice.
	stored, err := in.deps.Store.Recover(ctx, wm.Seq, chstore.Micros(wm.Stamp))
	if err != nil {
		return err
	}
	if len(stored) > 0 {
		in.deps.Log.WarnContext(ctx, "ingester skips versions already stored after the watermark", slog.Int("versions", len(stored)))
	}
	// One ephemeral consumer per follow, in stream order, without acks. An
	// ordered consumer would do, but it recreates itself on every fetch;
	// this one is created once, and a message lost between the server and
	// here (a gap in its delivery sequence) ends the follow, which resumes
	// from the watermark.
	stream, err := in.deps.JS.Stream(ctx, streams.StreamChanges)
	if err != nil {
		return fmt.Errorf("open stream %s: %w", streams.StreamChanges, err)
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: wm.Seq + 1,
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute,
	})
	if err != nil {
		return fmt.Errorf("create a consumer on %s: %w", streams.StreamChanges, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	var delivered uint64 // the consumer's delivery sequence of the last message
	in.deps.Log.InfoContext(ctx, "ingester following changes", slog.Uint64("from_seq", wm.Seq+1))

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	commits := make(chan pendingCommit, 1)
	committerDone := make(chan struct{})
	go func() {
		defer close(committerDone)
		for c := range commits {
			if err := in.commit(ctx, kv, c.rows, c.next); err != nil {
				cancel(err)
				return
			}
		}
	}()
	defer func() { close(commits); <-committerDone }()
	send := func(rows []chstore.Row, next streams.Watermark) bool {
		select {
		case commits <- pendingCommit{rows, next}:
			return true
		case <-ctx.Done():
			return false
		}
	}

	assigned := wm // the position the stamps of the next messages follow
	idle := false
	for ctx.Err() == nil {
		// Busy, a fetch takes a batch of up to BatchSize changes, waiting
		// up to FlushInterval for it to fill. Idle (the last fetch found
		// nothing), it waits at the server for the next change and returns
		// with it at once: an idle ingester makes one request per
		// streams.PullWait and writes nothing.
		var batch jetstream.MessageBatch
		var cancelFetch context.CancelFunc = func() {}
		if idle {
			var fctx context.Context
			fctx, cancelFetch = context.WithTimeout(ctx, streams.PullWait)
			batch, err = cons.Fetch(1, jetstream.FetchContext(fctx))
		} else {
			batch, err = cons.Fetch(in.cfg.BatchSize, jetstream.FetchMaxWait(in.cfg.FlushInterval))
		}
		if err != nil {
			cancelFetch()
			return fmt.Errorf("fetch changes: %w", err)
		}
		rows := make([]chstore.Row, 0, 1024)
		next := assigned
		size := 0
		for msg := range batch.Messages() {
			md, err := msg.Metadata()
			if err != nil {
				cancelFetch()
				return fmt.Errorf("read change metadata: %w", err)
			}
			if md.Sequence.Consumer != delivered+1 {
				cancelFetch()
				return fmt.Errorf("fetch changes: delivery %d follows %d: a change was lost on the way", md.Sequence.Consumer, delivered)
			}
			delivered = md.Sequence.Consumer
			next.Seq = md.Sequence.Stream
			next.Stamp = nextStamp(next.Stamp, md.Timestamp)
			in.pending.Store(int64(md.NumPending))
			if len(stored) > 0 && stored[next.Seq] {
				delete(stored, next.Seq)
				continue
			}
			versions, err := toRows(msg, next)
			if err != nil {
				in.rejected.Add(ctx, 1)
				in.deps.Log.WarnContext(ctx, "change skipped", slog.Uint64("seq", next.Seq), slog.String("subject", msg.Subject()), slog.Any("error", err))
				continue
			}
			// A message's versions always go in one insert: a transaction
			// is stored, and passed by the watermark, whole (ADR 0003).
			for _, v := range versions {
				size += len(v.Body)
			}
			rows = append(rows, versions...)
			if size >= in.cfg.BatchBytes {
				// Insert what we have; the rest of the fetch continues the batch.
				if !send(rows, next) {
					break
				}
				rows, size = make([]chstore.Row, 0, 1024), 0
			}
		}
		cancelFetch()
		if err := batch.Error(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("fetch changes: %w", err)
		}
		idle = next.Seq == assigned.Seq
		if !idle {
			send(rows, next)
			assigned = next
		}
	}
	if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// pendingCommit is a batch on its way to ClickHouse and the watermark.
type pendingCommit struct {
	rows []chstore.Row
	next streams.Watermark
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

// commit inserts rows and then moves the watermark to next.
func (in *Ingester) commit(ctx context.Context, kv jetstream.KeyValue, rows []chstore.Row, next streams.Watermark) error {
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
