package writer

import (
	"context"
	"errors"
	"fmt"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/typefilter"
	"github.com/flatfhir/flatfhir/streams"
)

// pipelines builds task's pipelines over its hash range, filling att: the
// types read as they are stored share one pipeline, whose reads name them
// all at once; a type with a source of its own has its own. A malformed
// _elements or _typeFilter fails the task for good.
func (w *Writer) pipelines(ctx context.Context, task streams.Task, att *attachments) ([]*taskPipeline, error) {
	elements, err := fhir.ParseElements(task.Elements)
	if err != nil {
		return nil, &permanentError{fmt.Errorf("_elements: %v", err)}
	}
	filter, err := typefilter.ParseAt(task.TypeFilter, task.Until) // ap means the same in every task
	if err != nil {
		return nil, &permanentError{fmt.Errorf("_typeFilter: %v", err)}
	}
	scope, err := w.scope(ctx, task)
	if err != nil {
		return nil, err
	}
	var ps []*taskPipeline
	var stored []*typeSteps
	for _, typ := range task.ExportedTypes() {
		one := task
		one.Type, one.Types = typ, nil
		steps := &typeSteps{typ: typ, stages: stages(one, filter, elements, att), deletedAs: deletedAs(one)}
		r := scope
		r.Type = typ
		if source := w.ownSource(one, r, filter); source != nil {
			ps = append(ps, w.pipeline(task, r, source, steps))
			continue
		}
		stored = append(stored, steps)
	}
	if len(stored) > 0 {
		r := scope
		if len(stored) == 1 {
			r.Type = stored[0].typ
		} else {
			for _, s := range stored {
				r.Types = append(r.Types, s.typ)
			}
		}
		source := func(ctx context.Context, emit func(typ, id string, body []byte) error) error {
			return w.deps.Store.ReadLatestTypes(ctx, r, emit)
		}
		ps = append(ps, w.pipeline(task, r, source, stored...))
	}
	return ps, nil
}

// pipeline is a pipeline of task reading r from source, with its deletions
// when task lists them.
func (w *Writer) pipeline(task streams.Task, r chstore.Range, source reader, steps ...*typeSteps) *taskPipeline {
	p := newPipeline(source, steps...)
	// An associated task lists no deletions: a deleted Provenance's
	// targets are gone with its body.
	if !task.Since.IsZero() && task.Associated == "" {
		p.deleted = func(ctx context.Context, emit func(typ, id string, body []byte) error) error {
			return w.deps.Store.ReadDeletedTypes(ctx, r, emit)
		}
	}
	return p
}

// ownSource is where task's resources come from when they are not simply
// its range's latest versions: the associated Provenances of
// includeAssociatedData, or the Provenances targeting the compartments at
// Patient and Group level. nil: the latest versions of the range.
func (w *Writer) ownSource(task streams.Task, r chstore.Range, filter typefilter.Filter) reader {
	var read func(ctx context.Context, emit func(id string, body []byte) error) error
	switch {
	case task.Associated != "":
		read = func(ctx context.Context, emit func(string, []byte) error) error {
			return w.associatedProvenance(ctx, task, r, filter, emit)
		}
	case task.Type == "Provenance" && task.Level != streams.LevelSystem:
		read = func(ctx context.Context, emit func(string, []byte) error) error {
			return w.provenance(ctx, r, emit)
		}
	default:
		return nil
	}
	return func(ctx context.Context, emit func(typ, id string, body []byte) error) error {
		return read(ctx, func(id string, body []byte) error { return emit(task.Type, id, body) })
	}
}

// scope is the range a task reads: its type (empty when it has several)
// and hash range as of Until, narrowed at Patient and Group level to the
// compartments of the patients the planner listed (any patient's when it
// listed none). The patient list is loaded once for all the task's types.
func (w *Writer) scope(ctx context.Context, task streams.Task) (chstore.Range, error) {
	r := chstore.Range{Type: task.Type, HashLo: task.HashLo, HashHi: task.HashHi, Since: chstore.Micros(task.Since), Until: chstore.Micros(task.Until)}
	r.InCompartment = task.Level == streams.LevelPatient || task.Level == streams.LevelGroup || onlyPatientsBinaries(task)
	if task.PatientList {
		patients, err := streams.LoadPatients(ctx, w.files, task.JobID)
		if errors.Is(err, streams.ErrNoPatientList) {
			return r, errJobGone // removed with its job
		}
		if err != nil {
			return r, err
		}
		r.Patients = patients
	}
	return r, nil
}
