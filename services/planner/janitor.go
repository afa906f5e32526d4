package planner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// sweepTimeout bounds one janitor sweep.
const sweepTimeout = 2 * time.Minute

// janitor periodically queues the removal of exports whose files expired,
// and of failed or cancelled exports older than the retention. Removal goes
// through the same cancel message as a client's DELETE, so every planner
// replica may run a janitor: removal is idempotent.
func (p *Planner) janitor(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var trimmed time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// A sweep that stalls (a listing whose stream lost its
			// leader) is given up and tried at the next tick.
			sctx, cancel := context.WithTimeout(ctx, sweepTimeout)
			err := p.sweep(sctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				p.deps.Log.WarnContext(ctx, "janitor sweep failed", slog.Any("error", err))
			}
			if p.cfg.ChangeLogRetention > 0 && time.Since(trimmed) >= p.cfg.TrimEvery {
				trimmed = time.Now()
				p.trimChangeLog(ctx)
			}
		}
	}
}

// trimChangeLog drops the change log's months older than the retention.
func (p *Planner) trimChangeLog(ctx context.Context) {
	cutoff := p.deps.Now().Add(-p.cfg.ChangeLogRetention)
	dropped, err := p.deps.Store.TrimChangeLog(ctx, cutoff, p.cfg.TrimGrace)
	if err != nil {
		if ctx.Err() == nil {
			p.deps.Log.WarnContext(ctx, "trimming the change log failed", slog.Any("error", err))
		}
		return
	}
	if len(dropped) > 0 {
		p.deps.Log.InfoContext(ctx, "change log trimmed", slog.Any("months", dropped), slog.Time("cutoff", cutoff))
	}
}

// sweep queues the removal of every job past its time, and drops the
// duplicate-export slots, files and records of jobs that are gone.
func (p *Planner) sweep(ctx context.Context) error {
	if err := p.sweepSlots(ctx); err != nil {
		return err
	}
	if err := p.sweepOrphans(ctx); err != nil {
		return err
	}
	ids, err := p.jobs.IDs(ctx)
	if err != nil {
		return err
	}
	now := p.deps.Now()
	for _, id := range ids {
		job, _, err := p.jobs.Get(ctx, id)
		if err != nil {
			continue // removed meanwhile
		}
		if !expired(job, now, p.cfg.Retention) || p.downloading(ctx, id, now) {
			continue
		}
		if _, err := p.deps.JS.Publish(ctx, streams.SubjectJobCancel(id), nil, jetstream.WithMsgID(streams.MsgIDExpire(id))); err != nil {
			return err
		}
		p.deps.Log.InfoContext(ctx, "export expired", slog.String("job", id), slog.String("status", job.Status))
	}
	return nil
}

// expired reports whether a job's files and record should go.
func expired(job streams.Job, now time.Time, retention time.Duration) bool {
	switch job.Status {
	case streams.JobComplete:
		return !job.ExpiresAt.IsZero() && now.After(job.ExpiresAt)
	case streams.JobFailed, streams.JobCancelled:
		return now.After(job.SubmittedAt.Add(retention))
	default:
		return false
	}
}

// downloadGrace is how recent a download lease must be for the janitor to
// leave an expired export's files alone: a client may still be fetching
// them (the API renews the lease every 30 seconds while streaming).
const downloadGrace = 2 * time.Minute

// downloading reports whether a file of job is being downloaded.
func (p *Planner) downloading(ctx context.Context, id string, now time.Time) bool {
	at, ok := p.jobs.LastDownload(ctx, id)
	return ok && now.Sub(at) < downloadGrace
}

// sweepSlots purges the API's "a client runs this request" slots whose
// export no longer exists, so they do not pile up.
func (p *Planner) sweepSlots(ctx context.Context) error {
	return p.jobs.SweepSlots(ctx)
}

// sweepOrphans removes the files, task results and download leases of jobs
// whose record is gone. A writer removes what it stored for an export
// cancelled meanwhile, but one killed between storing and checking leaves
// it. The API creates a job's record before anything else of it exists, so
// whatever is found without one is left over.
func (p *Planner) sweepOrphans(ctx context.Context) error {
	owners := map[string][]string{} // job -> its objects
	infos, err := p.files.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		return fmt.Errorf("list export files: %w", err)
	}
	for _, info := range infos {
		if job, _, ok := strings.Cut(info.Name, "/"); ok {
			owners[job] = append(owners[job], info.Name)
		}
	}
	recorded, err := p.jobs.RecordedJobs(ctx)
	if err != nil {
		return err
	}
	for _, job := range recorded {
		if _, ok := owners[job]; !ok {
			owners[job] = nil // records, and no file
		}
	}
	for job, names := range owners {
		if _, _, err := p.jobs.Get(ctx, job); !errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // a job, or a store that cannot tell now
		}
		// The listing above named its files: no second listing per job.
		if err := deleteObjects(ctx, p.files, names); err != nil {
			return err
		}
		if err := p.jobs.Remove(ctx, job); err != nil {
			return err
		}
		p.deps.Log.InfoContext(ctx, "left-over files and records of a removed export deleted", slog.String("job", job))
	}
	return nil
}
