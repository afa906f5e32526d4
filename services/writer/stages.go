package writer

import (
	"fmt"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/typefilter"
	"github.com/flatfhir/flatfhir/streams"
)

// stages are the per-resource transforms of task, in order: a Binary
// becomes a DocumentReference first, so that _typeFilter, _elements and
// the attachment rewrite see the resource as it is exported.
func stages(task streams.Task, filter typefilter.Filter, elements fhir.Elements, att *attachments) []stage {
	var out []stage
	if task.Type == "Binary" {
		out = append(out, binaryStage(task, att))
	}
	if !filter.IsZero() {
		out = append(out, filterStage(filter))
	}
	if !elements.IsZero() {
		out = append(out, elementsStage(elements))
	}
	if att.base != "" {
		out = append(out, attachmentStage(att))
	}
	return out
}

// filterStage keeps the resources that match _typeFilter.
func filterStage(filter typefilter.Filter) stage {
	return func(r *resource) (bool, error) {
		match, err := filter.Match(r.typ, r.body)
		if err != nil {
			return false, fmt.Errorf("apply _typeFilter to %s/%s: %w", r.typ, r.id, err)
		}
		return match, nil
	}
}

// elementsStage trims each resource to _elements, tagged SUBSETTED. It
// reuses one buffer: a body lives until the next resource.
func elementsStage(elements fhir.Elements) stage {
	var trimmed []byte
	return func(r *resource) (bool, error) {
		var err error
		if trimmed, _, err = elements.Apply(trimmed[:0], r.typ, r.body); err != nil {
			return false, fmt.Errorf("apply _elements to a %s: %w", r.typ, err)
		}
		r.body = trimmed
		return true, nil
	}
}

// attachmentStage points Attachment urls naming a Binary of this server at
// the export's attachment URL, served under the export's authorization,
// and records those Binaries in the attempt's attachment index.
func attachmentStage(att *attachments) stage {
	return func(r *resource) (bool, error) {
		body, err := att.rewrite(r.typ, r.body)
		if err != nil {
			return false, fmt.Errorf("rewrite attachment urls of %s/%s: %w", r.typ, r.id, err)
		}
		r.body = body
		return true, nil
	}
}
