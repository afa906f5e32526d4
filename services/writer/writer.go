package writer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/typefilter"
	"github.com/flatfhir/flatfhir/streams"
)

// Config tunes a writer.
type Config struct {
	// Concurrency is how many tasks this writer runs at once.
	Concurrency int
	// CheckEvery is how often a running task checks for cancellation and
	// tells JetStream it is alive.
	CheckEvery time.Duration
	// MaxDeliver must match the consumer's: the last attempt of a failing
	// task fails the job (status 500 with an OperationOutcome naming the
	// type, the id-hash range and the last error), never a partial export.
	MaxDeliver int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Concurrency: 2, CheckEvery: 2 * time.Second, MaxDeliver: streams.DefaultConfig().TaskMaxDeliver}
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
	jobs      streams.Jobs
	files     jetstream.ObjectStore
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
	if err := streams.Work(ctx, cons, w.cfg.Concurrency, w.handle); err != nil {
		return fmt.Errorf("consume %s: %w", streams.StreamExportTasks, err)
	}
	return nil
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
		attribute.String("type", task.Type), attribute.Int64("attempt", int64(md.NumDelivered))))
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
			w.failJob(ctx, task, fmt.Errorf("the %s resources with id hash in [%d, %d) could not be read after %d attempts: %w",
				task.Type, task.HashLo, task.HashHi, md.NumDelivered, err))
			_ = msg.Term()
			return
		}
		_ = msg.NakWithDelay(time.Duration(md.NumDelivered) * time.Second)
	}
}

// errJobGone means the job was cancelled or removed: the task is moot.
var errJobGone = errors.New("job cancelled or removed")

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

	out := newFileSet(w.files, task, attempt)
	r, empty, err := w.scope(ctx, task)
	if err != nil {
		return err
	}
	if task.Type == "Binary" && len(task.ExportTypes) > 0 {
		// Only patients' Binaries, which go out as DocumentReferences.
		r.InCompartment = true
	}
	elements, err := fhir.ParseElements(task.Elements)
	if err != nil {
		return &permanentError{fmt.Errorf("_elements: %v", err)}
	}
	filter, err := typefilter.ParseAt(task.TypeFilter, task.Until) // ap means the same in every task
	if err != nil {
		return &permanentError{fmt.Errorf("_typeFilter: %v", err)}
	}
	var trimmed []byte
	att := newAttachments(task.BaseURL, task.AttachmentBase)
	emit := func(id string, body []byte) error {
		typ, converted := task.Type, false
		if typ == "Binary" {
			// A patient's Binary goes out as a DocumentReference.
			doc, ok, err := binaryAsDocumentReference(body, att)
			if err != nil {
				return fmt.Errorf("convert Binary/%s: %w", id, err)
			}
			if ok {
				typ, body, converted = "DocumentReference", doc, true
			}
			if len(task.ExportTypes) > 0 && !slices.Contains(task.ExportTypes, typ) {
				// The export wants the DocumentReferences of patients'
				// Binaries, not Binaries (planner: binaryAsDocuments).
				return nil
			}
		}
		if match, err := filter.Match(typ, body); err != nil {
			return fmt.Errorf("apply _typeFilter to %s/%s: %w", typ, id, err)
		} else if !match {
			return nil
		}
		if !elements.IsZero() {
			var err error
			if trimmed, _, err = elements.Apply(trimmed[:0], typ, body); err != nil {
				return fmt.Errorf("apply _elements to a %s: %w", typ, err)
			}
			body = trimmed
		}
		// Attachment urls naming a Binary of this server become absolute
		// URLs served under the export's authorization.
		body, err := att.rewrite(typ, body)
		if err != nil {
			return fmt.Errorf("rewrite attachment urls of %s/%s: %w", typ, id, err)
		}
		if converted && carriesURL(body, att.urlOf(id)) {
			att.name(id)
		}
		return out.write(ctx, typ, streams.KindOutput, body)
	}
	switch {
	case empty:
	case task.Associated != "":
		err = w.associatedProvenance(ctx, task, r, filter, emit)
	case task.Type == "Provenance" && task.Level != streams.LevelSystem:
		err = w.provenance(ctx, r, emit)
	default:
		err = w.deps.Store.ReadLatest(ctx, r, emit)
	}
	// An associated task lists no deletions: a deleted Provenance's targets
	// are gone with its body.
	if err == nil && !empty && !task.Since.IsZero() && task.Associated == "" {
		// A Binary known to have been a patient's (in a compartment, or in
		// a task that exports only those) went out as a DocumentReference:
		// its deletion names that.
		asDoc := task.Type == "Binary" && r.InCompartment
		err = w.deps.Store.ReadDeleted(ctx, r, func(id string, _ []byte) error {
			if asDoc {
				return out.writeDeleted(ctx, "DocumentReference", binaryDocID(id))
			}
			return out.writeDeleted(ctx, task.Type, id)
		})
	}
	if err == nil {
		err = out.close(ctx)
	}
	if err == nil {
		err = out.writeIndex(ctx, att.index())
	}
	if err != nil {
		out.abort(context.WithoutCancel(ctx))
		if cause := context.Cause(ctx); errors.Is(cause, errJobGone) {
			return errJobGone
		}
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
	for _, f := range out.files {
		w.resources.Add(ctx, int64(f.Count), metric.WithAttributes(attribute.String("type", f.Type)))
		w.bytes.Add(ctx, f.Bytes)
	}
	return w.announce(ctx, task)
}

