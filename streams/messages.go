package streams

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Watermark is the ingest position: every change up to Seq in CHANGES is
// queryable in ClickHouse, and every such change was stamped with a
// lastUpdated at or below Stamp. Every later change is stamped above Stamp.
type Watermark struct {
	Seq   uint64    `json:"seq"`
	Stamp time.Time `json:"stamp"`
}

// Export levels.
const (
	LevelSystem  = "system"
	LevelPatient = "patient"
	LevelGroup   = "group"
)

// Job states.
const (
	JobAccepted  = "accepted"
	JobRunning   = "running"
	JobComplete  = "complete"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
)

// ExportRequest is a kick-off the API accepted. Everything in it was
// validated at the edge; the planner only resolves it.
type ExportRequest struct {
	JobID      string   `json:"jobId"`
	ClientID   string   `json:"clientId,omitempty"`
	Level      string   `json:"level"`
	GroupID    string   `json:"groupId,omitempty"`
	RequestURL string   `json:"request"`
	Types      []string `json:"types,omitempty"` // empty: every type of the level
	// Patients limits a Patient or Group export to these patients'
	// compartments (the POST-only patient parameter).
	Patients []string `json:"patients,omitempty"`
	// Elements is the _elements parameter's values, validated.
	Elements []string `json:"elements,omitempty"`
	// TypeFilter is the _typeFilter parameter's values, validated.
	TypeFilter []string `json:"typeFilter,omitempty"`
	// IncludeAssociatedData is the includeAssociatedData code the export
	// honours (AssociatedLatestProvenance or AssociatedRelevantProvenance),
	// the least restrictive one given; empty when absent.
	IncludeAssociatedData string `json:"includeAssociatedData,omitempty"`
	// Since is the _since instant; zero when absent.
	Since time.Time `json:"since,omitzero"`
	// MinChangeSeq is the last CHANGES sequence when the kick-off arrived:
	// the plan waits until the watermark reaches it (read-your-writes).
	MinChangeSeq uint64    `json:"minChangeSeq"`
	SubmittedAt  time.Time `json:"submittedAt"`
	// Ignored lists what a lenient kick-off ignored; each becomes an
	// OperationOutcome in the manifest's error file.
	Ignored []string `json:"ignored,omitempty"`
	// BaseURL is the public FHIR base the kick-off was served under, the
	// base of the manifest's file URLs (no trailing slash). Attachment URLs
	// in the export's files are built on it (see AttachmentBase); empty in
	// jobs recorded before it existed, whose attachments are not rewritten.
	BaseURL string `json:"baseUrl,omitempty"`
}

// Job is the record of an export in BucketJobs under KeyJob.
type Job struct {
	ExportRequest
	Status string `json:"status"`
	// TransactionTime is fixed when the plan is made.
	TransactionTime time.Time `json:"transactionTime,omitzero"`
	TasksTotal      int       `json:"tasksTotal"`
	// TasksPublished is set once every task is on EXPORT_TASKS.
	TasksPublished bool `json:"tasksPublished"`
	TasksDone      int  `json:"tasksDone"`
	// Error says why a failed job failed, for the status endpoint.
	Error       string    `json:"error,omitempty"`
	CompletedAt time.Time `json:"completedAt,omitzero"`
	ExpiresAt   time.Time `json:"expiresAt,omitzero"`
	// Manifest is the object name of the assembled manifest once complete.
	Manifest string `json:"manifest,omitempty"`
}

