package writer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// A task's life with its job: checking the job still runs, keeping the
// message alive, recording and announcing the result, failing the job.

// errJobGone means the job was cancelled or removed: the task is moot.
var errJobGone = errors.New("job cancelled or removed")

// errOtherAttempt means another attempt's result is recorded for the task.
var errOtherAttempt = streams.ErrOtherAttempt

// permanentError is a task failure no retry can mend.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// recordTimeout bounds recording a result, which runs even while the
// writer shuts down: files written in full are worth keeping.
const recordTimeout = 10 * time.Second

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

// cancelledMeanwhile reports whether the job was cancelled or removed by
// the time an attempt stored its files and result. The API marks a job
// cancelled before it queues the clean-up, so a clean-up that starts after
// this check finds what the attempt stored, and one that started before
// it is seen here: between them nothing is left behind.
func (w *Writer) cancelledMeanwhile(ctx context.Context, task streams.Task) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	job, _, err := w.jobs.Get(ctx, task.JobID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return true
	}
	return err == nil && job.Status == streams.JobCancelled
}

// dropResult removes an attempt's recorded result of a job that is gone.
func (w *Writer) dropResult(ctx context.Context, result streams.TaskResult) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if err := w.jobs.RemoveTaskResult(ctx, result.JobID, result.TaskID); err != nil {
		w.deps.Log.WarnContext(ctx, "removing the result of a task of a cancelled export", slog.String("job", result.JobID), slog.String("task", result.TaskID), slog.Any("error", err))
	}
}

// watch keeps the task message alive and cancels the attempt promptly when
// the job is cancelled.
func (w *Writer) watch(ctx context.Context, cancel context.CancelCauseFunc, msg jetstream.Msg, task streams.Task) {
	every := w.heartbeat
	if every <= 0 {
		every = w.cfg.CheckEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	checked := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = msg.InProgress()
			if time.Since(checked) < w.cfg.CheckEvery {
				continue
			}
			checked = time.Now()
			if err := w.checkJob(ctx, task); errors.Is(err, errJobGone) {
				cancel(errJobGone)
				return
			}
		}
	}
}

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
	m.Header.Set(jetstream.MsgIDHeader, streams.MsgIDTaskDone(task.JobID, task.TaskID))
	streams.InjectTrace(ctx, m.Header)
	if _, err := w.deps.JS.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("announce task %s done: %w", task.TaskID, err)
	}
	return nil
}

// failJob marks the job failed: a task failed in a way no retry can mend,
// or ran out of attempts. It is recorded even when the writer is stopping,
// since the task message is terminated either way.
func (w *Writer) failJob(ctx context.Context, task streams.Task, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	failed := false
	_, err := w.jobs.Update(ctx, task.JobID, func(j *streams.Job) bool {
		if j.Status != streams.JobRunning {
			return false
		}
		j.Status = streams.JobFailed
		j.Error = fmt.Sprintf("export of %s failed: %v", task.TypeLabel(), cause)
		failed = true
		return true
	})
	if err != nil {
		w.deps.Log.ErrorContext(ctx, "mark job failed", slog.String("job", task.JobID), slog.Any("error", err))
	}
	if err == nil && failed {
		w.ended.Add(ctx, 1, streams.ExportAttrs(task.Level, streams.JobFailed))
	}
}
