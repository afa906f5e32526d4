// Package ingester consumes the CHANGES stream in order, stamps every
// change with meta.versionId (its stream sequence) and meta.lastUpdated
// (strictly increasing, in stream order), batch-inserts the versions into
// ClickHouse and then advances the watermark in the "ingest" KV bucket.
//
// The stamps are a pure function of the watermark and the messages after
// it, so a batch replayed after a crash is inserted with the same stamps and
// the same seqs, and reads treat the copies as one. That is what makes the
// watermark a safe transactionTime: every change stamped at or below it is
// queryable, and every later change is stamped above it.
package ingester
