// Package ingester consumes the CHANGES stream in order, stamps every
// change with meta.versionId (its stream sequence) and meta.lastUpdated
// (strictly increasing, in stream order), batch-inserts the versions of
// the partitions it holds into ClickHouse and then advances their
// watermarks in the "ingest" KV bucket; the global watermark is the lowest
// of them (ADR 0008).
//
// The stamps are a pure function of the stream, so every ingester stamps a
// change the same way, and a batch replayed after a crash gets the same
// stamps and seqs; the versions a crashed insert stored are skipped, not
// stored twice. That is what makes the global watermark a safe
// transactionTime: every change stamped at or below it is queryable, and
// every later change is stamped above it.
package ingester
