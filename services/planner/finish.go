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
	tasks, err := p.jobs.TaskIDs(ctx, id)
	if err != nil {
		return err
	}
	if len(tasks) < job.TasksTotal {
		_, err := p.jobs.Update(ctx, id, func(j *streams.Job) bool {
			if j.Status != streams.JobRunning || j.TasksDone >= len(tasks) {
				return false
			}
			j.TasksDone = len(tasks)
			return true
		})
		return err
	}
	results, err := p.jobs.TaskResults(ctx, id, tasks)
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
	job, err = p.jobs.Update(ctx, id, func(j *streams.Job) bool {
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
	p.metrics.completed(ctx, job, now)
	p.deps.Log.InfoContext(ctx, "export complete", slog.String("job", id), slog.Int("files", len(manifest.Output)))
	return nil
}

// assemblyToken tells concurrent assemblies of one job apart.
func assemblyToken() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
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
			switch f.FileKind() {
			case streams.KindDeleted:
				m.Deleted = append(m.Deleted, mf)
			case streams.KindError:
				m.Error = append(m.Error, mf)
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
	if err := p.jobs.Remove(ctx, id); err != nil {
		return fmt.Errorf("remove job %s: %w", id, err)
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
	var names []string
	for _, info := range lister {
		if strings.HasPrefix(info.Name, prefix) {
			names = append(names, info.Name)
		}
	}
	return deleteObjects(ctx, files, names)
}

// deleteObjects deletes the named objects; one already gone is no error.
func deleteObjects(ctx context.Context, files jetstream.ObjectStore, names []string) error {
	for _, name := range names {
		if err := files.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("delete file %s: %w", name, err)
		}
	}
	return nil
}