// Task is one bounded unit of export work: the resources of one type whose
// id hash falls in [HashLo, HashHi), as they stood at Until, changed after
// Since (when set).
type Task struct {
	JobID  string `json:"jobId"`
	TaskID string `json:"taskId"`
	// Type is the one type the task exports, or empty when Types lists
	// several: small types packed into one task, each read over the same
	// hash range, so that an export of many small types (a _since export
	// above all) pays a task's fixed cost once instead of once per type.
	// An empty Type makes a writer that predates Types fail the task
	// loudly rather than export only part of it.
	Type  string   `json:"type"`
	Types []string `json:"types,omitempty"`
	// Rows is how many versions the planner counted in the task's range:
	// an upper bound of what it exports, for packing.
	Rows uint64 `json:"rows,omitempty"`
	// Level selects whose resources the task exports: everything
	// (system), or resources in patients' compartments (patient, group).
	// With PatientList, only the compartments of the patients the planner
	// resolved as of Until, listed in the job's PatientsObject; without,
	// any patient's. GroupID is for logs only: the planner has read the
	// Group.
	Level       string `json:"level"`
	GroupID     string `json:"groupId,omitempty"`
	PatientList bool   `json:"patientList,omitempty"`
	// Elements trims each resource to these elements (and the mandatory
	// ones), tagging it SUBSETTED.
	Elements []string `json:"elements,omitempty"`
	// TypeFilter keeps only resources matching its queries for their type.
	TypeFilter []string  `json:"typeFilter,omitempty"`
	HashLo     uint64    `json:"hashLo"`
	HashHi     uint64    `json:"hashHi"`
	Since      time.Time `json:"since,omitzero"`
	Until      time.Time `json:"until"`
	// MaxFileResources and MaxFileBytes roll output files over.
	MaxFileResources int   `json:"maxFileResources"`
	MaxFileBytes     int64 `json:"maxFileBytes"`
	// Associated, when set, makes this an includeAssociatedData task: Type
	// is Provenance, and it exports the Provenances of its hash range that
	// target a resource of the export's output (see AssociatedLatestProvenance
	// and AssociatedRelevantProvenance), whatever the export's types.
	Associated string `json:"associated,omitempty"`
	// ExportTypes are the types the export's output holds, for deciding
	// whether a Provenance's target is exported; empty means every type.
	// Set on associated tasks only.
	ExportTypes []string `json:"exportTypes,omitempty"`
	// EmitAs, when set, is the one type the task's output holds. A Binary
	// task with EmitAs DocumentReference exports only patients' Binaries,
	// as the DocumentReferences the Bulk Data IG makes of them, and names
	// its deletions so; without it, a Binary task exports patients'
	// Binaries that way and every other Binary as it is.
	EmitAs string `json:"emitAs,omitempty"`
	// BaseURL is the job's BaseURL: an Attachment.url on it naming a
	// Binary is rewritten like a relative Binary/<id>.
	BaseURL string `json:"baseUrl,omitempty"`
	// AttachmentBase is AttachmentBase(BaseURL, JobID): the writer points
	// every Attachment.url naming a Binary at AttachmentBase+"Binary/<id>",
	// which the API serves under the export's authorization. Empty: no
	// rewrite, and converted Binaries keep their data inline.
	AttachmentBase string `json:"attachmentBase,omitempty"`
}

// ExportedTypes are the types task exports, in order: Types, or Type.
func (t Task) ExportedTypes() []string {
	if len(t.Types) > 0 {
		return t.Types
	}
	return []string{t.Type}
}

// TypeLabel names the task's types for logs and errors.
func (t Task) TypeLabel() string {
	return strings.Join(t.ExportedTypes(), ",")
}

// includeAssociatedData codes (Bulk Data IG v2 CodeSystem
// include-associated-data).
const (
	// AssociatedLatestProvenance adds, for each exported resource, the most
	// recent Provenance targeting it.
	AssociatedLatestProvenance = "LatestProvenanceResources"
	// AssociatedRelevantProvenance adds every Provenance targeting an
	// exported resource.
	AssociatedRelevantProvenance = "RelevantProvenanceResources"
)

// File is one NDJSON file a task wrote.
type File struct {
	Name string `json:"name"` // object name within the job, see ObjectName
	// Kind is the manifest array the file goes in (KindOutput, KindDeleted,
	// KindError); see FileKind for results recorded without one.
	Kind  string `json:"kind,omitempty"`
	Type  string `json:"type"`
	Count int    `json:"count"`
	Bytes int64  `json:"bytes"`
}

// TaskResult is what a writer records under KeyTask when a task completes.
// The first result recorded wins; a retried attempt never adds a second.
type TaskResult struct {
	JobID   string `json:"jobId"`
	TaskID  string `json:"taskId"`
	Attempt uint64 `json:"attempt"`
	// Token is unique to the attempt and part of its file names, so two
	// attempts never share an object even if delivery counts repeat.
	Token string `json:"token,omitempty"`
	Files []File `json:"files"`
	// AttachmentIndex is the object name within the job (see ObjectName)
	// of the attempt's attachment index: the ids of the Binaries whose
	// attachment URL (AttachmentBase+"Binary/<id>") the attempt wrote into
	// its files, sorted, one per line. The API serves an attachment only
	// when one of the job's indexes lists it. Empty when the files name no
	// Binary. Never a File: the manifest does not list it.
	AttachmentIndex string `json:"attachmentIndex,omitempty"`
}

// ManifestFile is an output entry of a manifest before URLs are attached.
type ManifestFile struct {
	Type  string `json:"type"`
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// Manifest is the planner's assembled result, stored as an object; the API
// turns names into absolute URLs.
type Manifest struct {
	TransactionTime time.Time      `json:"transactionTime"`
	Request         string         `json:"request"`
	Output          []ManifestFile `json:"output"`
	Deleted         []ManifestFile `json:"deleted"`
	Error           []ManifestFile `json:"error"`
}

// Encode marshals a message. Messages are plain JSON.
func Encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Every message type here marshals; a failure is a programming error.
		panic(fmt.Sprintf("streams: encode %T: %v", v, err))
	}
	return b
}

// Decode unmarshals a message, naming what it was decoding on failure.
func Decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	return nil
}
