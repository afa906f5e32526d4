package streams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Jobs reads and updates job records with compare-and-set.
type Jobs struct {
	kv jetstream.KeyValue
}

// OpenJobs opens the jobs bucket.
func OpenJobs(ctx context.Context, js jetstream.JetStream) (Jobs, error) {
	kv, err := js.KeyValue(ctx, BucketJobs)
	if err != nil {
		return Jobs{}, fmt.Errorf("open bucket %s: %w", BucketJobs, err)
	}
	return Jobs{kv: kv}, nil
}

// Get returns the job and its revision; jetstream.ErrKeyNotFound when there
// is none.
func (j Jobs) Get(ctx context.Context, id string) (Job, uint64, error) {
	e, err := j.kv.Get(ctx, KeyJob(id))
	if err != nil {
		return Job{}, 0, err
	}
	var job Job
	if err := Decode(e.Value(), &job); err != nil {
		return Job{}, 0, err
	}
	return job, e.Revision(), nil
}

// Create stores a new job; it fails if the id exists.
func (j Jobs) Create(ctx context.Context, job Job) error {
	if _, err := j.kv.Create(ctx, KeyJob(job.JobID), Encode(job)); err != nil {
		return fmt.Errorf("create job %s: %w", job.JobID, err)
	}
	return nil
}

// Update applies change to the current record and stores it if nobody
// changed it meanwhile, retrying on conflicts. change returns false to
// leave the record as it is.
func (j Jobs) Update(ctx context.Context, id string, change func(*Job) bool) (Job, error) {
	for attempt := 0; ; attempt++ {
		job, rev, err := j.Get(ctx, id)
		if err != nil {
			return Job{}, err
		}
		if !change(&job) {
			return job, nil
		}
		if _, err := j.kv.Update(ctx, KeyJob(id), Encode(job), rev); err == nil {
			return job, nil
		} else if attempt >= 50 {
			return Job{}, fmt.Errorf("update job %s: %w", id, err)
		}
	}
}

// Watch reports every change of job id's record made after the call (the
// updates only), until ctx is done or the watcher is stopped. Status
// requests wait on it for an export to complete instead of polling.
func (j Jobs) Watch(ctx context.Context, id string) (jetstream.KeyWatcher, error) {
	w, err := j.kv.Watch(ctx, KeyJob(id), jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("watch job %s: %w", id, err)
	}
	return w, nil
}

// ErrOtherAttempt means another attempt's result is recorded for the task.
var ErrOtherAttempt = errors.New("another attempt recorded the task's result")

// RecordTaskResult stores an attempt's result unless one is there already:
// the first attempt to record wins. A create that fails may still have been
// applied (its acknowledgement lost), so on failure the stored result is
// read back: nil means the stored result is r (same attempt token),
// ErrOtherAttempt that it is another attempt's, any other error that the
// outcome is unknown.
func (j Jobs) RecordTaskResult(ctx context.Context, r TaskResult) error {
	key := KeyTask(r.JobID, r.TaskID)
	_, err := j.kv.Create(ctx, key, Encode(r))
	if err == nil {
		return nil
	}
	stored, ok, gerr := j.TaskResult(ctx, r.JobID, r.TaskID)
	switch {
	case gerr != nil:
		return fmt.Errorf("read back result of task %s: %w", r.TaskID, gerr)
	case !ok:
		return fmt.Errorf("record result of task %s: %w", r.TaskID, err)
	case stored.Token != "" && stored.Token == r.Token:
		return nil
	}
	return ErrOtherAttempt
}

// TaskResult returns the recorded result of one task; ok is false when the
// task has none yet.
func (j Jobs) TaskResult(ctx context.Context, job, task string) (TaskResult, bool, error) {
	e, err := j.kv.Get(ctx, KeyTask(job, task))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return TaskResult{}, false, nil
	}
	if err != nil {
		return TaskResult{}, false, fmt.Errorf("read result of task %s of job %s: %w", task, job, err)
	}
	var r TaskResult
	if err := Decode(e.Value(), &r); err != nil {
		return TaskResult{}, false, err
	}
	return r, true, nil
}

