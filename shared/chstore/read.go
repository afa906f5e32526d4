package chstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// BucketCount is how many versions of one type, stamped at or before the
// plan's time, fall in one hash bucket.
type BucketCount struct {
	Type   string
	Bucket uint64 // 0 .. HashBuckets-1
	Rows   uint64
}

// BucketCounts counts versions per type and hash bucket up to until
// (microseconds). types limits the count; empty means every type. The
// counts size tasks; they count versions, not resources, so they are an
// upper bound of what a range exports.
func (s *Store) BucketCounts(ctx context.Context, types []string, until uint64) ([]BucketCount, error) {
	q := "SELECT type, toUInt64(intDiv(id_hash, " + fmt.Sprint(HashSpace/HashBuckets) + ")) AS b, count() FROM " + s.table +
		" WHERE last_updated <= ?"
	args := []any{until}
	if len(types) > 0 {
		// A GroupSet renders as a tuple, which 18.16 accepts in IN (an
		// array it does not).
		set := make([]any, len(types))
		for i, t := range types {
			set[i] = t
		}
		q += " AND type IN ?"
		args = append(args, clickhouse.GroupSet{Value: set})
	}
	q += " GROUP BY type, b ORDER BY type, b"
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("count buckets in %s: %w", s.table, err)
	}
	defer rows.Close()
	var out []BucketCount
	for rows.Next() {
		var c BucketCount
		if err := rows.Scan(&c.Type, &c.Bucket, &c.Rows); err != nil {
			return nil, fmt.Errorf("scan bucket count: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count buckets in %s: %w", s.table, err)
	}
	return out, nil
}

// Range selects the resources of one type in a hash range, as they stood at
// Until, changed after Since when Since is not zero. Times are microseconds.
type Range struct {
	Type   string
	HashLo uint64 // inclusive
	HashHi uint64 // exclusive, at most HashSpace
	Since  uint64
	Until  uint64
	// InCompartment keeps only resources in some patient's compartment.
	InCompartment bool
	// Patients, when set, keeps only resources in the compartment of one
	// of these patients.
	Patients []string
}

func (r Range) validate() error {
	if r.Type == "" || strings.ContainsAny(r.Type, "'\\") {
		return fmt.Errorf("invalid resource type %q in range", r.Type)
	}
	if r.HashLo >= r.HashHi || r.HashHi > HashSpace {
		return fmt.Errorf("invalid hash range [%d, %d)", r.HashLo, r.HashHi)
	}
	return nil
}

// latestSQL selects (id, body) of the latest version at or before Until of
// each resource in the range, keeping only resources whose latest version
// has the wanted deleted flag. The inner query holds only ids and seqs.
// Every (id, seq) is stored once (see SeqsAfter), so the outer pass needs
// no de-duplication.
func (s *Store) latestSQL(deleted bool) string {
	del := "0"
	if deleted {
		del = "1"
	}
	where := "type = ? AND id_hash >= ? AND id_hash < ? AND last_updated <= ?"
	return "SELECT id, body FROM " + s.table + " WHERE " + where +
		" AND (id, seq) IN (SELECT id, max(seq) FROM " + s.table + " WHERE " + where +
		" GROUP BY id HAVING argMax(deleted, seq) = " + del + " AND max(last_updated) > ?" +
		" AND %s)"
}

// compartmentSQL is the HAVING condition on the latest version's patients.
// A deleted version carries no patients, so deletions are matched on the
// patients of the last live version.
func compartmentSQL(r Range, deleted bool) (string, []any) {
	patients := "argMax(patients, seq)"
	if deleted {
		patients = "argMaxIf(patients, seq, deleted = 0)"
	}
	switch {
	case len(r.Patients) > 0:
		return "hasAny(" + patients + ", ?)", []any{r.Patients}
	case r.InCompartment:
		return "notEmpty(" + patients + ")", nil
	default:
		return "1", nil
	}
}

// ReadLatest streams the latest version of every live resource in r to fn,
// in no particular order. fn must not keep body after it returns.
func (s *Store) ReadLatest(ctx context.Context, r Range, fn func(id string, body []byte) error) error {
	return s.read(ctx, r, false, fn)
}

// ReadDeleted streams the resources in r whose latest version is a delete
// made after r.Since. body is empty.
func (s *Store) ReadDeleted(ctx context.Context, r Range, fn func(id string, body []byte) error) error {
	return s.read(ctx, r, true, fn)
}

