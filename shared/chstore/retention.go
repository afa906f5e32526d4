package chstore

import (
	"context"
	"fmt"
	"regexp"
	"time"
)

// monthPartition is how system.parts names a partition of the change log
// (toYYYYMM of the stamp).
var monthPartition = regexp.MustCompile(`^[0-9]{6}$`)

// TrimChangeLog drops the monthly partitions of the change log whose every
// version is stamped before cutoff, and returns their names. It first
// raises the horizon to the newest stamp it drops, then waits grace before
// dropping, so that every store has re-read the horizon and sends older
// _since reads to the versions table, which keeps every version. Pass a
// grace longer than horizonRefresh; a read already running when the drop
// happens keeps the parts it started with. Several callers at once are
// harmless: raising the horizon and dropping are idempotent.
func (s *Store) TrimChangeLog(ctx context.Context, cutoff time.Time, grace time.Duration) ([]string, error) {
	rows, err := s.conn.Query(ctx, "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active ORDER BY partition",
		s.cfg.Database, ChangesTable)
	if err != nil {
		return nil, fmt.Errorf("list the partitions of %s: %w", s.changes, err)
	}
	var parts []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return nil, err
		}
		if monthPartition.MatchString(p) {
			parts = append(parts, p)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list the partitions of %s: %w", s.changes, err)
	}
	// Months are in order: drop from the oldest while all of a month is
	// older than the cutoff.
	var drop []string
	var horizon uint64
	for _, p := range parts {
		var newest uint64
		q := "SELECT max(last_updated) FROM " + s.changes + " WHERE toYYYYMM(toDate(toDateTime(intDiv(last_updated, 1000000)))) = " + p
		if err := s.conn.QueryRow(ctx, q).Scan(&newest); err != nil {
			return nil, fmt.Errorf("read the newest stamp of partition %s: %w", p, err)
		}
		if newest >= Micros(cutoff) {
			break
		}
		drop, horizon = append(drop, p), max(horizon, newest)
	}
	if len(drop) == 0 {
		return nil, nil
	}
	if err := s.conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s.%s (horizon) SELECT toUInt64(%d)", s.cfg.Database, horizonTable, horizon)); err != nil {
		return nil, fmt.Errorf("raise the change log horizon: %w", err)
	}
	s.hmu.Lock()
	s.refreshed = time.Time{} // this store re-reads it at once
	s.hmu.Unlock()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(grace):
	}
	for _, p := range drop {
		if err := s.conn.Exec(ctx, "ALTER TABLE "+s.changes+" DROP PARTITION "+p); err != nil {
			return nil, fmt.Errorf("drop partition %s of %s: %w", p, s.changes, err)
		}
	}
	return drop, nil
}

// ChangeLogGrace is the wait TrimChangeLog needs between raising the
// horizon and dropping: longer than any store trusts a horizon it read.
const ChangeLogGrace = 2 * horizonRefresh
