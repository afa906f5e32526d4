package chstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

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
// (microseconds), only those stamped after since when since is not zero.
// types limits the count; empty means every type. The counts size tasks;
// they count versions, not resources, so they are an upper bound of what a
// range exports.
func (s *Store) BucketCounts(ctx context.Context, types []string, since, until uint64) (_ []BucketCount, err error) {
	defer s.measure(ctx, "bucket_counts", time.Now(), &err)
	parts := make([][]BucketCount, len(s.shards))
	err = s.eachShard(func(sh *shard) error {
		var err error
		parts[sh.index], err = s.bucketCounts(ctx, sh, types, since, until)
		return err
	})
	if err != nil {
		return nil, err
	}
	// A bucket lies in one shard: the parts only need merging in order.
	out := slices.Concat(parts...)
	slices.SortFunc(out, func(a, b BucketCount) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Bucket, b.Bucket))
	})
	return out, nil
}

func (s *Store) bucketCounts(ctx context.Context, sh *shard, types []string, since, until uint64) ([]BucketCount, error) {
	table, window := s.table, ""
	args := []any{until}
	if s.windowed(ctx, sh, since) {
		table, window = s.changes, " AND last_updated > ?"
		args = append(args, since)
	}
	q := "SELECT type, toUInt64(intDiv(id_hash, " + fmt.Sprint(bucketWidth) + ")) AS b, count() FROM " + table +
		" WHERE last_updated <= ?" + window
	if len(types) > 0 {
		// A GroupSet renders as a tuple, which 18.16 accepts in IN (an
		// array it does not).
		q += " AND type IN ?"
		args = append(args, groupSet(types))
	}
	q += " GROUP BY type, b ORDER BY type, b"
	rows, err := s.query(s.readCtx(ctx, nil), sh, q, args...)
	if err != nil {
		return nil, fmt.Errorf("count buckets in %s: %w", table, err)
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
		return nil, fmt.Errorf("count buckets in %s: %w", table, err)
	}
	return out, nil
}

// Range selects the resources of one type in a hash range, as they stood at
// Until, changed after Since when Since is not zero. Times are microseconds.
type Range struct {
	Type string
	// Types, set instead of Type, selects several types over the same hash
	// range, read in one query by ReadLatestTypes and ReadDeletedTypes:
	// each query costs the server a fixed price beside its rows, which a
	// read of a few changes in each of many types pays once, not per type.
	Types  []string
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
	if (r.Type == "") == (len(r.Types) == 0) {
		return fmt.Errorf("a range names one type or several, not %q and %q", r.Type, r.Types)
	}
	for _, typ := range r.types() {
		if typ == "" || strings.ContainsAny(typ, "'\\") {
			return fmt.Errorf("invalid resource type %q in range", typ)
		}
	}
	if r.HashLo >= r.HashHi || r.HashHi > HashSpace {
		return fmt.Errorf("invalid hash range [%d, %d)", r.HashLo, r.HashHi)
	}
	return nil
}

// types are the types r covers.
func (r Range) types() []string {
	if len(r.Types) > 0 {
		return r.Types
	}
	return []string{r.Type}
}

// label names r's types in errors.
func (r Range) label() string { return strings.Join(r.types(), ",") }

// typeSQL is r's condition on the type column, and its argument.
func (r Range) typeSQL() (string, any) {
	if len(r.Types) > 0 {
		return "type IN ?", groupSet(r.Types)
	}
	return "type = ?", r.Type
}

// windowed reports whether a read on sh of the changes after since can use
// the change log, which holds every version stamped after its horizon. When
// the horizon cannot be read, the read goes to the versions table: slower,
// never wrong.
func (s *Store) windowed(ctx context.Context, sh *shard, since uint64) bool {
	if since == 0 {
		return false
	}
	h, err := s.horizonOf(ctx, sh)
	if err != nil {
		if s.log != nil {
			s.log.WarnContext(ctx, "reading the versions table instead of the change log", slog.Any("error", err))
		}
		return false
	}
	return since >= h
}

