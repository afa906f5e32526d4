package writer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/streams"
)

// Config tunes a writer.
type Config struct {
	// Concurrency is how many tasks this writer runs at once.
	Concurrency int
	// CheckEvery is how often a running task checks for cancellation. It
	// tells JetStream it is alive five times per ack wait of the tasks'
	// consumer (streams.Config.TaskAckWait), and at least this often.
	CheckEvery time.Duration
	// CompressFiles stores export files gzip-compressed (ADR 0009), the
	// default: the object store holds and moves about a seventh of the
	// bytes, and the API sends them as stored to clients that accept gzip.
	// It costs the writers the compression, about what NATS saves on one
	// machine; the downloads gain the rest (benchmarks/README.md).
	CompressFiles bool
	// MaxDeliver must match the consumer's: the last attempt of a failing
	// task fails the job (status 500 with an OperationOutcome naming the
	// type, the id-hash range and the last error), never a partial export.
	MaxDeliver int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Concurrency: 2, CheckEvery: 2 * time.Second, CompressFiles: true, MaxDeliver: streams.DefaultConfig().TaskMaxDeliver}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Concurrency < 1 || c.CheckEvery <= 0 || c.MaxDeliver < 1 {
		return errors.New("writer concurrency, check interval and max deliver must be positive")
	}
	return nil
}

// Deps are what a writer works with.
type Deps struct {
	JS     jetstream.JetStream
	Store  *chstore.Store
	Log    *slog.Logger
	Tracer trace.TracerProvider
	Meter  metric.MeterProvider
}

// Writer is one member of the writer pool.
type Writer struct {
	cfg       Config
	deps      Deps
	tracer    trace.Tracer
	resources metric.Int64Counter
	bytes     metric.Int64Counter
	duration  metric.Float64Histogram
	retries   metric.Int64Counter
	ended     metric.Int64Counter
	jobs      streams.Jobs
	files     jetstream.ObjectStore
	heartbeat time.Duration // how often a running task tells JetStream it is alive
	// testWriting, set by tests only, runs when an attempt starts writing.
	testWriting func(streams.Task)
}

// New builds a writer.
func New(cfg Config, deps Deps) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.JS == nil || deps.Store == nil || deps.Log == nil || deps.Tracer == nil || deps.Meter == nil {
		return nil, errors.New("writer needs jetstream, store, logger, tracer and meter")
	}
	w := &Writer{cfg: cfg, deps: deps, tracer: deps.Tracer.Tracer("flatfhir/writer")}
	m := deps.Meter.Meter("flatfhir/writer")
	var err error
	if w.resources, err = m.Int64Counter("flatfhir.export.resources", metric.WithDescription("resources written to export files")); err != nil {
		return nil, err
	}
	if w.bytes, err = m.Int64Counter("flatfhir.export.bytes", metric.WithUnit("By")); err != nil {
		return nil, err
	}
	if w.duration, err = m.Float64Histogram("flatfhir.export.task_duration", metric.WithUnit("s")); err != nil {
		return nil, err
	}
	if w.retries, err = m.Int64Counter("flatfhir.export.task_retries", metric.WithDescription("export task attempts that failed and were sent back to be tried again")); err != nil {
		return nil, err
	}
	if w.ended, err = streams.ExportsEnded(m); err != nil {
		return nil, err
	}
	// Shown as 0 from the start, not missing until the first retry.
	w.retries.Add(context.Background(), 0)
	return w, nil
}

// Run works tasks until ctx is done.
func (w *Writer) Run(ctx context.Context) error {
	var err error
	if w.jobs, err = streams.OpenJobs(ctx, w.deps.JS); err != nil {
		return err
	}
	if w.files, err = w.deps.JS.ObjectStore(ctx, streams.ObjectFiles); err != nil {
		return fmt.Errorf("open object store %s: %w", streams.ObjectFiles, err)
	}
	cons, err := w.deps.JS.Consumer(ctx, streams.StreamExportTasks, streams.ConsumerWriters)
	if err != nil {
		return fmt.Errorf("open consumer %s: %w", streams.ConsumerWriters, err)
	}
	w.heartbeat = heartbeatEvery(cons.CachedInfo().Config.AckWait, w.cfg.CheckEvery)
	if err := streams.Work(ctx, cons, w.cfg.Concurrency, w.handle); err != nil {
		return fmt.Errorf("consume %s: %w", streams.StreamExportTasks, err)
	}
	return nil
}

// heartbeatEvery is how often a task in progress is reported alive: five
// times per ack wait, so that a task of a writer that died is handed to
// another within one ack wait, and one lost heartbeat changes nothing.
func heartbeatEvery(ackWait, checkEvery time.Duration) time.Duration {
	if ackWait <= 0 {
		return checkEvery
	}
	return min(checkEvery, max(ackWait/5, 100*time.Millisecond))
}

