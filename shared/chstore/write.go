package chstore

import (
	"context"
	"fmt"
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

// Insert writes rows in one batch to the versions table; the feed copies
// them into the change log. A caller replaying changes after a crash must
// leave out the seqs Recover reports: reads expect each (id, seq) once.
func (s *Store) Insert(ctx context.Context, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	return s.insert(ctx, s.table, rows)
}

func (s *Store) insert(ctx context.Context, table string, rows []Row) error {
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+table+" ("+columns+")")
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

// Recover prepares a replay from a watermark (seq, stamp in microseconds)
// after a crash between an insert and the watermark update. A version the
// versions table got and the change log did not (the feed's part of an
// insert failed) is copied across; the reverse cannot happen, since the
// feed writes after the table. Then the seqs of the versions stored after
// the watermark are returned: the ingester skips them rather than store
// them twice. Every such row is stamped after the watermark, so the reads
// prune to recent partitions.
func (s *Store) Recover(ctx context.Context, seq, stamp uint64) (map[uint64]bool, error) {
	after := " WHERE last_updated > ? AND seq > ?"
	q := "INSERT INTO " + s.changes + " (" + columns + ") SELECT " + columns + " FROM " + s.table + after +
		" AND (seq, type, id) NOT IN (SELECT seq, type, id FROM " + s.changes + after + ")"
	if err := s.conn.Exec(ctx, q, stamp, seq, stamp, seq); err != nil {
		return nil, fmt.Errorf("copy versions after seq %d into %s: %w", seq, s.changes, err)
	}
	rows, err := s.conn.Query(ctx, "SELECT seq FROM "+s.table+" WHERE last_updated > ? AND seq > ?", stamp, seq)
	if err != nil {
		return nil, fmt.Errorf("read seqs after %d from %s: %w", seq, s.table, err)
	}
	defer rows.Close()
	out := map[uint64]bool{}
	for rows.Next() {
		var v uint64
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("scan seq: %w", err)
		}
		out[v] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read seqs after %d from %s: %w", seq, s.table, err)
	}
	return out, nil
}
