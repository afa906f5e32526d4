package writer

import (
	"context"
	"fmt"

	"github.com/flatfhir/flatfhir/streams"
)

// A task is one or more pipelines: a source yields the resources of its
// range, of one type or several (source.go); the stages built once per
// type transform or drop each one (stages.go, binary.go); and a sink
// writes them as NDJSON parts with the attempt's attachment index
// (files.go). Deletions, when the task lists them, follow the resources
// into the same sink.

// resource is one resource on its way through a task's pipeline.
type resource struct {
	typ, id string
	body    []byte
}

// stage transforms a resource in place, or drops it (keep false).
type stage func(r *resource) (keep bool, err error)

// reader yields resources by type and id; a body is valid only during its
// call.
type reader func(ctx context.Context, emit func(typ, id string, body []byte) error) error

// typeSteps are what a pipeline does with the resources of one type.
type typeSteps struct {
	typ    string
	stages []stage
	// deletedAs names a deletion of this type in the deleted files.
	deletedAs func(id string) (typ, docID string)
}

// taskPipeline is a source of one type or several, each type's steps, and
// the source's deletions.
type taskPipeline struct {
	source reader
	// deleted yields the ids of the range's deletions (nil: the task lists
	// none).
	deleted reader
	steps   map[string]*typeSteps // by type
}

func newPipeline(source reader, steps ...*typeSteps) *taskPipeline {
	p := &taskPipeline{source: source, steps: make(map[string]*typeSteps, len(steps))}
	for _, s := range steps {
		p.steps[s.typ] = s
	}
	return p
}

// stepsOf returns the steps of typ, which the source must read.
func (p *taskPipeline) stepsOf(typ string) (*typeSteps, error) {
	s := p.steps[typ]
	if s == nil {
		return nil, fmt.Errorf("the store returned a %s, which the task does not read", typ)
	}
	return s, nil
}

// writeTo runs the pipeline into out: its resources, then its deletions.
func (p *taskPipeline) writeTo(ctx context.Context, out *fileSet) error {
	err := p.source(ctx, func(typ, id string, body []byte) error {
		steps, err := p.stepsOf(typ)
		if err != nil {
			return err
		}
		r := resource{typ: typ, id: id, body: body}
		for _, s := range steps.stages {
			if keep, err := s(&r); err != nil || !keep {
				return err
			}
		}
		return out.write(ctx, r.typ, streams.KindOutput, r.body)
	})
	if err != nil {
		return err
	}
	if p.deleted == nil {
		return nil
	}
	return p.deleted(ctx, func(typ, id string, _ []byte) error {
		steps, err := p.stepsOf(typ)
		if err != nil {
			return err
		}
		typ, id = steps.deletedAs(id)
		return out.writeDeleted(ctx, typ, id)
	})
}

// writeAll runs a task's pipelines into out, then finishes out's files and
// stores the attachment index the pipelines filled.
func writeAll(ctx context.Context, ps []*taskPipeline, att *attachments, out *fileSet) error {
	for _, p := range ps {
		if err := p.writeTo(ctx, out); err != nil {
			return err
		}
	}
	if err := out.close(ctx); err != nil {
		return err
	}
	return out.writeIndex(ctx, att.index())
}
