package chstore

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"time"
)

// monthPartition is how system.parts names a partition of the change log
// (toYYYYMM of the stamp).
var monthPartition = regexp.MustCompile(`^[0-9]{6}$`)

// TrimChangeLog drops the monthly partitions of the change log whose every
// version is stamped before cutoff, on every shard, and returns their names.
// It first raises each shard's horizon to the newest stamp it drops there,
// then waits grace before dropping, so that every store has re-read the
// horizon and sends older _since reads to the versions table, which keeps
// every version. Pass a grace longer than horizonRefresh; a read already
// running when the drop happens keeps the parts it started with. Several
// callers at once are harmless: raising the horizon and dropping are
// idempotent. On a replicated shard the drop replicates.
func (s *Store) TrimChangeLog(ctx context.Context, cutoff time.Time, grace time.Duration) ([]string, error) {
	drops := make([][]string, len(s.shards))
	err := s.eachShard(func(sh *shard) error {
		var err error
		drops[sh.index], err = s.raiseHorizon(ctx, sh, cutoff)
		return err
	})
	if err != nil {
		return nil, err
	}
	var dropped []string
	for _, d := range drops {
		dropped = append(dropped, d...)
	}
	if len(dropped) == 0 {
		return nil, nil
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(grace):
	}
	for _, sh := range s.shards {
		for _, p := range drops[sh.index] {
			if err := sh.wconn.Exec(s.writeCtx(ctx, sh), "ALTER TABLE "+s.changes+" DROP PARTITION "+p); err != nil {
				return nil, fmt.Errorf("shard %d: drop partition %s of %s: %w", sh.index+1, p, s.changes, err)
			}
			if err := s.markTrimmed(ctx, sh, p); err != nil {
				return nil, err
			}
		}
	}
	slices.Sort(dropped)
	return slices.Compact(dropped), nil
}

// raiseHorizon finds the partitions of sh's change log to drop and raises
// its horizon to the newest stamp they hold.
func (s *Store) raiseHorizon(ctx context.Context, sh *shard, cutoff time.Time) ([]string, error) {
	ctx = s.readCtx(ctx, nil)
	rows, err := s.query(ctx, sh, "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active ORDER BY partition",
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
		var n, newest uint64
		q := "SELECT count(), max(last_updated) FROM " + s.changes + " WHERE toYYYYMM(toDate(toDateTime(intDiv(last_updated, 1000000)))) = " + p +
			" AND type != '" + trimmedType + "'"
		if err := sh.conn.QueryRow(ctx, q).Scan(&n, &newest); err != nil {
			return nil, fmt.Errorf("read the newest stamp of partition %s: %w", p, err)
		}
		if n == 0 {
			continue // trimmed already: it holds only its mark
		}
		if newest >= Micros(cutoff) {
			break
		}
		drop, horizon = append(drop, p), max(horizon, newest)
	}
	if len(drop) == 0 {
		return nil, nil
	}
	if err := sh.wconn.Exec(s.writeCtx(ctx, sh), fmt.Sprintf("INSERT INTO %s.%s (horizon) SELECT toUInt64(%d)", s.cfg.Database, horizonTable, horizon)); err != nil {
		return nil, fmt.Errorf("raise the change log horizon: %w", err)
	}
	sh.hmu.Lock()
	sh.refreshed = time.Time{} // this store re-reads it at once
	sh.hmu.Unlock()
	return drop, nil
}

// trimmedType is the type of the row that marks a trimmed month of a
// replicated change log: no FHIR type, so no read ever selects it.
const trimmedType = "_trimmed"

// markTrimmed stores, on a replicated shard, one mark row in a month just
// dropped from the change log, with a quorum insert. ClickHouse 18.16
// remembers the last quorum insert of each partition and refuses
// sequentially consistent reads from a replica without that part, even
// after the partition is dropped everywhere: every _since read of the
// shard would then fail. The mark is the partition's new last quorum
// insert. It is stamped at the month's start, at or before the horizon, so
// no windowed read reaches it; its type matches no read either.
func (s *Store) markTrimmed(ctx context.Context, sh *shard, partition string) error {
	if !s.replicated {
		return nil
	}
	month, err := time.Parse("200601", partition)
	if err != nil {
		return fmt.Errorf("partition %q of %s is not a month: %w", partition, s.changes, err)
	}
	mark := []Row{{Type: trimmedType, ID: "month-" + partition, LastUpdated: Micros(month)}}
	if err := s.insert(s.writeCtx(ctx, sh), sh, s.changes, mark); err != nil {
		return fmt.Errorf("shard %d: mark the trimmed month %s: %w", sh.index+1, partition, err)
	}
	return nil
}

// ChangeLogGrace is the wait TrimChangeLog needs between raising the
// horizon and dropping: longer than any store trusts a horizon it read.
const ChangeLogGrace = 2 * horizonRefresh
