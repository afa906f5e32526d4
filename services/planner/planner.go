package planner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// Config tunes planning.
type Config struct {
	// TaskRows is the target number of resource versions per task.
	TaskRows int
	// MaxFileResources and MaxFileBytes roll output files over.
	MaxFileResources int
	MaxFileBytes     int64
	// Retention is how long a completed export's files stay available.
	Retention time.Duration
	// WatermarkTimeout fails a kick-off whose changes are not ingested in time.
	WatermarkTimeout time.Duration
	// Concurrency bounds the messages handled at once.
	Concurrency int
	// SweepEvery is how often expired exports are looked for.
	SweepEvery time.Duration
	// ChangeLogRetention, when positive, is how long versions stay in the
	// change log that serves _since reads (ADR 0005): whole months older
	// than that are dropped, checked every TrimEvery. _since values older
	// than what is kept read the versions table instead. 0 keeps it all.
	ChangeLogRetention time.Duration
	TrimEvery          time.Duration
	// TrimGrace is the wait between raising the change log's horizon and
	// dropping months (chstore.ChangeLogGrace; shorter only in tests).
	TrimGrace time.Duration
	// Shards is how many shards the store has (0 or 1: one); New takes
	// it from the store. A task's rows never span two (ADR 0007).
	Shards int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		TaskRows: 50_000, MaxFileResources: 100_000, MaxFileBytes: 128 << 20,
		Retention: 24 * time.Hour, WatermarkTimeout: 10 * time.Minute, Concurrency: 16,
		SweepEvery: time.Minute, TrimEvery: time.Hour, TrimGrace: chstore.ChangeLogGrace,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.TaskRows < 1 || c.MaxFileResources < 1 || c.MaxFileBytes < 1 || c.Retention <= 0 || c.WatermarkTimeout <= 0 || c.Concurrency < 1 || c.SweepEvery <= 0 {
		return errors.New("planner task rows, file limits, retention, watermark timeout, concurrency and sweep interval must be positive")
	}
	if c.ChangeLogRetention < 0 || c.TrimGrace < 0 || (c.ChangeLogRetention > 0 && c.TrimEvery <= 0) {
		return errors.New("planner change log retention and trim grace must not be negative, and retention needs a positive trim interval")
	}
	return nil
}

// Deps are what the planner works with.
type Deps struct {
	JS     jetstream.JetStream
	Store  *chstore.Store
	Log    *slog.Logger
	Tracer trace.TracerProvider
	Meter  metric.MeterProvider
	Now    func() time.Time
}

// Planner is the EXPORT_JOBS consumer.
type Planner struct {
	cfg     Config
	deps    Deps
	tracer  trace.Tracer
	metrics metrics
	jobs    streams.Jobs
	files   jetstream.ObjectStore
	tasks   jetstream.Stream
}