func (w *Writer) handle(ctx context.Context, msg jetstream.Msg) {
	var task streams.Task
	if err := streams.Decode(msg.Data(), &task); err != nil {
		w.deps.Log.ErrorContext(ctx, "malformed task dropped", slog.Any("error", err))
		_ = msg.Term()
		return
	}
	md, err := msg.Metadata()
	if err != nil {
		_ = msg.Nak()
		return
	}
	ctx = streams.ExtractTrace(ctx, msg.Headers())
	ctx, span := w.tracer.Start(ctx, "writer.task", trace.WithAttributes(
		attribute.String("job", task.JobID), attribute.String("task", task.TaskID),
		attribute.String("type", task.TypeLabel()), attribute.Int64("attempt", int64(md.NumDelivered))))
	defer span.End()
	start := time.Now()
	w.deps.Log.DebugContext(ctx, "task started", slog.String("task", task.TaskID), slog.Uint64("attempt", md.NumDelivered))
	err = w.run(ctx, msg, task, md.NumDelivered)
	w.deps.Log.DebugContext(ctx, "task ended", slog.String("task", task.TaskID), slog.Any("error", err), slog.Bool("ctx_done", ctx.Err() != nil))
	switch {
	case err == nil:
		w.duration.Record(ctx, time.Since(start).Seconds())
		_ = msg.Ack()
	case errors.Is(err, errJobGone):
		_ = msg.Ack()
	case ctx.Err() != nil:
		// Shutting down: another writer takes the task over.
		_ = msg.Nak()
	default:
		span.RecordError(err)
		w.deps.Log.ErrorContext(ctx, "export task failed", slog.String("job", task.JobID), slog.String("task", task.TaskID), slog.Uint64("attempt", md.NumDelivered), slog.Any("error", err))
		var perm *permanentError
		if errors.As(err, &perm) {
			w.failJob(ctx, task, err)
			_ = msg.Term()
			return
		}
		if int(md.NumDelivered) >= w.cfg.MaxDeliver {
			// The last attempt fails the export. A manifest without these
			// resources would be a silent hole: a client that chains
			// _since from its transactionTime would never receive them.
			w.failJob(ctx, task, fmt.Errorf("the %s resources with id hash in [%d, %d) could not be exported after %d attempts: %w",
				task.TypeLabel(), task.HashLo, task.HashHi, md.NumDelivered, err))
			_ = msg.Term()
			return
		}
		w.retries.Add(ctx, 1)
		_ = msg.NakWithDelay(retryDelay(md.NumDelivered))
	}
}

// retryDelay is the wait before attempt n+1 of a failed task: 1 s, doubling
// up to 30 s. With the default 8 attempts a task rides out about a minute
// and a half of a store that cannot answer (a shard restarting, its
// replicas catching up) before the export fails.
func retryDelay(n uint64) time.Duration {
	return min(time.Second<<min(max(n, 1)-1, 5), 30*time.Second)
}

// run writes the files of one attempt and records its result.
func (w *Writer) run(ctx context.Context, msg jetstream.Msg, task streams.Task, attempt uint64) error {
	if err := w.checkJob(ctx, task); err != nil {
		return err
	}
	if _, done, err := w.jobs.TaskResult(ctx, task.JobID, task.TaskID); err == nil && done {
		// An earlier attempt recorded its result but may have died before
		// announcing it: announce again (the message id drops duplicates).
		return w.announce(ctx, task)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go w.watch(ctx, cancel, msg, task)
	if w.testWriting != nil {
		w.testWriting(task)
	}
	err := w.write(ctx, task, attempt)
	if err != nil && errors.Is(context.Cause(ctx), errJobGone) {
		// The watch saw the export cancelled or removed and stopped the
		// attempt wherever it was (opening the read, announcing): nothing
		// failed, and there is nothing to retry.
		return errJobGone
	}
	return err
}

// write runs one attempt under the watch: it writes the files, records the
// result and announces it.
func (w *Writer) write(ctx context.Context, task streams.Task, attempt uint64) error {
	att := newAttachments(task.BaseURL, task.AttachmentBase)
	ps, err := w.pipelines(ctx, task, att)
	if err != nil {
		return err
	}
	out := newFileSet(w.files, task, attempt, w.cfg.CompressFiles, streams.FileChunk(w.deps.JS.Conn().MaxPayload()))
	if err := writeAll(ctx, ps, att, out); err != nil {
		out.abort(context.WithoutCancel(ctx))
		return err
	}
	result := streams.TaskResult{JobID: task.JobID, TaskID: task.TaskID, Attempt: attempt, Token: out.token, Files: out.files, AttachmentIndex: out.index}
	switch err := w.record(ctx, result); {
	case errors.Is(err, errOtherAttempt):
		// Another attempt won the race: drop ours so no line is listed twice.
		out.abort(context.WithoutCancel(ctx))
		return nil
	case err != nil:
		// Whether the result was stored is unknown: the files stay (the
		// job's clean-up removes them if they end up unlisted), and the
		// task is retried, which finds the result if it was stored.
		return err
	}
	if w.cancelledMeanwhile(ctx, task) {
		// The job's clean-up may have run before these files and this
		// result were stored, and then left them behind for good.
		out.abort(context.WithoutCancel(ctx))
		w.dropResult(ctx, result)
		return errJobGone
	}
	for _, f := range out.files {
		w.resources.Add(ctx, int64(f.Count), metric.WithAttributes(attribute.String("type", f.Type)))
		w.bytes.Add(ctx, f.Bytes)
	}
	return w.announce(ctx, task)
}