func (s *Store) read(ctx context.Context, r Range, deleted bool, fn func(id string, body []byte) error) error {
	if err := r.validate(); err != nil {
		return err
	}
	hi := r.HashHi // id_hash is UInt32; HashSpace itself does not fit, so compare with <=
	cond, condArgs := compartmentSQL(r, deleted)
	q := fmt.Sprintf(s.latestSQL(deleted), cond)
	settings := clickhouse.Settings{"max_block_size": s.cfg.ReadBlockRows}
	if n := listSize(r.Patients); n > 0 {
		// The patient list is inlined: let a large cohort's query through
		// the parser's size limit (256 KiB by default).
		settings["max_query_size"] = 2*n + 1<<20
	}
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(settings))
	args := append([]any{r.Type, uint32(r.HashLo), hi, r.Until, r.Type, uint32(r.HashLo), hi, r.Until, r.Since}, condArgs...)
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("read %s range [%d, %d): %w", r.Type, r.HashLo, r.HashHi, err)
	}
	defer rows.Close()
	var id, body string
	for rows.Next() {
		if err := rows.Scan(&id, &body); err != nil {
			return fmt.Errorf("scan %s row: %w", r.Type, err)
		}
		if err := fn(id, []byte(body)); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read %s range [%d, %d): %w", r.Type, r.HashLo, r.HashHi, err)
	}
	return nil
}

// SeqsAfter returns the seqs of the versions stored after a watermark
// (seq, stamp in microseconds): what an ingester that crashed between an
// insert and its watermark update had already inserted. The ingester skips
// them when it replays, so no version is ever stored twice. Every such row
// is stamped after the watermark, so the read prunes to recent partitions.
func (s *Store) SeqsAfter(ctx context.Context, seq, stamp uint64) (map[uint64]bool, error) {
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

// ReadOne returns the body of typ/id as it stood at until (microseconds),
// and false when it did not exist then or was deleted.
func (s *Store) ReadOne(ctx context.Context, typ, id string, until uint64) ([]byte, bool, error) {
	rows, err := s.conn.Query(ctx, "SELECT argMax(body, seq), argMax(deleted, seq) FROM "+s.table+
		" WHERE type = ? AND id_hash = ? AND id = ? AND last_updated <= ? GROUP BY id", typ, IDHash(id), id, until)
	if err != nil {
		return nil, false, fmt.Errorf("read %s/%s: %w", typ, id, err)
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	var body string
	var del uint8
	if err := rows.Scan(&body, &del); err != nil {
		return nil, false, fmt.Errorf("scan %s/%s: %w", typ, id, err)
	}
	if del == 1 {
		return nil, false, nil
	}
	return []byte(body), true, nil
}

// ReadAllLatest streams every live resource of typ at until, for small
// types such as Group that are searched by scanning.
func (s *Store) ReadAllLatest(ctx context.Context, typ string, until uint64, fn func(id string, body []byte) error) error {
	return s.ReadLatest(ctx, Range{Type: typ, HashLo: 0, HashHi: HashSpace, Until: until}, fn)
}

// Ref names one resource.
type Ref struct{ Type, ID string }

// PatientsOf returns, for each of refs that existed at until
// (microseconds), the patients whose compartment held its latest version
// then. refs must carry R4 types and valid ids: they are inlined in the
// query, which those character sets make safe.
func (s *Store) PatientsOf(ctx context.Context, refs []Ref, until uint64) (map[Ref][]string, error) {
	out := map[Ref][]string{}
	if len(refs) == 0 {
		return out, nil
	}
	var tuples, hashes strings.Builder
	for i, r := range refs {
		if !fhir.IsResourceType(r.Type) || !fhir.ValidID(r.ID) {
			return nil, fmt.Errorf("invalid reference %s/%s", r.Type, r.ID)
		}
		if i > 0 {
			tuples.WriteByte(',')
			hashes.WriteByte(',')
		}
		fmt.Fprintf(&tuples, "('%s','%s')", r.Type, r.ID)
		fmt.Fprintf(&hashes, "%d", IDHash(r.ID))
	}
	q := "SELECT type, id, argMax(patients, seq), argMax(deleted, seq) FROM " + s.table +
		" WHERE id_hash IN (" + hashes.String() + ") AND (type, id) IN (" + tuples.String() + ") AND last_updated <= ?" +
		" GROUP BY type, id"
	rows, err := s.conn.Query(ctx, q, until)
	if err != nil {
		return nil, fmt.Errorf("read patients of %d resources: %w", len(refs), err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Ref
		var patients []string
		var del uint8
		if err := rows.Scan(&r.Type, &r.ID, &patients, &del); err != nil {
			return nil, fmt.Errorf("scan patients: %w", err)
		}
		if del == 0 {
			out[r] = patients
		}
	}
	return out, rows.Err()
}

// listSize is about how many bytes a string list takes inlined in SQL.
func listSize(list []string) int {
	n := 0
	for _, v := range list {
		n += len(v) + 4
	}
	return n
}
