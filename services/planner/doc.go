// Package planner turns accepted exports into plans and sees them through.
//
// It consumes EXPORT_JOBS. On a kick-off it waits until the ingest
// watermark covers every change accepted before the kick-off
// (read-your-writes), fixes transactionTime to the watermark's stamp
// (DESIGN.md invariants 1 and 2), splits the export into tasks of bounded
// size by type and id-hash range, records the plan in the job and publishes
// the tasks to EXPORT_TASKS. On a task completion it counts the recorded
// results and, when all are in, assembles the manifest. On a cancel it
// purges the job's tasks and deletes its files and records.
//
// Everything it knows lives in JetStream; a planner restarted at any point
// picks up where the last one stopped, and several planners may run.
package planner
