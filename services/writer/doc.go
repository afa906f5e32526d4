// Package writer pulls export tasks from EXPORT_TASKS, streams the rows of
// each task's range from ClickHouse as they stood at transactionTime, and
// writes them as NDJSON files into the JetStream object store, rolling
// files over by resource count and by size.
//
// Each attempt writes under its own names. The first attempt to record its
// result (a KV create) wins; a slower or retried attempt deletes what it
// wrote. So a writer that dies mid-task is replaced without duplicating a
// line, and every count in the manifest is the exact line count of its file.
// Many writers share the work queue; nothing is held in memory beyond one
// block of rows and one buffer per open file.
package writer
