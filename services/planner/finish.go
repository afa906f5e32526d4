package planner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// progress counts the recorded task results of job and, when every task
// is in, assembles the manifest and completes the job.
func (p *Planner) progress(ctx context.Context, id string) error {
	job, _, err := p.jobs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if job.Status != streams.JobRunning || !job.TasksPublished {
		return nil
	}
	// Count the results by their keys; read them only once all are in, so
	// that a job of n tasks costs n key listings, not n² reads.
	keys, err := p.resultKeys(ctx, id)
	if err != nil {
		return err
	}
	if len(keys) < job.TasksTotal {
		_, err := p.jobs.Update(ctx, id, func(j *streams.Job) bool {
			if j.Status != streams.JobRunning || j.TasksDone >= len(keys) {
				return false
			}
			j.TasksDone = len(keys)
			return true
		})
		return err
	}
	results, err := p.results(ctx, keys)
	if err != nil {
		return err
	}
	token := assemblyToken()
	manifest, err := p.assemble(ctx, job, results, token)
	if err != nil {
		return err
	}
	name := streams.ObjectName(id, streams.ManifestObject(token))
	if _, err := p.files.PutBytes(ctx, name, streams.Encode(manifest)); err != nil {
		return fmt.Errorf("store manifest of job %s: %w", id, err)
	}
	now := p.deps.Now().UTC()
	// Several "done" messages of one job may be handled at once, each seeing
	// every result in; the compare-and-set lets one of them complete the
	// job, and only that one reports it.
	completed := false
	_, err = p.jobs.Update(ctx, id, func(j *streams.Job) bool {
		completed = j.Status == streams.JobRunning
		if !completed {
			return false
		}
		j.Status, j.TasksDone, j.Manifest = streams.JobComplete, len(results), name
		j.CompletedAt, j.ExpiresAt = now, now.Add(p.cfg.Retention)
		return true
	})
	if err != nil {
		return err
	}
	if !completed {
		// Another assembly completed the job first: drop this one's files.
		for _, f := range []string{name, streams.ObjectName(id, streams.IgnoredObject(token))} {
			if err := p.files.Delete(ctx, f); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
				p.deps.Log.WarnContext(ctx, "losing manifest not deleted", slog.String("job", id), slog.String("file", f), slog.Any("error", err))
			}
		}
		return nil
	}
	p.deps.Log.InfoContext(ctx, "export complete", slog.String("job", id), slog.Int("files", len(manifest.Output)))
	return nil
}

// assemblyToken tells concurrent assemblies of one job apart.
func assemblyToken() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// resultKeys lists the keys of the task results of job, sorted.
func (p *Planner) resultKeys(ctx context.Context, id string) ([]string, error) {
	lister, err := p.jobs.KV.ListKeysFiltered(ctx, streams.KeyTasksOfJob(id))
	if err != nil {
		return nil, fmt.Errorf("list task results of job %s: %w", id, err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

// results reads the task results under keys.
func (p *Planner) results(ctx context.Context, keys []string) ([]streams.TaskResult, error) {
	out := make([]streams.TaskResult, 0, len(keys))
	for _, k := range keys {
		e, err := p.jobs.KV.Get(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("read task result %s: %w", k, err)
		}
		var r streams.TaskResult
		if err := streams.Decode(e.Value(), &r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// assemble builds the manifest from the winning attempt of every task, in
// task order, and writes the error file for what a lenient kick-off ignored.
func (p *Planner) assemble(ctx context.Context, job streams.Job, results []streams.TaskResult, token string) (streams.Manifest, error) {
	m := streams.Manifest{
		TransactionTime: job.TransactionTime,
		Request:         job.RequestURL,
		Output:          []streams.ManifestFile{},
		Deleted:         []streams.ManifestFile{},
		Error:           []streams.ManifestFile{},
	}
	sort.Slice(results, func(i, j int) bool { return results[i].TaskID < results[j].TaskID })
	for _, r := range results {
		for _, f := range r.Files {
			if f.Count == 0 {
				continue
			}
			mf := streams.ManifestFile{Type: f.Type, Name: f.Name, Count: f.Count}
			switch {
			case f.Type == "Bundle" && strings.HasPrefix(f.Name, "deleted-"):
				m.Deleted = append(m.Deleted, mf)
			default:
				m.Output = append(m.Output, mf)
			}
		}
	}
	if len(job.Ignored) > 0 {
		var b strings.Builder
		for _, what := range job.Ignored {
			b.Write(fhir.Outcome(fhir.SeverityWarning, fhir.CodeNotSupported, what).JSON())
			b.WriteByte('\n')
		}
		name := streams.IgnoredObject(token)
		if _, err := p.files.PutString(ctx, streams.ObjectName(job.JobID, name), b.String()); err != nil {
			return m, fmt.Errorf("store error file of job %s: %w", job.JobID, err)
		}
		m.Error = append(m.Error, streams.ManifestFile{Type: "OperationOutcome", Name: name, Count: len(job.Ignored)})
	}
	return m, nil
}

// cleanup removes every trace of a cancelled or released job: pending
// tasks, files, task results and finally the job record.
func (p *Planner) cleanup(ctx context.Context, id string) error {
	if err := p.tasks.Purge(ctx, jetstream.WithPurgeSubject(streams.SubjectTasks(id))); err != nil {
		return fmt.Errorf("purge tasks of job %s: %w", id, err)
	}
	if err := DeleteJobFiles(ctx, p.files, id); err != nil {
		return err
	}
	lister, err := p.jobs.KV.ListKeysFiltered(ctx, streams.KeyTasksOfJob(id))
	if err != nil {
		return fmt.Errorf("list task results of job %s: %w", id, err)
	}
	for k := range lister.Keys() {
		if err := p.jobs.KV.Purge(ctx, k); err != nil {
			return fmt.Errorf("delete task result %s: %w", k, err)
		}
	}
	if err := p.jobs.KV.Purge(ctx, streams.KeyDownload(id)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete download lease of job %s: %w", id, err)
	}
	if err := p.jobs.KV.Purge(ctx, streams.KeyJob(id)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete job %s: %w", id, err)
	}
	p.deps.Log.InfoContext(ctx, "export removed", slog.String("job", id))
	return nil
}

// DeleteJobFiles deletes every object of job.
func DeleteJobFiles(ctx context.Context, files jetstream.ObjectStore, id string) error {
	lister, err := files.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list files of job %s: %w", id, err)
	}
	prefix := streams.ObjectName(id, "")
	for _, info := range lister {
		if strings.HasPrefix(info.Name, prefix) {
			if err := files.Delete(ctx, info.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
				return fmt.Errorf("delete file %s: %w", info.Name, err)
			}
		}
	}
	return nil
}
