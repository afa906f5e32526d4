package streams

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Stream, bucket and consumer names.
const (
	StreamChanges     = "CHANGES"
	StreamExportJobs  = "EXPORT_JOBS"
	StreamExportTasks = "EXPORT_TASKS"

	BucketJobs   = "export_jobs"
	BucketIngest = "ingest"
	ObjectFiles  = "export_files"

	// BucketAuthClients holds the registered SMART Backend Services
	// clients, one key per client id.
	BucketAuthClients = "auth_clients"
	// BucketAuthKeys holds the engine's access-token signing keys
	// (KeyAuthKeyring).
	BucketAuthKeys = "auth_keys"
	// BucketAuthJTI records the jti of every accepted client assertion
	// (KeyAssertion) for AuthJTITTL, so that a replay is refused by every
	// API replica.
	BucketAuthJTI = "auth_jti"

	ConsumerPlanner = "planner"
	ConsumerWriters = "writers"

	// KeyWatermark is the key of the ingest watermark in BucketIngest.
	KeyWatermark = "watermark"
	// KeyAuthKeyring is the key of the signing keyring in BucketAuthKeys.
	KeyAuthKeyring = "keyring"
)

// AuthJTITTL is how long an assertion's jti stays recorded: longer than
// the longest assertion lifetime (5 minutes) plus clock skew allowances.
const AuthJTITTL = 10 * time.Minute

// Subject templates. Use the functions below rather than formatting them.
const (
	subjectChangesAll   = "changes.>"
	subjectPartitionAll = "changes.%d.>"
	subjectChangePut    = "changes.%d.put.%s"
	subjectChangeDelete = "changes.%d.delete.%s"
	subjectTransaction  = "changes.%d.transaction"
	subjectMark         = "changes.mark"

	subjectJobsAll    = "export.jobs.>"
	subjectJobSubmit  = "export.jobs.submit.%s"
	subjectJobDone    = "export.jobs.done.%s"
	subjectJobCancel  = "export.jobs.cancel.%s"
	subjectTasksAll   = "export.tasks.>"
	subjectTasksOfJob = "export.tasks.%s"
)

// Message headers.
const (
	// HeaderOp is "put", "delete", "transaction" or "mark" on a change message.
	HeaderOp = "Flatfhir-Op"
	// HeaderType and HeaderID name the resource a change is about.
	HeaderType = "Flatfhir-Type"
	HeaderID   = "Flatfhir-Id"
)

// Change operations.
const (
	OpPut    = "put"
	OpDelete = "delete"
	// OpTransaction is a message carrying several changes that are
	// applied together or not at all (see TransactionMsg).
	OpTransaction = "transaction"
	// OpMark changes no resource: it is a point in the stream whose stamp
	// the watermark passes once every change before it is queryable (see
	// PublishMark).
	OpMark = "mark"
)

