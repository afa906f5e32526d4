package chstore

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// RefState is the latest version of a referenced resource at a point in
// time, as ReadRefs reports it.
type RefState struct {
	LastUpdated uint64 // microseconds
	Patients    []string
	// Body is set only when ReadRefs was asked for the type's bodies.
	Body []byte
}

// ReadRefs returns, for each of refs that was live at until
// (microseconds), its latest version's stamp and patients, and its body
// when withBody reports true for its type (nil: never). Like PatientsOf,
// refs must carry R4 types and valid ids, and the lookup prunes on the
// primary key by id hash.
func (s *Store) ReadRefs(ctx context.Context, refs []Ref, until uint64, withBody func(typ string) bool) (map[Ref]RefState, error) {
	out := make(map[Ref]RefState, len(refs))
	var plain, full []Ref
	for _, r := range refs {
		if !fhir.IsResourceType(r.Type) || !fhir.ValidID(r.ID) {
			return nil, fmt.Errorf("invalid reference %s/%s", r.Type, r.ID)
		}
		if withBody != nil && withBody(r.Type) {
			full = append(full, r)
		} else {
			plain = append(plain, r)
		}
	}
	for _, part := range []struct {
		refs []Ref
		body string
	}{{plain, "''"}, {full, "argMax(body, seq)"}} {
		for _, g := range byShard(s, part.refs, func(r Ref) uint32 { return IDHash(r.ID) }) {
			if err := s.readRefs(ctx, g.sh, g.items, until, part.body, out); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func (s *Store) readRefs(ctx context.Context, sh *shard, refs []Ref, until uint64, bodyExpr string, out map[Ref]RefState) error {
	tuples, hashes := refLists(refs)
	q := "SELECT type, id, argMax(last_updated, seq), argMax(patients, seq), argMax(deleted, seq), " + bodyExpr + " FROM " + s.table +
		" WHERE id_hash IN (" + hashes + ") AND (type, id) IN (" + tuples + ") AND last_updated <= ?" +
		" GROUP BY type, id"
	rows, err := s.query(s.readCtx(ctx, clickhouse.Settings{"max_query_size": len(q) + 1<<20}), sh, q, until)
	if err != nil {
		return fmt.Errorf("read %d referenced resources: %w", len(refs), err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Ref
		var st RefState
		var del uint8
		var body string
		if err := rows.Scan(&r.Type, &r.ID, &st.LastUpdated, &st.Patients, &del, &body); err != nil {
			return fmt.Errorf("scan referenced resource: %w", err)
		}
		if del == 1 {
			continue
		}
		if body != "" {
			st.Body = []byte(body)
		}
		out[r] = st
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read %d referenced resources: %w", len(refs), err)
	}
	return nil
}

// provenanceRefsSQL lists the "Type/id" of every reference in a
// Provenance body: each "reference" string, with escaped slashes undone,
// a version (/_history/..) and any base URL dropped. It reads references
// anywhere in the body, not only in target, so a caller must check the
// bodies it gets back; what it must never do is miss a target.
const provenanceRefsSQL = `arrayMap(r -> extract(replaceRegexpOne(replaceAll(r, '\\/', '/'), '/_history/.*$', ''), '([A-Za-z]+/[A-Za-z0-9.-]+)$'),` +
	` extractAll(body, '"reference"\\s*:\\s*"([^"]+)"'))`

// ProvenanceTargeting streams the latest live version at until
// (microseconds) of every Provenance that references one of targets, as
// (id, seq, body); a Provenance referencing several is streamed once. It
// reads the references out of the stored JSON, so it scans every
// Provenance version up to until: a caller batches many targets into one
// call. The match is a superset: the caller checks that a body's target
// names the resource. fn must not keep body after it returns.
func (s *Store) ProvenanceTargeting(ctx context.Context, targets []Ref, until uint64, fn func(id string, seq uint64, body []byte) error) (err error) {
	defer s.measure(ctx, "provenance_targeting", time.Now(), &err)
	if len(targets) == 0 {
		return nil
	}
	set := make([]any, len(targets))
	size := 0
	for i, t := range targets {
		if !fhir.IsResourceType(t.Type) || !fhir.ValidID(t.ID) {
			return fmt.Errorf("invalid reference %s/%s", t.Type, t.ID)
		}
		set[i] = t.Type + "/" + t.ID
		size += len(t.Type) + len(t.ID) + 4
	}
	// The ids of the Provenances whose versions reference a target, their
	// latest live version at until, and its body.
	matching := "SELECT DISTINCT id FROM " + s.table + " ARRAY JOIN " + provenanceRefsSQL + " AS ref" +
		" WHERE type = 'Provenance' AND last_updated <= ? AND ref IN ?"
	latest := "SELECT id, max(seq) FROM " + s.table +
		" WHERE type = 'Provenance' AND last_updated <= ? AND id IN (" + matching + ")" +
		" GROUP BY id HAVING argMax(deleted, seq) = 0"
	q := "SELECT id, seq, body FROM " + s.table +
		" WHERE type = 'Provenance' AND last_updated <= ? AND (id, seq) IN (" + latest + ")" + s.onceBy("id")
	settings := s.BlockSettings()
	settings["max_query_size"] = 2*size + 1<<20
	ctx = s.readCtx(ctx, settings)
	// A Provenance lives on the shard of its own id: every shard may hold
	// some, and none twice.
	for _, sh := range s.shards {
		if err := s.provenanceTargeting(ctx, sh, q, until, set, fn); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) provenanceTargeting(ctx context.Context, sh *shard, q string, until uint64, set []any, fn func(id string, seq uint64, body []byte) error) error {
	rows, err := s.query(ctx, sh, q, until, until, until, clickhouse.GroupSet{Value: set})
	if err != nil {
		return fmt.Errorf("read Provenances targeting %d resources: %w", len(set), err)
	}
	defer rows.Close()
	var id string
	var body []byte
	var seq uint64
	for rows.Next() {
		if err := rows.Scan(&id, &seq, &body); err != nil {
			return fmt.Errorf("scan Provenance row: %w", err)
		}
		if err := fn(id, seq, body); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read Provenances targeting %d resources: %w", len(set), err)
	}
	return nil
}
