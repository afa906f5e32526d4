package chstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/ClickHouse/clickhouse-go/v2"
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

// Columns are the columns of the versions table and the change log, in
// the order inserts name them.
const Columns = "type, id, id_hash, seq, last_updated, deleted, patients, body"

// Insert writes rows to the versions table of their shards, at once, and
// returns when every shard holds its rows (on replicated shards, a majority
// of the replicas); the feed copies them into the change log. Rows of one
// shard go in one batch. A caller replaying changes after a crash must
// leave out the versions Recover reports: reads expect each (id, seq) once.
func (s *Store) Insert(ctx context.Context, rows []Row) (err error) {
	defer s.measure(ctx, "insert", time.Now(), &err)
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

// insert writes rows to table on shard sh. On a replicated shard of
// ClickHouse before insert_quorum_parallel, a quorum insert is refused while
// another's quorum is pending (ingesters insert in parallel, ADR 0008). The
// refusal writes nothing to the table it comes from, but it may come from
// the change log's feed after the versions table took the rows (one part,
// whole or not at all): then only their change log copy is missing, and
// inserting again would store them twice. So after a refusal the insert
// looks for its rows first, completes their change log if they are there,
// fails when it cannot tell (the caller replays from its watermark), and
// otherwise waits and tries again, until ctx ends.
func (s *Store) insert(ctx context.Context, sh *shard, table string, rows []Row) error {
	return retryQuorum(ctx, func() error {
		err := s.insertOnce(ctx, sh, table, rows)
		if !isQuorumRefusal(err) || table != s.table {
			return err
		}
		stored, serr := s.holds(ctx, sh, rows)
		if serr != nil {
			// Inserting again could store the rows twice: fail, and let
			// the caller replay from its watermark (Recover names what
			// was stored).
			return fmt.Errorf("%w; whether the rows were stored could not be read: %v", errUnknownInsert, serr)
		}
		if !stored {
			return err // try again
		}
		seqs := make([]uint64, 0, len(rows))
		lowest := rows[0].LastUpdated
		for _, r := range rows {
			if n := len(seqs); n == 0 || seqs[n-1] != r.Seq {
				seqs = append(seqs, r.Seq)
			}
			lowest = min(lowest, r.LastUpdated)
		}
		return s.completeChangeLog(ctx, sh, seqs, lowest-1)
	})
}

// errUnknownInsert: a refused insert whose rows may have been stored.
var errUnknownInsert = errors.New("a quorum insert was refused after the versions table may have taken its rows")

// holds reports whether the versions table of sh holds the first and the
// last of rows, as a sequentially consistent read sees it: an insert is
// stored whole or not at all. It asks a caught-up replica, or, when every
// replica is busy fetching (as under parallel inserts), any replica that
// answers a sequentially consistent read, which holds the last insert to
// complete its quorum. Only when no replica answers does the insert fail.
func (s *Store) holds(ctx context.Context, sh *shard, rows []Row) (bool, error) {
	stored, err := s.holdsOn(ctx, sh.conn, rows)
	if err != nil && sh.wconn != sh.conn {
		stored, err = s.holdsOn(ctx, sh.wconn, rows)
	}
	return stored, err
}

func (s *Store) holdsOn(ctx context.Context, conn driver.Conn, rows []Row) (bool, error) {
	for _, r := range []Row{rows[0], rows[len(rows)-1]} {
		var n uint64
		q := "SELECT count() FROM " + s.table + " WHERE type = ? AND id_hash = ? AND id = ? AND seq = ?"
		if err := conn.QueryRow(s.readCtx(ctx, nil), q, r.Type, IDHash(r.ID), r.ID, r.Seq).Scan(&n); err != nil {
			return false, err
		}
		if n == 0 {
			return false, nil
		}
	}
	return true, nil
}

// retryQuorum runs fn until it does not fail with a quorum refusal (see
// insert), waiting longer each time, up to 200 ms, until ctx ends.
func retryQuorum(ctx context.Context, fn func() error) error {
	wait := 5 * time.Millisecond
	for {
		err := fn()
		if !isQuorumRefusal(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// isQuorumRefusal reports whether err is ClickHouse refusing a quorum
// insert while another's quorum is pending.
func isQuorumRefusal(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && ex.Code == codeQuorumForPreviousWrite
}

// codeQuorumForPreviousWrite is ClickHouse's UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE.
const codeQuorumForPreviousWrite = 286

func (s *Store) insertOnce(ctx context.Context, sh *shard, table string, rows []Row) error {
	b, err := sh.wconn.PrepareBatch(ctx, "INSERT INTO "+table+" ("+Columns+")")
	if err != nil {
		return fmt.Errorf("prepare insert into %s: %w", table, err)
	}
	block := 0
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
		// The driver copies the body into its column: no copy of our own.
		if err := b.Append(r.Type, r.ID, IDHash(r.ID), r.Seq, r.LastUpdated, del, patients, bytesAsString(r.Body)); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append row %s/%s to insert: %w", r.Type, r.ID, err)
		}
		// Send the block so far: the column buffers are reused instead
		// of growing to the whole insert. The server squashes an insert's
		// blocks into one part.
		if block += len(r.Body); block >= insertBlockBytes {
			if err := b.Flush(); err != nil {
				_ = b.Abort()
				return fmt.Errorf("insert %d rows into %s: %w", len(rows), table, err)
			}
			block = 0
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert %d rows into %s: %w", len(rows), table, err)
	}
	return nil
}

// insertBlockBytes is how many bytes of resource an insert sends per block.
const insertBlockBytes = 4 << 20

// bytesAsString views b as a string without copying it; b must not change
// while the string is in use.
func bytesAsString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// VersionKey names one stored version: a change's seq, and the resource
// (a transaction stores several under one seq).
type VersionKey struct {
	Seq      uint64
	Type, ID string
}

// Recover prepares a replay from a watermark (seq, stamp in microseconds)
// after a crash between an insert and the watermark update: it returns the
// versions stored after the watermark, on every shard, and the ingester
// skips them rather than store them twice. They are named one by one, not
// by seq, since a transaction spread over shards may be stored on one and
// not yet on another. Every such row is stamped after the watermark, so the
// reads prune to recent partitions. On a replicated shard it lists only
// what a read with sequential consistency sees: the versions of quorum
// inserts. A block whose quorum insert failed may sit on one replica,
// hidden from exports; the replay stores it again, and once the lone copy
// completes its quorum the reads tolerate the exact duplicate (see
// latestSQL).
//
// Ingesters insert in parallel (ADR 0008), so the list may name versions
// other ingesters are storing right now; the caller skips only those of
// the changes it replays, and completes their change log (CompleteChangeLog).
func (s *Store) Recover(ctx context.Context, seq, stamp uint64) (map[VersionKey]bool, error) {
	out := map[VersionKey]bool{}
	var mu sync.Mutex
	err := s.eachShard(func(sh *shard) error {
		rows, err := s.query(s.readCtx(ctx, nil), sh, "SELECT seq, type, id FROM "+s.table+" WHERE last_updated > ? AND seq > ?", stamp, seq)
		if err != nil {
			return fmt.Errorf("read versions after the watermark from %s: %w", s.table, err)
		}
		keys, err := versionKeys(rows)
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

// CompleteChangeLog copies into the change log the versions of the changes
// seqs (stamped after stamp, in microseconds) that the versions table holds
// and the change log does not: the feed's part of an insert failed after
// the table's. The reverse cannot happen, since the feed writes after the
// table. The ingester calls it for the changes whose versions Recover named
// before it skips them; no other ingester stores those changes. Copying
// again changes nothing.
func (s *Store) CompleteChangeLog(ctx context.Context, seqs []uint64, stamp uint64) error {
	return s.eachShard(func(sh *shard) error { return s.completeChangeLog(ctx, sh, seqs, stamp) })
}

// completeChangeLog is CompleteChangeLog on one shard. The copy reads the
// versions table, so it runs on a caught-up replica when there is one.
func (s *Store) completeChangeLog(ctx context.Context, sh *shard, seqs []uint64, stamp uint64) error {
	const chunk = 2000 // seqs per statement, far below the server's query size limit
	for len(seqs) > 0 {
		n := min(chunk, len(seqs))
		list := make([]string, n)
		for i, q := range seqs[:n] {
			list[i] = strconv.FormatUint(q, 10)
		}
		in := " WHERE last_updated > ? AND seq IN (" + strings.Join(list, ",") + ")"
		q := "INSERT INTO " + s.changes + " (" + Columns + ") SELECT " + Columns + " FROM " + s.table + in +
			" AND (seq, type, id) NOT IN (SELECT seq, type, id FROM " + s.changes + in + ")"
		err := retryQuorum(ctx, func() error {
			err := sh.conn.Exec(s.writeCtx(ctx, sh), q, stamp, stamp)
			if err != nil && sh.wconn != sh.conn {
				// Every replica busy fetching (see holds): any replica
				// that answers sequentially consistent reads. Copying
				// again changes nothing.
				err = sh.wconn.Exec(s.writeCtx(ctx, sh), q, stamp, stamp)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("copy the versions of %d changes into %s: %w", n, s.changes, err)
		}
		seqs = seqs[n:]
	}
	return nil
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