// New builds a planner.
func New(cfg Config, deps Deps) (*Planner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.JS == nil || deps.Store == nil || deps.Log == nil || deps.Tracer == nil || deps.Meter == nil {
		return nil, errors.New("planner needs jetstream, store, logger, tracer and meter")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if cfg.Shards == 0 {
		cfg.Shards = deps.Store.Shards()
	}
	p := &Planner{cfg: cfg, deps: deps, tracer: deps.Tracer.Tracer("flatfhir/planner")}
	var err error
	if p.metrics, err = newMetrics(deps.Meter); err != nil {
		return nil, err
	}
	return p, nil
}

// Run consumes until ctx is done.
func (p *Planner) Run(ctx context.Context) error {
	var err error
	if p.jobs, err = streams.OpenJobs(ctx, p.deps.JS); err != nil {
		return err
	}
	if p.files, err = p.deps.JS.ObjectStore(ctx, streams.ObjectFiles); err != nil {
		return fmt.Errorf("open object store %s: %w", streams.ObjectFiles, err)
	}
	if p.tasks, err = p.deps.JS.Stream(ctx, streams.StreamExportTasks); err != nil {
		return fmt.Errorf("open stream %s: %w", streams.StreamExportTasks, err)
	}
	stopObserving, err := p.observeStores()
	if err != nil {
		return err
	}
	defer stopObserving()
	cons, err := p.deps.JS.Consumer(ctx, streams.StreamExportJobs, streams.ConsumerPlanner)
	if err != nil {
		return fmt.Errorf("open consumer %s: %w", streams.ConsumerPlanner, err)
	}
	// The janitor stops with the consumers: Run returns only once both have.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	janitorDone := make(chan struct{})
	go func() {
		defer close(janitorDone)
		p.janitor(ctx, p.cfg.SweepEvery)
	}()
	err = streams.Work(ctx, cons, p.cfg.Concurrency, p.handle)
	stop()
	<-janitorDone
	if err != nil {
		return fmt.Errorf("consume %s: %w", streams.StreamExportJobs, err)
	}
	return nil
}

func (p *Planner) handle(ctx context.Context, msg jetstream.Msg) {
	kind, job, ok := streams.ParseJobSubject(msg.Subject())
	if !ok {
		p.deps.Log.WarnContext(ctx, "message on an unknown subject dropped", slog.String("subject", msg.Subject()))
		_ = msg.Term()
		return
	}
	ctx = streams.ExtractTrace(ctx, msg.Headers())
	ctx, span := p.tracer.Start(ctx, "planner."+kind, trace.WithAttributes(attribute.String("job", job)))
	defer span.End()
	stop := heartbeat(msg, 5*time.Second)
	defer stop()
	var err error
	switch kind {
	case streams.JobSubmit:
		err = p.plan(ctx, job)
	case streams.JobDone:
		err = p.progress(ctx, job)
	case streams.JobCancel:
		err = p.cleanup(ctx, job)
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		p.deps.Log.ErrorContext(ctx, "job message failed", slog.String("job", job), slog.String("kind", kind), slog.Any("error", err))
		span.RecordError(err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	_ = msg.Ack()
}

// heartbeat tells JetStream the message is still being worked on.
func heartbeat(msg jetstream.Msg, every time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// plan fixes transactionTime, splits the job into tasks and publishes them.
func (p *Planner) plan(ctx context.Context, id string) error {
	err := p.planJob(ctx, id)
	if err != nil && ctx.Err() == nil {
		if _, _, gerr := p.jobs.Get(ctx, id); errors.Is(gerr, jetstream.ErrKeyNotFound) {
			// Cancelled and removed while it was planned (found by the
			// soak): there is nothing left to plan, and nothing failed.
			p.deps.Log.InfoContext(ctx, "export removed while it was planned", slog.String("job", id))
			return nil
		}
	}
	return err
}

// planJob is plan, for a job that may be removed meanwhile.
func (p *Planner) planJob(ctx context.Context, id string) error {
	job, _, err := p.jobs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil // cancelled and cleaned up before planning
	}
	if err != nil {
		return err
	}
	if job.Status != streams.JobAccepted && !(job.Status == streams.JobRunning && !job.TasksPublished) {
		return nil // already planned
	}
	var tasks []streams.Task
	if job.Status == streams.JobAccepted {
		t, err := p.waitWatermark(ctx, id, job.MinChangeSeq)
		if err != nil && ctx.Err() != nil {
			return ctx.Err() // shutting down: another planner takes the kick-off over
		}
		if err != nil {
			_, uerr := p.jobs.Update(ctx, id, func(j *streams.Job) bool {
				j.Status, j.Error = streams.JobFailed, "the export could not start: "+err.Error()
				return true
			})
			if uerr == nil {
				p.metrics.ended.Add(ctx, 1, streams.ExportAttrs(job.Level, streams.JobFailed))
			}
			return errors.Join(err, uerr)
		}
		tasks, err = p.split(ctx, job, t)
		if err != nil {
			return p.failPlan(ctx, id, err)
		}
		job, err = p.jobs.Update(ctx, id, func(j *streams.Job) bool {
			if j.Status != streams.JobAccepted {
				return false
			}
			j.Status, j.TransactionTime, j.TasksTotal = streams.JobRunning, t, len(tasks)
			return true
		})
		if err != nil {
			return err
		}
		if job.Status != streams.JobRunning || !job.TransactionTime.Equal(t) {
			return nil // cancelled, or another planner planned it first
		}
	} else {
		// A planner died between recording the plan and publishing it:
		// rebuild the same tasks (same time, same counts) and publish again.
		if tasks, err = p.split(ctx, job, job.TransactionTime); err != nil {
			return p.failPlan(ctx, id, err)
		}
		if len(tasks) != job.TasksTotal {
			return fmt.Errorf("replanned job %s into %d tasks, recorded %d", id, len(tasks), job.TasksTotal)
		}
	}
	for _, task := range tasks {
		m := nats.NewMsg(streams.SubjectTasks(id))
		m.Data = streams.Encode(task)
		m.Header.Set(jetstream.MsgIDHeader, streams.MsgIDTask(id, task.TaskID))
		streams.InjectTrace(ctx, m.Header)
		if _, err := p.deps.JS.PublishMsg(ctx, m); err != nil {
			return fmt.Errorf("publish task %s of job %s: %w", task.TaskID, id, err)
		}
	}
	p.metrics.planned.Add(ctx, int64(len(tasks)))
	if _, err := p.jobs.Update(ctx, id, func(j *streams.Job) bool {
		if j.TasksPublished {
			return false
		}
		j.TasksPublished = true
		return true
	}); err != nil {
		return err
	}
	p.deps.Log.InfoContext(ctx, "export planned", slog.String("job", id), slog.Int("tasks", len(tasks)), slog.String("transaction_time", fhir.FormatInstant(job.TransactionTime)))
	// Completions handled before TasksPublished was set were not counted:
	// count now (this also completes a job with no tasks).
	return p.progress(ctx, id)
}

// failPlan fails the job when err is a planError, which no retry mends;
// any other error is returned for a retry.
func (p *Planner) failPlan(ctx context.Context, id string, err error) error {
	var perr *planError
	if !errors.As(err, &perr) {
		return err
	}
	failed := false
	job, uerr := p.jobs.Update(ctx, id, func(j *streams.Job) bool {
		if j.Status != streams.JobAccepted && j.Status != streams.JobRunning {
			return false
		}
		j.Status, j.Error = streams.JobFailed, "the export could not be planned: "+perr.msg
		failed = true
		return true
	})
	if uerr == nil && failed {
		p.metrics.ended.Add(ctx, 1, streams.ExportAttrs(job.Level, streams.JobFailed))
	}
	return uerr
}

// waitWatermark waits until every change up to minSeq is queryable and
// returns the watermark's stamp: the transactionTime. A wait that lasts
// warns every slowWatermark of where the watermark stands, so that an
// export held up by ingest says why in the planner's log.
func (p *Planner) waitWatermark(ctx context.Context, job string, minSeq uint64) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.WatermarkTimeout)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go p.warnWhileWaiting(ctx, done, job, minSeq)
	wm, err := streams.AwaitWatermark(ctx, p.deps.JS, minSeq)
	if err != nil {
		return time.Time{}, fmt.Errorf("waited %s: %w", p.cfg.WatermarkTimeout, err)
	}
	return wm.Stamp, nil
}

// slowWatermark is how long a kick-off waits for ingest before the planner
// warns of it, and then how often it warns again.
var slowWatermark = 30 * time.Second

// warnWhileWaiting logs, every slowWatermark until done is closed or ctx
// ends, that the job waits for change minSeq, and where ingest stands.
func (p *Planner) warnWhileWaiting(ctx context.Context, done <-chan struct{}, job string, minSeq uint64) {
	start := time.Now()
	tick := time.NewTicker(slowWatermark)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		attrs := []any{slog.String("job", job), slog.Uint64("needs_seq", minSeq),
			slog.Duration("waited", time.Since(start).Round(time.Second))}
		if kv, err := p.deps.JS.KeyValue(ctx, streams.BucketIngest); err == nil {
			if wm, _, err := streams.ReadWatermark(ctx, kv); err == nil {
				attrs = append(attrs, slog.Uint64("ingested_seq", wm.Seq), slog.Time("ingested_stamp", wm.Stamp))
			}
		}
		p.deps.Log.WarnContext(ctx, "export waits for its changes to be ingested", attrs...)
	}
}

