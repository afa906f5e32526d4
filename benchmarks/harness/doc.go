// Package harness is flatfhir's end-to-end bulk benchmark: in one run it
// ingests a generated data set through the public API, exports it again as
// a Bulk Data client would, reads the same rows straight out of ClickHouse
// for comparison, and measures the peak memory of every process.
//
// [Run] does everything on 127.0.0.1 only, inside temporary directories:
//
//  1. It builds the engine binary once (go build of
//     services/flatfhir/cmd/flatfhir from the workspace root, found through
//     go.work), starts a local ClickHouse (chserver) and an embedded NATS
//     JetStream server (natsembed, in this process), and starts four child
//     processes of the binary, one per role (api, ingester, planner,
//     writer) on a fresh database. The children die with this process
//     (Pdeathsig) and are stopped with SIGTERM at the end.
//  2. It generates the data set with shared/synth and streams it as NDJSON
//     (optionally gzip) into POST /$ingest, about 50,000 resources per
//     request, through a pipe so that nothing is held in memory. Ingest is
//     timed up to the last accepted request ("accepted") and up to the
//     moment every row is in ClickHouse ("queryable").
//  3. It runs a system-level $export Options.Runs times: kick-off, polling
//     of the status URL at least every 200 ms, the manifest, then the
//     download of every file, whose lines are counted and checked against
//     the manifest and the ingested total. A mismatch is an error, never a
//     figure. After each run the export is deleted (untimed).
//  4. After each export it reads SELECT id, body of the whole table with
//     clickhouse-go (in the engine's own blocks, chstore's BlockSettings), and
//     the bodies with clickhouse-client (FORMAT TSVRaw), the ceilings an
//     export could reach, and reports export rate / raw rate for both.
//  5. It records every process's CPU seconds during the ingest, the raw
//     insert, the first export and the raw reads, with Options.ProfileDir
//     their CPU profiles too, and with Options.KillWriter it times one more
//     export during which the writer process is killed and restarted.
//  6. It reads VmHWM (peak resident memory) of every child, of the
//     ClickHouse server and of this process (which hosts NATS and the
//     generator) before stopping them.
//
// The result is a [Report]; [Report.WriteTable] prints it and its JSON form
// is what bulkbench -json writes.
package harness