// carriesURL reports whether a converted Binary's DocumentReference line
// still holds its attachment url u after _elements: the line was encoded
// by encoding/json, so the url is there as json.Marshal spells it.
func carriesURL(line []byte, u string) bool {
	if u == "" {
		return false
	}
	quoted, err := json.Marshal(u)
	return err == nil && bytes.Contains(line, quoted)
}

// errOtherAttempt means another attempt's result is recorded for the task.
var errOtherAttempt = streams.ErrOtherAttempt

// recordTimeout bounds recording a result, which runs even while the
// writer shuts down: files written in full are worth keeping.
const recordTimeout = 10 * time.Second

// record stores an attempt's result unless one is there already (see
// streams.Jobs.RecordTaskResult).
func (w *Writer) record(ctx context.Context, result streams.TaskResult) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	return w.jobs.RecordTaskResult(ctx, result)
}

// announce tells planners that a task has its result.
func (w *Writer) announce(ctx context.Context, task streams.Task) error {
	m := nats.NewMsg(streams.SubjectJobDone(task.JobID))
	m.Data = []byte(task.TaskID)
	m.Header.Set(jetstream.MsgIDHeader, "done."+task.JobID+"."+task.TaskID)
	streams.InjectTrace(ctx, m.Header)
	if _, err := w.deps.JS.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("announce task %s done: %w", task.TaskID, err)
	}
	return nil
}

// scope is the range a task reads: its type and hash range as of Until,
// narrowed by level to compartments. empty means nothing can match (a
// group without patient members).
func (w *Writer) scope(ctx context.Context, task streams.Task) (r chstore.Range, empty bool, err error) {
	r = chstore.Range{Type: task.Type, HashLo: task.HashLo, HashHi: task.HashHi, Since: chstore.Micros(task.Since), Until: chstore.Micros(task.Until)}
	switch task.Level {
	case streams.LevelPatient:
		r.Patients, r.InCompartment = task.Patients, true
	case streams.LevelGroup:
		// Membership as the group stood at transactionTime.
		body, ok, err := w.deps.Store.ReadOne(ctx, "Group", task.GroupID, r.Until)
		if err != nil {
			return r, false, err
		}
		if !ok {
			return r, false, &permanentError{fmt.Errorf("Group/%s did not exist at the export's transactionTime", task.GroupID)}
		}
		members, err := compartment.GroupPatients(body)
		if err != nil {
			return r, false, &permanentError{fmt.Errorf("Group/%s: %v", task.GroupID, err)}
		}
		if len(task.Patients) > 0 {
			members = intersect(members, task.Patients)
		}
		r.Patients, r.InCompartment = members, true
		return r, len(members) == 0, nil
	}
	return r, false, nil
}

// permanentError is a task failure no retry can mend.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func intersect(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, v := range b {
		in[v] = true
	}
	var out []string
	for _, v := range a {
		if in[v] {
			out = append(out, v)
		}
	}
	return out
}

// checkJob fails with errJobGone when the task's job is no longer running.
func (w *Writer) checkJob(ctx context.Context, task streams.Task) error {
	job, _, err := w.jobs.Get(ctx, task.JobID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return errJobGone
	}
	if err != nil {
		return err
	}
	if job.Status != streams.JobRunning {
		return errJobGone
	}
	return nil
}

// watch keeps the task message alive and cancels the attempt promptly when
// the job is cancelled.
func (w *Writer) watch(ctx context.Context, cancel context.CancelCauseFunc, msg jetstream.Msg, task streams.Task) {
	t := time.NewTicker(w.cfg.CheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = msg.InProgress()
			if err := w.checkJob(ctx, task); errors.Is(err, errJobGone) {
				cancel(errJobGone)
				return
			}
		}
	}
}

// failJob marks the job failed: a task failed in a way no retry can mend,
// or ran out of attempts. It is recorded even when the writer is stopping,
// since the task message is terminated either way.
func (w *Writer) failJob(ctx context.Context, task streams.Task, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err := w.jobs.Update(ctx, task.JobID, func(j *streams.Job) bool {
		if j.Status != streams.JobRunning {
			return false
		}
		j.Status = streams.JobFailed
		j.Error = fmt.Sprintf("export of %s failed: %v", task.Type, cause)
		return true
	})
	if err != nil {
		w.deps.Log.ErrorContext(ctx, "mark job failed", slog.String("job", task.JobID), slog.Any("error", err))
	}
}
