// Package chstore is flatfhir's access to ClickHouse: the schema of the
// append-only table of resource versions, batch inserts, the bucket counts
// a planner splits exports by, and the point-in-time reads a writer streams.
//
// Every resource change is one row: (type, id, id_hash, seq, last_updated,
// deleted, patients, body). seq is the CHANGES stream sequence, which is
// also the resource's meta.versionId; last_updated is the ingest stamp in
// microseconds since the Unix epoch. The sort key (type, id_hash, id, seq)
// lets a read of one type and one hash range prune on the primary key, and
// the hash spreads every type evenly over ranges of similar size.
//
// resource_versions has granules of 512 rows, not 8,192: single reads,
// writes' existence checks and compartment lookups read a whole granule of
// bodies (about 200 ms for one resource at 8,192 rows of Synthea bodies,
// about 10 ms at 512). Stores created earlier keep their granularity.
//
// The change log (table resource_changes, ADR 0005) holds the same rows
// sorted by (type, last_updated, ...): a _since read scans only the window
// between _since and T there. A materialized view (the feed) copies every
// insert into it; Recover completes it after a crash that stored versions
// without their copy.
//
// Reads are point-in-time: the latest version of each resource with
// last_updated <= T. They are two-pass so that ClickHouse holds only the
// (id, seq) set of one task in memory, never the bodies.
//
// A store is one server or a cluster of shards, each with replicas
// (Config.Shards, ADR 0007). Shards own contiguous ranges of the hash
// buckets; the store routes each row, range and point lookup to its shard
// itself, with no Distributed table. Replicated shards take quorum inserts
// and serve sequentially consistent reads, only from replicas that are
// caught up. There a version can be stored twice (a failed quorum insert's
// block and its replay), and the reads that return bodies keep one.
//
// The SQL works on ClickHouse 18.16 (Debian's package) and on current
// releases; where a newer server offers better column storage, Open detects
// the version and uses it.
package chstore