// TaskIDs lists the tasks of job that have a recorded result, sorted.
// Counting them costs one key listing, not a read per result.
func (j Jobs) TaskIDs(ctx context.Context, job string) ([]string, error) {
	keys, err := j.keys(ctx, KeyTasksOfJob(job))
	if err != nil {
		return nil, fmt.Errorf("list task results of job %s: %w", job, err)
	}
	prefix := KeyTask(job, "")
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, strings.TrimPrefix(k, prefix))
	}
	slices.Sort(ids)
	return ids, nil
}

// TaskResults reads the recorded results of the given tasks of job, in
// that order; a task without one is an error.
func (j Jobs) TaskResults(ctx context.Context, job string, tasks []string) ([]TaskResult, error) {
	out := make([]TaskResult, 0, len(tasks))
	for _, t := range tasks {
		r, ok, err := j.TaskResult(ctx, job, t)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("task %s of job %s has no result", t, job)
		}
		out = append(out, r)
	}
	return out, nil
}

// IDs lists the ids of every job record.
func (j Jobs) IDs(ctx context.Context) ([]string, error) {
	keys, err := j.keys(ctx, KeyJob("*"))
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, strings.TrimPrefix(k, KeyJob("")))
	}
	return ids, nil
}

// Remove deletes every record of job: its task results, download lease and
// finally the job itself (files and tasks are the caller's).
func (j Jobs) Remove(ctx context.Context, job string) error {
	tasks, err := j.TaskIDs(ctx, job)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(tasks)+2)
	for _, t := range tasks {
		keys = append(keys, KeyTask(job, t))
	}
	for _, k := range append(keys, KeyDownload(job), KeyJob(job)) {
		if err := j.kv.Purge(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("delete %s: %w", k, err)
		}
	}
	return nil
}

// RecordedJobs lists the jobs that task results or download leases name,
// whether or not their record still exists.
func (j Jobs) RecordedJobs(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	for _, filter := range []string{KeyTask("*", "*"), KeyDownload("*")} {
		keys, err := j.keys(ctx, filter)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", filter, err)
		}
		for _, k := range keys {
			parts := strings.Split(k, ".")
			if len(parts) >= 2 {
				seen[parts[1]] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

// RemoveTaskResult deletes a task's result.
func (j Jobs) RemoveTaskResult(ctx context.Context, job, task string) error {
	if err := j.kv.Purge(ctx, KeyTask(job, task)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete the result of task %s of job %s: %w", task, job, err)
	}
	return nil
}

// RenewDownload records that a file of job is being downloaded at t; the
// janitor leaves a job alone while that is recent.
func (j Jobs) RenewDownload(ctx context.Context, job string, t time.Time) error {
	if _, err := j.kv.Put(ctx, KeyDownload(job), []byte(t.UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("renew the download lease of job %s: %w", job, err)
	}
	return nil
}

// LastDownload is when a file of job was last being downloaded; ok is
// false when never (or unreadable).
func (j Jobs) LastDownload(ctx context.Context, job string) (time.Time, bool) {
	e, err := j.kv.Get(ctx, KeyDownload(job))
	if err != nil {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(e.Value()))
	return t, err == nil
}

// listTimeout bounds one listing of keys. A listing is a watch of the
// bucket's stream that ends once it has delivered what the stream held; one
// that stalls (its stream's leader lost midway) is given up and reported,
// for the caller to retry, instead of holding the caller for good.
const listTimeout = 30 * time.Second

// keys lists the keys matching filter; none is an empty list. A listing
// cut short is an error, never a shorter list.
func (j Jobs) keys(ctx context.Context, filter string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	lister, err := j.kv.ListKeysFiltered(ctx, filter)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list the keys %s: %w", filter, err)
	}
	return keys, nil
}
