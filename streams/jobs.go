package streams

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Jobs reads and updates job records with compare-and-set.
type Jobs struct {
	KV jetstream.KeyValue
}

// OpenJobs opens the jobs bucket.
func OpenJobs(ctx context.Context, js jetstream.JetStream) (Jobs, error) {
	kv, err := js.KeyValue(ctx, BucketJobs)
	if err != nil {
		return Jobs{}, fmt.Errorf("open bucket %s: %w", BucketJobs, err)
	}
	return Jobs{KV: kv}, nil
}

// Get returns the job and its revision; jetstream.ErrKeyNotFound when there
// is none.
func (j Jobs) Get(ctx context.Context, id string) (Job, uint64, error) {
	e, err := j.KV.Get(ctx, KeyJob(id))
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
	if _, err := j.KV.Create(ctx, KeyJob(job.JobID), Encode(job)); err != nil {
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
		if _, err := j.KV.Update(ctx, KeyJob(id), Encode(job), rev); err == nil {
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
	w, err := j.KV.Watch(ctx, KeyJob(id), jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("watch job %s: %w", id, err)
	}
	return w, nil
}