// split cuts the export into tasks: for each type, consecutive hash buckets
// are merged until a task holds about TaskRows versions. Buckets without
// rows join their neighbours, so each type's tasks cover the whole hash space.
func (p *Planner) split(ctx context.Context, job streams.Job, t time.Time) ([]streams.Task, error) {
	patients, listed, err := p.listPatients(ctx, job, chstore.Micros(t))
	if err != nil {
		return nil, err
	}
	if listed && len(patients) == 0 {
		return nil, nil // a Group without patient members: nothing can match
	}
	types := countTypes(job)
	counts, err := p.deps.Store.BucketCounts(ctx, types, chstore.Micros(job.Since), chstore.Micros(t))
	if err != nil {
		return nil, err
	}
	return Pack(Split(job, t, counts, p.cfg), p.cfg.TaskRows), nil
}

// Pack merges the plain tasks that read the same hash range into tasks of
// several types, each of at most rows versions counted, and numbers the
// tasks again. A task's fixed cost (its reads' round trips, storing its
// result, announcing it, the planner counting it) then falls on a pack of
// small types once, not on each: a _since export of a few changes in many
// types becomes one task or a few. Tasks that export as another type or
// select associated data stay alone, and so does a task as large as rows.
// Order is kept: a pack stands where its first task stood.
func Pack(tasks []streams.Task, rows int) []streams.Task {
	type hashRange struct{ lo, hi uint64 }
	open := map[hashRange]int{} // the range's pack still taking tasks, by index in out
	out := make([]streams.Task, 0, len(tasks))
	for _, t := range tasks {
		if !packable(t) || t.Rows >= uint64(rows) {
			out = append(out, t)
			continue
		}
		key := hashRange{t.HashLo, t.HashHi}
		if i, ok := open[key]; ok && out[i].Rows+t.Rows <= uint64(rows) {
			p := &out[i]
			if len(p.Types) == 0 {
				p.Types, p.Type = []string{p.Type}, ""
			}
			p.Types = append(p.Types, t.Type)
			p.Rows += t.Rows
			continue
		}
		open[key] = len(out)
		out = append(out, t)
	}
	for i := range out {
		out[i].TaskID = fmt.Sprintf("%05d", i)
	}
	return out
}

