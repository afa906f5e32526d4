package api

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// The attachment index cache holds, for the most recently used complete
// exports, the sorted ids of the Binaries their output names. An id costs
// its bytes (at most 64) plus a 16-byte string header, so the cache holds
// at most maxIndexedIDs*80 bytes of ids, about 40 MiB, and usually half
// that (UUID ids). An export naming more than maxIndexedIDs Binaries is
// not cached: its indexes are read again on each attachment request.
const (
	maxIndexedJobs = 16
	maxIndexedIDs  = 512 << 10
)

// errIndexGone means an index a task result names is missing: the export
// is being removed.
var errIndexGone = errors.New("attachment index missing")

// attachmentIndexes is the LRU cache of complete exports' attachment
// indexes, by job id. A complete export's task results never change, so an
// entry needs no invalidation; a removed export is refused by loadJob
// before its entry is consulted, and falls out of the cache in time.
type attachmentIndexes struct {
	mu    sync.Mutex
	order *list.List // of *indexEntry, most recently used first
	byJob map[string]*list.Element
	ids   int // in all entries
}

type indexEntry struct {
	job string
	ids []string // sorted, distinct
}

func newAttachmentIndexes() *attachmentIndexes {
	return &attachmentIndexes{order: list.New(), byJob: map[string]*list.Element{}}
}

func (c *attachmentIndexes) get(job string) ([]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byJob[job]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*indexEntry).ids, true
}

func (c *attachmentIndexes) put(job string, ids []string) {
	if len(ids) > maxIndexedIDs {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byJob[job]; ok {
		return
	}
	c.byJob[job] = c.order.PushFront(&indexEntry{job: job, ids: ids})
	c.ids += len(ids)
	for c.order.Len() > maxIndexedJobs || c.ids > maxIndexedIDs {
		last := c.order.Back()
		old := last.Value.(*indexEntry)
		c.order.Remove(last)
		delete(c.byJob, old.job)
		c.ids -= len(old.ids)
	}
}

// attachmentNamed reports whether the output of job, a complete export,
// names Binary/id: whether one of its task results' attachment indexes
// lists it.
func (s *Server) attachmentNamed(ctx context.Context, job streams.Job, id string) (bool, error) {
	ids, ok := s.indexes.get(job.JobID)
	if !ok {
		var complete bool
		var err error
		ids, complete, err = s.loadIndexes(ctx, job)
		if errors.Is(err, errIndexGone) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if complete {
			s.indexes.put(job.JobID, ids)
		}
	}
	_, found := slices.BinarySearch(ids, id)
	return found, nil
}

// loadIndexes reads the attachment indexes of job's task results and
// merges them. complete is false when fewer results than tasks were found
// (the export is being removed): the ids are then not worth caching.
func (s *Server) loadIndexes(ctx context.Context, job streams.Job) (ids []string, complete bool, err error) {
	tasks, err := s.jobs.TaskIDs(ctx, job.JobID)
	if err != nil {
		return nil, false, transient("the attachments of export %s could not be listed; retry: %v", job.JobID, err)
	}
	for _, task := range tasks {
		r, ok, err := s.jobs.TaskResult(ctx, job.JobID, task)
		if err != nil {
			return nil, false, transient("the attachments of export %s could not be read; retry: %v", job.JobID, err)
		}
		if !ok {
			return nil, false, errIndexGone
		}
		if !streams.IsAttachmentIndex(r.AttachmentIndex) {
			continue
		}
		raw, err := s.files.GetBytes(ctx, streams.ObjectName(job.JobID, r.AttachmentIndex))
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil, false, errIndexGone
		}
		if err != nil {
			return nil, false, transient("the attachments of export %s could not be read; retry: %v", job.JobID, err)
		}
		for line := range bytes.SplitSeq(raw, []byte("\n")) {
			if len(line) > 0 {
				ids = append(ids, string(line))
			}
		}
	}
	slices.Sort(ids)
	return slices.Clip(slices.Compact(ids)), len(tasks) >= job.TasksTotal, nil
}
