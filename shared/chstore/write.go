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

// Insert writes rows in one batch. A caller replaying changes after a crash
// must leave out the seqs SeqsAfter reports: reads expect each (id, seq) once.
func (s *Store) Insert(ctx context.Context, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.table+" (type, id, id_hash, seq, last_updated, deleted, patients, body)")
	if err != nil {
		return fmt.Errorf("prepare insert into %s: %w", s.table, err)
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
		return fmt.Errorf("insert %d rows into %s: %w", len(rows), s.table, err)
	}
	return nil
}
