package api

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/flatfhir/flatfhir/streams"
)

// finished reports whether a job's status will not change by itself.
func finished(job streams.Job) bool {
	switch job.Status {
	case streams.JobComplete, streams.JobFailed, streams.JobCancelled:
		return true
	}
	return false
}

// hold waits up to d for job to finish, watching its record, and returns
// it as it then is. A small export completes within the hold of the first
// status request, so a client sees the manifest without waiting out a
// Retry-After; a large one is answered 202 after d, never later.
func (s *Server) hold(ctx context.Context, job streams.Job, d time.Duration) streams.Job {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	w, err := s.jobs.Watch(ctx, job.JobID)
	if err != nil {
		return job // answer with what is known; the client polls again
	}
	defer func() { _ = w.Stop() }()
	// It may have finished between the read and the start of the watch.
	if cur, _, err := s.jobs.Get(ctx, job.JobID); err == nil {
		job = cur
	}
	for !finished(job) {
		select {
		case <-ctx.Done():
			return job
		case e, ok := <-w.Updates():
			if !ok {
				return job
			}
			if e == nil {
				continue // the end of the (empty) initial values
			}
			var cur streams.Job
			if streams.Decode(e.Value(), &cur) != nil {
				return job // deleted or unreadable: the next poll says
			}
			job = cur
		}
	}
	return job
}

// progressText is the X-Progress of a running export.
func progressText(job streams.Job) string {
	if job.Status == streams.JobAccepted || job.TasksTotal == 0 {
		return "0% complete (planning)"
	}
	return fmt.Sprintf("%d%% complete (%d of %d tasks)", job.TasksDone*100/job.TasksTotal, job.TasksDone, job.TasksTotal)
}

// retryAfterSeconds suggests when to poll a running export again: a hold
// before it is expected to be complete, from the rate its tasks have
// completed at since kick-off, between 1 s and longest. That poll then
// waits out the export's end in its hold and answers at completion,
// instead of the client learning of it up to a Retry-After late. Until a
// task completes, the export is expected to take as long again as it has
// taken so far.
func retryAfterSeconds(job streams.Job, now time.Time, longest, hold time.Duration) int {
	elapsed := now.Sub(job.SubmittedAt)
	if elapsed < 0 || job.SubmittedAt.IsZero() {
		elapsed = 0
	}
	remaining := elapsed
	if job.TasksTotal > 0 && job.TasksDone > 0 {
		left := float64(job.TasksTotal - job.TasksDone)
		remaining = time.Duration(float64(elapsed) * left / float64(job.TasksDone))
	}
	secs := int(math.Ceil((remaining - hold).Seconds()))
	return max(1, min(secs, int(longest/time.Second)))
}
