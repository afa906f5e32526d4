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

// pipeline builds task's pipeline: its range, source, stages and
// deletions. A malformed _elements or _typeFilter fails the task for good.
func (w *Writer) pipeline(ctx context.Context, task streams.Task) (*taskPipeline, error) {
	elements, err := fhir.ParseElements(task.Elements)
	if err != nil {
		return nil, &permanentError{fmt.Errorf("_elements: %v", err)}
	}
	filter, err := typefilter.ParseAt(task.TypeFilter, task.Until) // ap means the same in every task
	if err != nil {
		return nil, &permanentError{fmt.Errorf("_typeFilter: %v", err)}
	}
	att := newAttachments(task.BaseURL, task.AttachmentBase)
	p := &taskPipeline{typ: task.Type, att: att}
	r, err := w.scope(ctx, task)
	if err != nil {
		return nil, err
	}
	p.source = w.source(task, r, filter)
	p.stages = stages(task, filter, elements, att)
	// An associated task lists no deletions: a deleted Provenance's
	// targets are gone with its body.
	if !task.Since.IsZero() && task.Associated == "" {
		p.deleted = func(ctx context.Context, emit func(string, []byte) error) error {
			return w.deps.Store.ReadDeleted(ctx, r, emit)
		}
		p.deletedAs = deletedAs(task)
	}
	return p, nil
}

// source is where task's resources come from: the associated Provenances
// of includeAssociatedData, the Provenances targeting the compartments at
// Patient and Group level, or the latest versions of the range.
func (w *Writer) source(task streams.Task, r chstore.Range, filter typefilter.Filter) reader {
	switch {
	case task.Associated != "":
		return func(ctx context.Context, emit func(string, []byte) error) error {
			return w.associatedProvenance(ctx, task, r, filter, emit)
		}
	case task.Type == "Provenance" && task.Level != streams.LevelSystem:
		return func(ctx context.Context, emit func(string, []byte) error) error {
			return w.provenance(ctx, r, emit)
		}
	default:
		return func(ctx context.Context, emit func(string, []byte) error) error {
			return w.deps.Store.ReadLatest(ctx, r, emit)
		}
	}
}

// scope is the range a task reads: its type and hash range as of Until,
// narrowed at Patient and Group level to the compartments of the patients
// the planner listed (any patient's when it listed none).
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
