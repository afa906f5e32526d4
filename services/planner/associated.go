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

// needsAssociated reports whether includeAssociatedData adds Provenance
// tasks. It does only when the export's own tasks leave Provenance out:
// when they export Provenance, they hold every Provenance includeAssociatedData
// could add (every Provenance at system level; at Patient and Group level
// those targeting the compartments, a superset of those targeting exported
// resources), under the same _typeFilter, so nothing is added and no
// Provenance is listed twice.
func needsAssociated(job streams.Job) bool {
	types := ExportTypes(job)
	return job.IncludeAssociatedData != "" && types != nil && !slices.Contains(types, "Provenance")
}

// binaryAsDocuments reports whether an export listing its types wants
// DocumentReferences but not Binary: patients' Binaries still go out, as
// the DocumentReferences the Bulk Data IG makes of them, from Binary tasks
// that keep only those.
func binaryAsDocuments(types []string) bool {
	return types != nil && slices.Contains(types, "DocumentReference") && !slices.Contains(types, "Binary")
}

// countTypes are the types a plan counts rows of: the exported types, plus
// Provenance when includeAssociatedData adds Provenance tasks, plus Binary
// when its patients' Binaries go out as DocumentReferences.
func countTypes(job streams.Job) []string {
	types := ExportTypes(job)
	if needsAssociated(job) {
		types = append(slices.Clone(types), "Provenance")
	}
	if binaryAsDocuments(ExportTypes(job)) {
		types = append(slices.Clone(types), "Binary")
		slices.Sort(types)
	}
	return types
}