var (
	typePattern = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	jobPattern  = regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`)
)

// ValidType reports whether s is shaped like a FHIR resource type name and
// therefore safe as a subject token.
func ValidType(s string) bool { return typePattern.MatchString(s) }

// ValidID reports whether s is a legal FHIR id.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// ValidJobID reports whether s is shaped like a job id.
func ValidJobID(s string) bool { return jobPattern.MatchString(s) }

// legacyChangeSubjects are the subjects of changes published before
// partitions; they belong to partition 0.
var legacyChangeSubjects = []string{"changes.put.>", "changes.delete.>", "changes.transaction"}

// SubjectChange is the subject of a change of op to the resource typ/id,
// on the resource's partition.
func SubjectChange(op, typ, id string) string {
	if op == OpDelete {
		return fmt.Sprintf(subjectChangeDelete, PartitionOf(id), typ)
	}
	return fmt.Sprintf(subjectChangePut, PartitionOf(id), typ)
}

// SubjectTransaction is the subject of a transaction message whose first
// change is to the resource with id: the transaction is on its partition.
func SubjectTransaction(id string) string {
	return fmt.Sprintf(subjectTransaction, PartitionOf(id))
}

// SubjectMark is the subject of mark messages (see PublishMark).
func SubjectMark() string { return subjectMark }

// SubjectJobSubmit is where the API announces an accepted kick-off.
func SubjectJobSubmit(job string) string { return fmt.Sprintf(subjectJobSubmit, job) }

// SubjectJobDone is where a writer announces that a task of job finished.
func SubjectJobDone(job string) string { return fmt.Sprintf(subjectJobDone, job) }

// What a message on EXPORT_JOBS asks of planners (see ParseJobSubject).
const (
	JobSubmit = "submit"
	JobDone   = "done"
	JobCancel = "cancel"
)

// ParseJobSubject reads the kind (JobSubmit, JobDone, JobCancel) and the
// job id of an EXPORT_JOBS subject; ok is false for any other subject.
func ParseJobSubject(subject string) (kind, job string, ok bool) {
	rest, found := strings.CutPrefix(subject, "export.jobs.")
	if !found {
		return "", "", false
	}
	kind, job, found = strings.Cut(rest, ".")
	switch {
	case !found || !ValidJobID(job):
		return "", "", false
	case kind == JobSubmit, kind == JobDone, kind == JobCancel:
		return kind, job, true
	}
	return "", "", false
}

// SubjectJobCancel is where the API asks planners to cancel or release job.
func SubjectJobCancel(job string) string { return fmt.Sprintf(subjectJobCancel, job) }

// SubjectTasks carries the tasks of one job; purging it cancels them.
func SubjectTasks(job string) string { return fmt.Sprintf(subjectTasksOfJob, job) }

// KeyJob is the KV key of a job record.
func KeyJob(job string) string { return "job." + job }

// KeyTask is the KV key of a task's result.
func KeyTask(job, task string) string { return "task." + job + "." + task }

// KeyDownload is the KV key holding when a file of job was last being
// downloaded; the janitor leaves a job alone while it is recent.
func KeyDownload(job string) string { return "download." + job }

// KeyTasksOfJob is a KV key filter matching every task result of job.
func KeyTasksOfJob(job string) string { return "task." + job + ".*" }

// ObjectName is the object-store name of a file of job.
func ObjectName(job, file string) string { return job + "/" + file }

// ManifestObject and IgnoredObject name, within a job, the manifest and the
// error file of ignored parameters that one assembly wrote. token tells
// concurrent assemblies of the same job apart: the one whose manifest the
// job record names wins, and the others delete theirs. Rewriting one name
// would purge the chunks of the object a status request is reading.
func ManifestObject(token string) string { return "manifest-" + token + ".json" }

// IgnoredObject names, like ManifestObject, an assembly's error file of
// the parameters a lenient kick-off ignored.
func IgnoredObject(token string) string { return "error-ignored-" + token + ".ndjson" }

// AttachmentBase is the URL prefix under which the API serves the Binaries
// an export's attachments name: AttachmentBase(base, job)+"Binary/<id>" is
// GET [base]/files/<job>/attachments/Binary/<id>, authorized as the
// export's files are. base is a FHIR base without trailing slash; "" gives "".
func AttachmentBase(base, job string) string {
	if base == "" {
		return ""
	}
	return strings.TrimRight(base, "/") + "/files/" + job + "/attachments/"
}

// KeyAssertion is the BucketAuthJTI key recording that client used an
// assertion whose jti hashes to jtiHash (hex, so any jti is key-safe).
func KeyAssertion(client, jtiHash string) string { return "jti." + client + "." + jtiHash }

// MsgIDTask is the message id (JetStream's duplicate window drops a
// repeat) of a task of job: a planner that re-publishes a plan after a
// crash publishes each task once.
func MsgIDTask(job, task string) string { return job + "." + task }

// MsgIDTaskDone is the message id of a writer's announcement that a task
// of job has its result: a retried attempt announces it once.
func MsgIDTaskDone(job, task string) string { return "done." + job + "." + task }

// MsgIDExpire is the message id of the janitor's expiry of job: planner
// replicas sweeping at once expire it once.
func MsgIDExpire(job string) string { return "expire." + job }
