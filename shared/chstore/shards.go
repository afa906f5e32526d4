package chstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// shard is one shard of the store (ADR 0007): the replicas that hold the
// same slice of the id hash space, reached through one connection pool that
// dials them round robin and skips one that does not answer.
type shard struct {
	index    int
	replicas []string
	conn     driver.Conn // reads: caught-up replicas only
	// wconn writes. Any reachable replica takes an insert: the quorum,
	// not the replica, makes it durable. A replica fetching the parts of
	// other inserts is not caught up for reads, and under a steady load
	// every replica often is.
	wconn driver.Conn
	// quorum is how many replicas an insert must reach before it returns:
	// a majority of them when the tables are replicated, else 0 (none asked).
	quorum int
	// health: on replicated shards, each replica and whether it is caught
	// up; the pool dials only those that are.
	health []*replica
	// horizon: every version stamped after it (microseconds) is in this
	// shard's change log. Read at most every horizonRefresh, at refreshed.
	hmu       sync.Mutex
	horizon   uint64
	refreshed time.Time
}

// bucketWidth is how many id hashes one bucket holds.
const bucketWidth = HashSpace / HashBuckets

// ShardOfBucket is the shard among n that holds hash bucket b: shards own
// contiguous, nearly equal ranges of buckets, in order.
func ShardOfBucket(b uint64, n int) int {
	return int(b * uint64(n) / HashBuckets)
}

// ShardStart is the first id hash of shard i among n (HashSpace for i = n).
func ShardStart(i, n int) uint64 {
	b := (uint64(i)*HashBuckets + uint64(n) - 1) / uint64(n) // the first bucket b with ShardOfBucket(b, n) = i
	return b * bucketWidth
}

// Shards is how many shards hold the versions.
func (s *Store) Shards() int { return len(s.shards) }

// shardOf is the shard holding the versions of ids with this hash.
func (s *Store) shardOf(idHash uint32) *shard {
	return s.shards[ShardOfBucket(uint64(idHash)/bucketWidth, len(s.shards))]
}

// piece is the part of a hash range one shard holds.
type piece struct {
	sh     *shard
	lo, hi uint64
}

// pieces cuts the hash range [lo, hi) at shard boundaries.
func (s *Store) pieces(lo, hi uint64) []piece {
	var out []piece
	n := len(s.shards)
	for i, sh := range s.shards {
		a, b := max(lo, ShardStart(i, n)), min(hi, ShardStart(i+1, n))
		if a < b {
			out = append(out, piece{sh, a, b})
		}
	}
	return out
}

// byShard groups items by the shard holding each one's id hash, in shard
// order.
func byShard[T any](s *Store, items []T, hash func(T) uint32) []shardItems[T] {
	groups := make([][]T, len(s.shards))
	for _, it := range items {
		sh := s.shardOf(hash(it))
		groups[sh.index] = append(groups[sh.index], it)
	}
	var out []shardItems[T]
	for i, g := range groups {
		if len(g) > 0 {
			out = append(out, shardItems[T]{s.shards[i], g})
		}
	}
	return out
}

type shardItems[T any] struct {
	sh    *shard
	items []T
}

// eachShard runs fn on every shard at once and joins their errors.
func (s *Store) eachShard(fn func(sh *shard) error) error {
	if len(s.shards) == 1 {
		return fn(s.shards[0])
	}
	errs := make([]error, len(s.shards))
	var wg sync.WaitGroup
	for i, sh := range s.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(sh); err != nil {
				errs[i] = fmt.Errorf("shard %d: %w", i+1, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// BlockSettings are the settings of a read that streams rows: blocks of
// at most ReadBlockRows rows and about ReadBlockBytes of bodies (a block
// holds one body at least, however large). Smaller blocks than
// ClickHouse's own cost no speed: a read of 200,000 bodies of 1.1 KB on
// average took 0.97 s in blocks of 256 KiB, 1.09 s in blocks of 1,024 rows
// (1.2 MB).
func (s *Store) BlockSettings() clickhouse.Settings {
	return clickhouse.Settings{
		"max_block_size": s.cfg.ReadBlockRows,
		"preferred_max_column_in_block_size_bytes": s.cfg.ReadBlockBytes,
	}
}

// readCtx is ctx with the settings of a read, and with
// select_sequential_consistency on replicated tables: a replica that lacks
// a version an insert reported stored refuses the read instead of
// answering without it (ADR 0007).
func (s *Store) readCtx(ctx context.Context, settings clickhouse.Settings) context.Context {
	if s.replicated {
		if settings == nil {
			settings = clickhouse.Settings{}
		}
		settings["select_sequential_consistency"] = 1
	}
	if settings == nil {
		return ctx
	}
	return clickhouse.Context(ctx, clickhouse.WithSettings(settings))
}

// writeCtx is ctx with the settings of an insert into sh: on replicated
// tables it returns only once a majority of the shard's replicas holds the
// rows, and an INSERT ... SELECT reads as readCtx does.
func (s *Store) writeCtx(ctx context.Context, sh *shard) context.Context {
	if !s.replicated {
		return ctx
	}
	// Every insert stores a new block: ClickHouse's block deduplication
	// would acknowledge a block that one replica kept from a failed quorum
	// insert without its quorum, and the watermark would then pass
	// versions that exports do not see.
	settings := clickhouse.Settings{"select_sequential_consistency": 1, "insert_deduplicate": 0}
	if sh.quorum >= 2 {
		settings["insert_quorum"] = sh.quorum
		settings["insert_quorum_timeout"] = int(s.cfg.QuorumTimeout.Milliseconds())
	}
	return clickhouse.Context(ctx, clickhouse.WithSettings(settings))
}

// ParseShards reads a cluster's layout: shards separated by ";", the
// replicas of a shard by ",", each host:port ("a1:9000,a2:9000;b1:9000,b2:9000").
func ParseShards(v string) ([][]string, error) {
	var out [][]string
	for i, part := range strings.Split(v, ";") {
		var replicas []string
		for _, addr := range strings.Split(part, ",") {
			addr = strings.TrimSpace(addr)
			if addr == "" {
				continue
			}
			if !strings.Contains(addr, ":") || strings.ContainsAny(addr, " /'\"\\") {
				return nil, fmt.Errorf("shard %d: %q is not host:port", i+1, addr)
			}
			replicas = append(replicas, addr)
		}
		if len(replicas) == 0 {
			return nil, fmt.Errorf("shard %d names no replica", i+1)
		}
		out = append(out, replicas)
	}
	return out, nil
}

// query starts a read on sh. A read is idempotent: when it fails before
// returning a row (a replica died, or refuses the read because it lags
// behind a quorum insert), it is tried again, as many times as the shard
// has replicas; the pool dials past a replica that does not answer. A read
// that fails after rows came back is the caller's to retry whole.
func (s *Store) query(ctx context.Context, sh *shard, q string, args ...any) (driver.Rows, error) {
	var err error
	for range len(sh.replicas) + 1 {
		var rows driver.Rows
		if rows, err = sh.conn.Query(ctx, q, args...); err == nil {
			return rows, nil
		}
		if ctx.Err() != nil || !retryable(err) {
			return nil, err
		}
	}
	return nil, err
}

// retryable: the error may pass on another replica or connection. A
// server's refusal of the query itself (bad SQL, a limit) would not.
func retryable(err error) bool {
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		return true // the connection failed
	}
	switch ex.Code {
	case 289, 319, 242, 209, 210: // replica not in quorum or lagging, read-only, socket timeout, network
		return true
	}
	return false
}
