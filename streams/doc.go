// Package streams is the single source of truth for flatfhir's messaging:
// JetStream stream, consumer, key-value and object-store definitions, the
// subjects services publish on, and the schemas of the messages they carry.
//
// No service spells a subject or a bucket name itself; each calls the
// helpers here. Ensure creates (or updates) every definition and is safe to
// call from every replica at start-up.
//
// Topology:
//
//	CHANGES        changes.<p>.put.<Type>, changes.<p>.delete.<Type>   one change per message;
//	               changes.<p>.transaction                      several, all or none;
//	               changes.mark                                 a kick-off's point in the stream;
//	               limits retention; <p> is the partition (PartitionOf); ingesters
//	               share the partitions and keep their positions in the "ingest" KV
//	               bucket (ADR 0008).
//	EXPORT_JOBS    export.jobs.submit.<job>, export.jobs.done.<job>,
//	               export.jobs.cancel.<job>                      work queue for planners.
//	EXPORT_TASKS   export.tasks.<job>                           work queue for writers.
//	KV export_jobs job.<job> (Job), task.<job>.<task> (TaskResult)
//	KV ingest      watermark (Watermark), partition.<p> (PartitionState), member.<id>
//	OBJ export_files <job>/<file>                               NDJSON parts, manifests.
package streams
