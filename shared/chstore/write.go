package chstore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Row is one resource version.
type Row struct {
	Type        string
	ID          string
	Seq         uint64
	LastUpdated uint64 // microseconds since the Unix epoch
	Deleted     bool
	Patients    []string
	Body        []byte
}

const columns = "type, id, id_hash, seq, last_updated, deleted, patients, body"

// Insert writes rows to the versions table of their shards, at once, and
// returns when every shard holds its rows (on replicated shards, a majority
// of the replicas); the feed copies them into the change log. Rows of one
// shard go in one batch. A caller replaying changes after a crash must
// leave out the versions Recover reports: reads expect each (id, seq) once.
func (s *Store) Insert(ctx context.Context, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	if len(s.shards) == 1 {
		return s.insert(s.writeCtx(ctx, s.shards[0]), s.shards[0], s.table, rows)
	}
	groups := byShard(s, rows, func(r Row) uint32 { return IDHash(r.ID) })
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.insert(s.writeCtx(ctx, g.sh), g.sh, s.table, g.items); err != nil {
				errs[i] = fmt.Errorf("shard %d: %w", g.sh.index+1, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *Store) insert(ctx context.Context, sh *shard, table string, rows []Row) error {
	b, err := sh.conn.PrepareBatch(ctx, "INSERT INTO "+table+" ("+columns+")")
	if err != nil {
		return fmt.Errorf("prepare insert into %s: %w", table, err)
	}
	for i := range rows {
		r := &rows[i]
		var del uint8
		if r.Deleted {
			del = 1
		}
		patients := r.Patients
		if patients == nil {
			patients = []string{}
		}
		if err := b.Append(r.Type, r.ID, IDHash(r.ID), r.Seq, r.LastUpdated, del, patients, string(r.Body)); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append row %s/%s to insert: %w", r.Type, r.ID, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert %d rows into %s: %w", len(rows), table, err)
	}
	return nil
}

// VersionKey names one stored version: a change's seq, and the resource
// (a transaction stores several under one seq).
type VersionKey struct {
	Seq      uint64
	Type, ID string
}

// Recover prepares a replay from a watermark (seq, stamp in microseconds)
// after a crash between an insert and the watermark update. A version the
// versions table got and the change log did not (the feed's part of an
// insert failed) is copied across; the reverse cannot happen, since the
// feed writes after the table. Then the versions stored after the watermark
// are returned, on every shard: the ingester skips them rather than store
// them twice. They are named one by one, not by seq, since a transaction
// spread over shards may be stored on one and not yet on another. Every
// such row is stamped after the watermark, so the reads prune to recent
// partitions.
func (s *Store) Recover(ctx context.Context, seq, stamp uint64) (map[VersionKey]bool, error) {
	out := map[VersionKey]bool{}
	var mu sync.Mutex
	err := s.eachShard(func(sh *shard) error {
		keys, err := s.recoverShard(ctx, sh, seq, stamp)
		mu.Lock()
		defer mu.Unlock()
		for _, k := range keys {
			out[k] = true
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// recoverShard completes sh's change log and lists the versions stored
// there after the watermark. On a replicated shard it lists only what a
// read with sequential consistency sees: the versions of quorum inserts. A
// block whose quorum insert failed may sit on one replica, hidden from
// exports; the replay stores it again, and once the lone copy completes
// its quorum the reads tolerate the exact duplicate (see latestSQL).
func (s *Store) recoverShard(ctx context.Context, sh *shard, seq, stamp uint64) ([]VersionKey, error) {
	after := " WHERE last_updated > ? AND seq > ?"
	q := "INSERT INTO " + s.changes + " (" + columns + ") SELECT " + columns + " FROM " + s.table + after +
		" AND (seq, type, id) NOT IN (SELECT seq, type, id FROM " + s.changes + after + ")"
	if err := sh.conn.Exec(s.writeCtx(ctx, sh), q, stamp, seq, stamp, seq); err != nil {
		return nil, fmt.Errorf("copy versions after seq %d into %s: %w", seq, s.changes, err)
	}
	rows, err := s.query(s.readCtx(ctx, nil), sh, "SELECT seq, type, id FROM "+s.table+after, stamp, seq)
	if err != nil {
		return nil, fmt.Errorf("read versions after the watermark from %s: %w", s.table, err)
	}
	return versionKeys(rows)
}

// versionKeys reads the rows of a query listing (seq, type, id).
func versionKeys(rows driver.Rows) ([]VersionKey, error) {
	defer rows.Close()
	var out []VersionKey
	for rows.Next() {
		var k VersionKey
		if err := rows.Scan(&k.Seq, &k.Type, &k.ID); err != nil {
			return nil, fmt.Errorf("scan version key: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read versions after the watermark: %w", err)
	}
	return out, nil
}
