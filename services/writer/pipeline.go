package writer

import (
	"context"

	"github.com/flatfhir/flatfhir/streams"
)

// A task is a pipeline: a source yields the resources of its range
// (source.go), stages built once per task transform or drop each one
// (stages.go, binary.go), and a sink writes them as NDJSON parts with the
// attempt's attachment index (files.go). Deletions, when the task lists
// them, follow the resources into the same sink.

// resource is one resource on its way through a task's pipeline.
type resource struct {
	typ, id string
	body    []byte
}

// stage transforms a resource in place, or drops it (keep false).
type stage func(r *resource) (keep bool, err error)

// reader yields resources by id; a body is valid only during its call.
type reader func(ctx context.Context, emit func(id string, body []byte) error) error

// taskPipeline is one task's source, stages and deletions.
type taskPipeline struct {
	typ    string // the type the source reads
	source reader
	stages []stage
	// deleted yields the ids of the range's deletions (nil: the task
	// lists none), named in the deleted files as deletedAs says.
	deleted   reader
	deletedAs func(id string) (typ, docID string)
	att       *attachments
}

// writeTo runs the pipeline into out and finishes out's files.
func (p *taskPipeline) writeTo(ctx context.Context, out *fileSet) error {
	err := p.source(ctx, func(id string, body []byte) error {
		r := resource{typ: p.typ, id: id, body: body}
		for _, s := range p.stages {
			if keep, err := s(&r); err != nil || !keep {
				return err
			}
		}
		return out.write(ctx, r.typ, streams.KindOutput, r.body)
	})
	if err != nil {
		return err
	}
	if p.deleted != nil {
		err := p.deleted(ctx, func(id string, _ []byte) error {
			typ, id := p.deletedAs(id)
			return out.writeDeleted(ctx, typ, id)
		})
		if err != nil {
			return err
		}
	}
	if err := out.close(ctx); err != nil {
		return err
	}
	return out.writeIndex(ctx, p.att.index())
}
