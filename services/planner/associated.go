package planner

import (
	"slices"

	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/streams"
)

// ExportTypes are the resource types an export's own tasks export: _type,
// or without it the Patient compartment at Patient and Group level, and
// nil (every type) at system level.
func ExportTypes(job streams.Job) []string {
	if len(job.Types) == 0 && (job.Level == streams.LevelPatient || job.Level == streams.LevelGroup) {
		return compartment.Types()
	}
	return job.Types
}

// latestOnly reports whether the export honours LatestProvenanceResources.
// Its only Provenances are then the latest of each exported non-Provenance
// resource ("Other Provenance resources will not be returned"), so its own
// tasks never export Provenance, even when _type or the Patient compartment
// names it: associated tasks add the winners.
func latestOnly(job streams.Job) bool {
	return job.IncludeAssociatedData == streams.AssociatedLatestProvenance
}

// ownsType reports whether the export's own tasks export typ.
func ownsType(job streams.Job, typ string) bool {
	if typ == "Provenance" && latestOnly(job) {
		return false
	}
	types := ExportTypes(job)
	return types == nil || slices.Contains(types, typ)
}

// associatedTargets are the types whose resources associated Provenance
// tasks look for Provenances of: the exported types other than Provenance
// (nil: every type).
func associatedTargets(job streams.Job) []string {
	types := ExportTypes(job)
	if types == nil {
		return nil
	}
	return slices.DeleteFunc(slices.Clone(types), func(t string) bool { return t == "Provenance" })
}

// needsAssociated reports whether includeAssociatedData adds Provenance
// tasks. With RelevantProvenanceResources it does only when the export's
// own tasks leave Provenance out: when they export Provenance, they hold
// every Provenance Relevant could add (every Provenance at system level; at
// Patient and Group level those targeting the compartments, a superset of
// those targeting exported resources), under the same _typeFilter, so
// nothing is added and no Provenance is listed twice. With
// LatestProvenanceResources it always does, unless the export has no
// non-Provenance type to associate Provenances with.
func needsAssociated(job streams.Job) bool {
	switch {
	case job.IncludeAssociatedData == "":
		return false
	case latestOnly(job):
		targets := associatedTargets(job)
		return targets == nil || len(targets) > 0
	default:
		return !ownsType(job, "Provenance")
	}
}

// binaryAsDocuments reports whether an export listing its types wants
// DocumentReferences but not Binary: patients' Binaries still go out, as
// the DocumentReferences the Bulk Data IG makes of them, from Binary tasks
// that keep only those.
func binaryAsDocuments(types []string) bool {
	return types != nil && slices.Contains(types, "DocumentReference") && !slices.Contains(types, "Binary")
}

// binaryTasks reports whether the export has Binary tasks, and what they
// emit (streams.Task.EmitAs): only patients' Binaries, as DocumentReferences,
// when the export wants those but not Binary, or at Patient and Group level
// (every Binary in a compartment is a patient's); at system level a Binary
// task exports every Binary, patients' ones as DocumentReferences.
func binaryTasks(job streams.Job) (planned bool, emitAs string) {
	switch {
	case binaryAsDocuments(ExportTypes(job)):
		return true, "DocumentReference"
	case !ownsType(job, "Binary"):
		return false, ""
	case job.Level != streams.LevelSystem:
		return true, "DocumentReference"
	default:
		return true, ""
	}
}

// countTypes are the types a plan counts rows of: the exported types, plus
// Provenance when includeAssociatedData adds Provenance tasks, plus Binary
// when its patients' Binaries go out as DocumentReferences.
func countTypes(job streams.Job) []string {
	types := ExportTypes(job)
	if needsAssociated(job) && types != nil && !slices.Contains(types, "Provenance") {
		types = append(slices.Clone(types), "Provenance")
	}
	if binaryAsDocuments(ExportTypes(job)) {
		types = append(slices.Clone(types), "Binary")
		slices.Sort(types)
	}
	return types
}