// packable reports whether task may share a task with other types: it
// exports its one type as it is.
func packable(task streams.Task) bool {
	return task.Type != "" && task.Type != "Binary" && task.Associated == "" && task.EmitAs == ""
}

// Split is the pure splitting rule; counts must be ordered by type and bucket.
// Tasks are cut at cfg.Shards' boundaries too, so that each reads one shard.
// Every exported type in counts gets tasks; when includeAssociatedData adds
// Provenance tasks (see needsAssociated), they come last, split by the
// Provenance counts the same way.
func Split(job streams.Job, t time.Time, counts []chstore.BucketCount, cfg Config) []streams.Task {
	width := chstore.HashSpace / chstore.HashBuckets
	var tasks []streams.Task
	emit := func(typ, associated, emitAs string, lo, hi, rows uint64) {
		task := streams.Task{
			JobID: job.JobID, TaskID: fmt.Sprintf("%05d", len(tasks)), Type: typ, Rows: rows,
			Level: job.Level, GroupID: job.GroupID, PatientList: listsPatients(job), Elements: job.Elements, TypeFilter: job.TypeFilter,
			HashLo: lo, HashHi: hi, Since: job.Since, Until: t,
			MaxFileResources: cfg.MaxFileResources, MaxFileBytes: cfg.MaxFileBytes,
			BaseURL: job.BaseURL, AttachmentBase: streams.AttachmentBase(job.BaseURL, job.JobID),
		}
		if associated != "" {
			task.Associated, task.ExportTypes = associated, associatedTargets(job)
		}
		task.EmitAs = emitAs
		tasks = append(tasks, task)
	}
	// splitType merges the buckets of one type into tasks of about TaskRows.
	shards := max(cfg.Shards, 1)
	splitType := func(counts []chstore.BucketCount, associated, emitAs string) {
		typ := counts[0].Type
		lo, acc := uint64(0), uint64(0)
		shard := chstore.ShardOfBucket(counts[0].Bucket, shards)
		for i, c := range counts {
			if sh := chstore.ShardOfBucket(c.Bucket, shards); sh != shard {
				// A task reads one shard: the open one ends where the
				// next shard's buckets start.
				if acc > 0 {
					cut := chstore.ShardStart(sh, shards)
					emit(typ, associated, emitAs, lo, cut, acc)
					lo, acc = cut, 0
				}
				shard = sh
			}
			acc += c.Rows
			if acc >= uint64(cfg.TaskRows) && i+1 < len(counts) {
				hi := (c.Bucket + 1) * width
				emit(typ, associated, emitAs, lo, hi, acc)
				lo, acc = hi, 0
			}
		}
		// The type's last task runs to the end of the hash space.
		emit(typ, associated, emitAs, lo, chstore.HashSpace, acc)
	}
	binary, binaryEmitAs := binaryTasks(job)
	var provenance []chstore.BucketCount
	for i := 0; i < len(counts); {
		j := i + 1
		for j < len(counts) && counts[j].Type == counts[i].Type {
			j++
		}
		typ := counts[i].Type
		switch {
		case typ == "Binary":
			if binary {
				splitType(counts[i:j], "", binaryEmitAs)
			}
		case ownsType(job, typ):
			splitType(counts[i:j], "", "")
		}
		if typ == "Provenance" {
			provenance = counts[i:j]
		}
		i = j
	}
	if needsAssociated(job) && len(provenance) > 0 {
		splitType(provenance, job.IncludeAssociatedData, "")
	}
	return tasks
}