// latestSQL selects (id, body) of the latest version at or before Until of
// each resource in the range, keeping only resources whose latest version
// has the wanted deleted flag and was stamped after Since. The inner query
// holds only ids and seqs. Every (id, seq) is stored once on one server
// (see Recover), so there the outer pass needs no de-duplication.
//
// A windowed read scans the change log between Since and Until only: the
// latest version at Until of a resource changed after Since lies in that
// window, since stamps grow with seqs.
//
// A read of several types (Range.Types) selects (type, id, body) and
// keys every version by type, id and seq: two types may share an id, and
// the entries of one transaction share its seq, so an id and a seq alone
// could name an older version of one type by the latest of another.
func (s *Store) latestSQL(r Range, deleted, windowed bool) string {
	del := "0"
	if deleted {
		del = "1"
	}
	typeCond, _ := r.typeSQL()
	table, where := s.table, typeCond+" AND id_hash >= ? AND id_hash < ? AND last_updated <= ?"
	if windowed {
		table, where = s.changes, where+" AND last_updated > ?"
	}
	cols, key := "id, body", "id"
	if len(r.Types) > 0 {
		cols, key = "type, id, body", "type, id"
	}
	return "SELECT " + cols + " FROM " + table + " WHERE " + where +
		" AND (" + key + ", seq) IN (SELECT " + key + ", max(seq) FROM " + table + " WHERE " + where +
		" GROUP BY " + key + " HAVING argMax(deleted, seq) = " + del + " AND max(last_updated) > ?" +
		" AND %s)" + s.onceBy(key)
}

// onceBy ends a read that selects whole versions on a replicated store:
// there a block whose quorum insert failed, stored again by the replay,
// becomes visible twice once its lone copy completes its quorum (see
// recoverShard). The copies are the same version; one per key is kept.
func (s *Store) onceBy(key string) string {
	if s.replicated {
		return " LIMIT 1 BY " + key
	}
	return ""
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
func (s *Store) ReadLatest(ctx context.Context, r Range, fn func(id string, body []byte) error) (err error) {
	defer s.measure(ctx, "read_latest", time.Now(), &err)
	if len(r.Types) > 0 {
		return errSeveralTypes
	}
	return s.read(ctx, r, false, untyped(fn))
}

// ReadDeleted streams the resources in r whose latest version is a delete
// made after r.Since. body is empty.
func (s *Store) ReadDeleted(ctx context.Context, r Range, fn func(id string, body []byte) error) (err error) {
	defer s.measure(ctx, "read_deleted", time.Now(), &err)
	if len(r.Types) > 0 {
		return errSeveralTypes
	}
	return s.read(ctx, r, true, untyped(fn))
}

// ReadLatestTypes is ReadLatest for a range of one type or several
// (Range.Types), read in one query; fn is told each resource's type.
func (s *Store) ReadLatestTypes(ctx context.Context, r Range, fn func(typ, id string, body []byte) error) (err error) {
	defer s.measure(ctx, "read_latest", time.Now(), &err)
	return s.read(ctx, r, false, fn)
}

// ReadDeletedTypes is ReadDeleted for a range of one type or several
// (Range.Types); fn is told each resource's type.
func (s *Store) ReadDeletedTypes(ctx context.Context, r Range, fn func(typ, id string, body []byte) error) (err error) {
	defer s.measure(ctx, "read_deleted", time.Now(), &err)
	return s.read(ctx, r, true, fn)
}

// errSeveralTypes refuses a read of several types whose callback cannot
// tell them apart.
var errSeveralTypes = errors.New("a range of several types is read with ReadLatestTypes or ReadDeletedTypes")

// untyped adapts a callback that does not take the type.
func untyped(fn func(id string, body []byte) error) func(typ, id string, body []byte) error {
	return func(_, id string, body []byte) error { return fn(id, body) }
}

// read reads r from the shards that hold it, one after the other. A task's
// range lies in one shard (the planner cuts at shard boundaries); a read of
// the whole hash space visits each.
func (s *Store) read(ctx context.Context, r Range, deleted bool, fn func(typ, id string, body []byte) error) error {
	if err := r.validate(); err != nil {
		return err
	}
	for _, p := range s.pieces(r.HashLo, r.HashHi) {
		part := r
		part.HashLo, part.HashHi = p.lo, p.hi
		if err := s.readShard(ctx, p.sh, part, deleted, fn); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) readShard(ctx context.Context, sh *shard, r Range, deleted bool, fn func(typ, id string, body []byte) error) error {
	windowed := s.windowed(ctx, sh, r.Since)
	if windowed && deleted && (r.InCompartment || len(r.Patients) > 0) {
		// Few rows, and a lookup per type: one type at a time.
		for _, typ := range r.types() {
			one := r
			one.Type, one.Types = typ, nil
			err := s.readDeletedInCompartment(ctx, sh, one, func(id string, body []byte) error { return fn(typ, id, body) })
			if err != nil {
				return err
			}
		}
		return nil
	}
	cond, condArgs := compartmentSQL(r, deleted)
	q := fmt.Sprintf(s.latestSQL(r, deleted, windowed), cond)
	_, typeArg := r.typeSQL()
	where := []any{typeArg, uint32(r.HashLo), r.HashHi, r.Until} // id_hash is UInt32; HashSpace itself does not fit, so HashHi stays 64-bit
	if windowed {
		where = append(where, r.Since)
	}
	args := append(append(append(append([]any{}, where...), where...), r.Since), condArgs...)
	return s.stream(ctx, sh, r, q, args, fn)
}

// stream runs a read of r on sh that selects (id, body), or (type, id,
// body) when r has several types, and hands each row to fn.
func (s *Store) stream(ctx context.Context, sh *shard, r Range, q string, args []any, fn func(typ, id string, body []byte) error) error {
	settings := s.BlockSettings()
	if n := listSize(r.Patients); n > 0 {
		// The patient list is inlined: let a large cohort's query through
		// the parser's size limit (256 KiB by default).
		settings["max_query_size"] = 2*n + 1<<20
	}
	rows, err := s.query(s.readCtx(ctx, settings), sh, q, args...)
	if err != nil {
		return fmt.Errorf("read %s range [%d, %d): %w", r.label(), r.HashLo, r.HashHi, err)
	}
	defer rows.Close()
	typ, id := r.Type, ""
	var body []byte // the driver hands the row's own copy, without another
	dest := []any{&id, &body}
	if len(r.Types) > 0 {
		dest = []any{&typ, &id, &body}
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return fmt.Errorf("scan %s row: %w", r.label(), err)
		}
		if err := fn(typ, id, body); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read %s range [%d, %d): %w", r.label(), r.HashLo, r.HashHi, err)
	}
	return nil
}

// lookupBatch is how many ids one point lookup in the versions table names.
const lookupBatch = 1000

// readDeletedInCompartment is a windowed ReadDeleted narrowed to
// compartments. A delete carries no patients, and the last live version,
// whose patients decide, may be older than the window: the window yields
// the deleted ids, and a point lookup in the versions table (sorted by id)
// their compartments.
func (s *Store) readDeletedInCompartment(ctx context.Context, sh *shard, r Range, fn func(id string, body []byte) error) error {
	q := "SELECT id, '' FROM " + s.changes +
		" WHERE type = ? AND id_hash >= ? AND id_hash < ? AND last_updated <= ? AND last_updated > ?" +
		" GROUP BY id HAVING argMax(deleted, seq) = 1"
	var ids []string
	err := s.stream(ctx, sh, r, q, []any{r.Type, uint32(r.HashLo), r.HashHi, r.Until, r.Since}, func(_, id string, _ []byte) error {
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return err
	}
	want := make(map[string]bool, len(r.Patients))
	for _, p := range r.Patients {
		want[p] = true
	}
	for len(ids) > 0 {
		n := min(len(ids), lookupBatch)
		batch := ids[:n]
		ids = ids[n:]
		hashes := make([]any, len(batch))
		for i, id := range batch {
			hashes[i] = IDHash(id)
		}
		rows, err := s.query(s.readCtx(ctx, nil), sh, "SELECT id, argMaxIf(patients, seq, deleted = 0) FROM "+s.table+
			" WHERE type = ? AND id_hash IN ? AND id IN ? AND last_updated <= ? GROUP BY id",
			r.Type, clickhouse.GroupSet{Value: hashes}, groupSet(batch), r.Until)
		if err != nil {
			return fmt.Errorf("read compartments of deleted %s: %w", r.Type, err)
		}
		var keep []string
		for rows.Next() {
			var id string
			var patients []string
			if err := rows.Scan(&id, &patients); err != nil {
				rows.Close()
				return fmt.Errorf("scan compartments of deleted %s: %w", r.Type, err)
			}
			if inCompartment(patients, want) {
				keep = append(keep, id)
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("read compartments of deleted %s: %w", r.Type, err)
		}
		for _, id := range keep {
			if err := fn(id, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// inCompartment: patients holds one of want, or any patient when want is
// empty.
func inCompartment(patients []string, want map[string]bool) bool {
	if len(want) == 0 {
		return len(patients) > 0
	}
	for _, p := range patients {
		if want[p] {
			return true
		}
	}
	return false
}

// groupSet renders a string list as a tuple for IN, which 18.16 accepts
// where it refuses an array.
func groupSet(values []string) clickhouse.GroupSet {
	set := make([]any, len(values))
	for i, v := range values {
		set[i] = v
	}
	return clickhouse.GroupSet{Value: set}
}

// ReadOne returns the body of typ/id as it stood at until (microseconds),
// and false when it did not exist then or was deleted.
func (s *Store) ReadOne(ctx context.Context, typ, id string, until uint64) (_ []byte, _ bool, err error) {
	defer s.measure(ctx, "read_one", time.Now(), &err)
	h := IDHash(id)
	rows, err := s.query(s.readCtx(ctx, nil), s.shardOf(h), "SELECT argMax(body, seq), argMax(deleted, seq) FROM "+s.table+
		" WHERE type = ? AND id_hash = ? AND id = ? AND last_updated <= ? GROUP BY id", typ, h, id, until)
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
func (s *Store) PatientsOf(ctx context.Context, refs []Ref, until uint64) (_ map[Ref][]string, err error) {
	defer s.measure(ctx, "patients_of", time.Now(), &err)
	out := map[Ref][]string{}
	for _, r := range refs {
		if !fhir.IsResourceType(r.Type) || !fhir.ValidID(r.ID) {
			return nil, fmt.Errorf("invalid reference %s/%s", r.Type, r.ID)
		}
	}
	for _, g := range byShard(s, refs, func(r Ref) uint32 { return IDHash(r.ID) }) {
		if err := s.patientsOf(ctx, g.sh, g.items, until, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *Store) patientsOf(ctx context.Context, sh *shard, refs []Ref, until uint64, out map[Ref][]string) error {
	tuples, hashes := refLists(refs)
	q := "SELECT type, id, argMax(patients, seq), argMax(deleted, seq) FROM " + s.table +
		" WHERE id_hash IN (" + hashes + ") AND (type, id) IN (" + tuples + ") AND last_updated <= ?" +
		" GROUP BY type, id"
	rows, err := s.query(s.readCtx(ctx, clickhouse.Settings{"max_query_size": len(q) + 1<<20}), sh, q, until)
	if err != nil {
		return fmt.Errorf("read patients of %d resources: %w", len(refs), err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Ref
		var patients []string
		var del uint8
		if err := rows.Scan(&r.Type, &r.ID, &patients, &del); err != nil {
			return fmt.Errorf("scan patients: %w", err)
		}
		if del == 0 {
			out[r] = patients
		}
	}
	return rows.Err()
}

// refLists renders validated references as the SQL lists of their (type,
// id) tuples and of their id hashes, to prune on the primary key. Types
// and ids are validated: their character sets need no quoting.
func refLists(refs []Ref) (tuples, hashes string) {
	var t, h strings.Builder
	for i, r := range refs {
		if i > 0 {
			t.WriteByte(',')
			h.WriteByte(',')
		}
		fmt.Fprintf(&t, "('%s','%s')", r.Type, r.ID)
		fmt.Fprintf(&h, "%d", IDHash(r.ID))
	}
	return t.String(), h.String()
}

// listSize is about how many bytes a string list takes inlined in SQL.
func listSize(list []string) int {
	n := 0
	for _, v := range list {
		n += len(v) + 4
	}
	return n
}
