package chstore_test

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

func readAll(t *testing.T, s *chstore.Store, r chstore.Range, deleted bool) map[string]string {
	t.Helper()
	got := map[string]string{}
	fn := func(id string, body []byte) error {
		if _, dup := got[id]; dup {
			return fmt.Errorf("resource %s returned twice", id)
		}
		got[id] = string(body)
		return nil
	}
	var err error
	if deleted {
		err = s.ReadDeleted(context.Background(), r, fn)
	} else {
		err = s.ReadLatest(context.Background(), r, fn)
	}
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestStorePointInTimeReads(t *testing.T) {
	s := testenv.Store(t)
	ctx := t.Context()
	rows := []chstore.Row{
		{Type: "Patient", ID: "a", Seq: 1, LastUpdated: 100, Body: []byte(`a1`)},
		{Type: "Patient", ID: "b", Seq: 2, LastUpdated: 200, Body: []byte(`b1`)},
		{Type: "Patient", ID: "a", Seq: 3, LastUpdated: 300, Body: []byte(`a2`)},
		{Type: "Patient", ID: "b", Seq: 4, LastUpdated: 400, Deleted: true},
		{Type: "Observation", ID: "a", Seq: 5, LastUpdated: 500, Body: []byte(`oa`)},
	}
	if err := s.Insert(ctx, rows); err != nil {
		t.Fatal(err)
	}
	all := func(since, until uint64) chstore.Range {
		return chstore.Range{Type: "Patient", HashLo: 0, HashHi: chstore.HashSpace, Since: since, Until: until}
	}
	cases := []struct {
		name         string
		r            chstore.Range
		live, delete string
	}{
		{"before anything", all(0, 99), "", ""},
		{"first versions", all(0, 250), "a=a1 b=b1", ""},
		{"update visible at its stamp", all(0, 300), "a=a2 b=b1", ""},
		{"delete hides resource", all(0, 1000), "a=a2", "b="},
		{"since excludes older changes", all(300, 1000), "", "b="},
		{"since is strictly after", all(299, 1000), "a=a2", "b="},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := render(readAll(t, s, c.r, false)); got != c.live {
				t.Errorf("live = %q, want %q", got, c.live)
			}
			if got := render(readAll(t, s, c.r, true)); got != c.delete {
				t.Errorf("deleted = %q, want %q", got, c.delete)
			}
		})
	}
}

// TestStoreRecoverReportsVersionsAfterAWatermark: every version stored after
// the watermark is named, each of a transaction's under the same seq.
func TestStoreRecoverReportsVersionsAfterAWatermark(t *testing.T) {
	s := testenv.Store(t)
	rows := []chstore.Row{
		{Type: "Patient", ID: "a", Seq: 1, LastUpdated: 100, Body: []byte(`{}`)},
		{Type: "Patient", ID: "b", Seq: 2, LastUpdated: 200, Body: []byte(`{}`)},
		{Type: "Patient", ID: "c", Seq: 3, LastUpdated: 300, Body: []byte(`{}`)},
		{Type: "Observation", ID: "o", Seq: 3, LastUpdated: 300, Body: []byte(`{}`)},
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	got, err := s.Recover(t.Context(), 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := map[chstore.VersionKey]bool{
		{Seq: 2, Type: "Patient", ID: "b"}: true, {Seq: 3, Type: "Patient", ID: "c"}: true, {Seq: 3, Type: "Observation", ID: "o"}: true,
	}
	if !maps.Equal(got, want) {
		t.Errorf("versions after watermark (1, 100) = %v, want %v", got, want)
	}
}

func TestStoreHashRangesPartitionResources(t *testing.T) {
	s := testenv.Store(t)
	var rows []chstore.Row
	for i := range 500 {
		rows = append(rows, chstore.Row{Type: "Observation", ID: fmt.Sprintf("o%d", i), Seq: uint64(i + 1), LastUpdated: 10, Body: []byte("{}")})
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	counts, err := s.BucketCounts(t.Context(), []string{"Observation"}, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, c := range counts {
		total += c.Rows
	}
	if total != 500 {
		t.Fatalf("bucket counts sum to %d, want 500", total)
	}
	// Four uneven ranges covering the space see every resource once.
	bounds := []uint64{0, 1 << 30, 1 << 31, 3 << 30, chstore.HashSpace}
	seen := map[string]int{}
	for i := 0; i+1 < len(bounds); i++ {
		for id := range readAll(t, s, chstore.Range{Type: "Observation", HashLo: bounds[i], HashHi: bounds[i+1], Until: 10}, false) {
			seen[id]++
		}
	}
	if len(seen) != 500 {
		t.Fatalf("ranges returned %d resources, want 500", len(seen))
	}
}

func TestStoreCreateTableSQLByVersion(t *testing.T) {
	old := chstore.CreateTableSQL("db.t", chstore.Version{Major: 18, Minor: 16})
	if strings.Contains(old, "CODEC") || strings.Contains(old, "LowCardinality") {
		t.Errorf("18.16 DDL uses features it lacks:\n%s", old)
	}
	recent := chstore.CreateTableSQL("db.t", chstore.Version{Major: 24, Minor: 8})
	if !strings.Contains(recent, "CODEC(ZSTD") || !strings.Contains(recent, "LowCardinality(String)") {
		t.Errorf("24.8 DDL does not use codecs and LowCardinality:\n%s", recent)
	}
}

func render(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func TestStoreCompartmentFilters(t *testing.T) {
	s := testenv.Store(t)
	rows := []chstore.Row{
		{Type: "Observation", ID: "o1", Seq: 1, LastUpdated: 100, Patients: []string{"p1"}, Body: []byte(`o1`)},
		{Type: "Observation", ID: "o2", Seq: 2, LastUpdated: 100, Patients: []string{"p2"}, Body: []byte(`o2`)},
		{Type: "Observation", ID: "o3", Seq: 3, LastUpdated: 100, Body: []byte(`o3`)}, // no patient
		{Type: "Observation", ID: "o4", Seq: 4, LastUpdated: 100, Patients: []string{"p1", "p3"}, Body: []byte(`o4`)},
		{Type: "Observation", ID: "o5", Seq: 5, LastUpdated: 100, Patients: []string{"p2"}, Body: []byte(`o5`)},
		{Type: "Observation", ID: "o5", Seq: 6, LastUpdated: 200, Deleted: true},
		{Type: "Observation", ID: "o6", Seq: 7, LastUpdated: 100, Patients: []string{"p1"}, Body: []byte(`o6`)},
		{Type: "Observation", ID: "o6", Seq: 8, LastUpdated: 200, Deleted: true},
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	r := func(in bool, patients ...string) chstore.Range {
		return chstore.Range{Type: "Observation", HashHi: chstore.HashSpace, Since: 150, Until: 1000, InCompartment: in, Patients: patients}
	}
	full := func(rg chstore.Range) chstore.Range { rg.Since = 0; return rg }
	cases := []struct {
		name          string
		r             chstore.Range
		live, deleted string
	}{
		{"everything", full(r(false)), "o1=o1 o2=o2 o3=o3 o4=o4", "o5= o6="},
		{"in some compartment", full(r(true)), "o1=o1 o2=o2 o4=o4", "o5= o6="},
		{"patients p1 and p3", full(r(false, "p1", "p3")), "o1=o1 o4=o4", "o6="},
		{"deletions follow the last live version's patients", r(false, "p2"), "", "o5="},
		{"deletions of another patient are not listed", r(false, "p1"), "", "o6="},
		{"deletions in any compartment", r(true), "", "o5= o6="},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := render(readAll(t, s, c.r, false)); got != c.live {
				t.Errorf("live = %q, want %q", got, c.live)
			}
			if got := render(readAll(t, s, c.r, true)); got != c.deleted {
				t.Errorf("deleted = %q, want %q", got, c.deleted)
			}
		})
	}
	body, ok, err := s.ReadOne(t.Context(), "Observation", "o4", 1000)
	if err != nil || !ok || string(body) != "o4" {
		t.Errorf("ReadOne(o4) = %q, %v, %v", body, ok, err)
	}
	if _, ok, err := s.ReadOne(t.Context(), "Observation", "o5", 1000); ok || err != nil {
		t.Errorf("ReadOne of a deleted resource found it (%v)", err)
	}
	if body, ok, _ := s.ReadOne(t.Context(), "Observation", "o5", 150); !ok || string(body) != "o5" {
		t.Errorf("ReadOne(o5) before its deletion = %q, %v", body, ok)
	}
	if _, ok, _ := s.ReadOne(t.Context(), "Observation", "nope", 1000); ok {
		t.Error("ReadOne found a resource never stored")
	}
}

func TestStorePatientsOf(t *testing.T) {
	s := testenv.Store(t)
	rows := []chstore.Row{
		{Type: "Observation", ID: "o1", Seq: 1, LastUpdated: 100, Patients: []string{"p1"}, Body: []byte(`{}`)},
		{Type: "Observation", ID: "o2", Seq: 2, LastUpdated: 100, Patients: []string{"p2"}, Body: []byte(`{}`)},
		{Type: "Observation", ID: "o2", Seq: 3, LastUpdated: 300, Patients: []string{"p3"}, Body: []byte(`{}`)},
		{Type: "Observation", ID: "o3", Seq: 4, LastUpdated: 100, Patients: []string{"p1"}, Body: []byte(`{}`)},
		{Type: "Observation", ID: "o3", Seq: 5, LastUpdated: 150, Deleted: true},
		{Type: "Organization", ID: "o1", Seq: 6, LastUpdated: 100, Body: []byte(`{}`)},
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	refs := []chstore.Ref{{"Observation", "o1"}, {"Observation", "o2"}, {"Observation", "o3"}, {"Organization", "o1"}, {"Observation", "nope"}}
	got, err := s.PatientsOf(t.Context(), refs, 200)
	if err != nil {
		t.Fatal(err)
	}
	want := map[chstore.Ref][]string{{"Observation", "o1"}: {"p1"}, {"Observation", "o2"}: {"p2"}, {"Organization", "o1"}: {}}
	if len(got) != len(want) || fmt.Sprint(got[chstore.Ref{"Observation", "o1"}]) != "[p1]" || fmt.Sprint(got[chstore.Ref{"Observation", "o2"}]) != "[p2]" {
		t.Errorf("PatientsOf at 200 = %v, want %v", got, want)
	}
	if _, err := s.PatientsOf(t.Context(), []chstore.Ref{{"Observation", "x'); DROP"}}, 200); err == nil {
		t.Error("an unsafe id was accepted")
	}
}

// A Group export inlines its members; a cohort of 20,000 patients must not
// trip the server's query size limit.
func TestStoreLargePatientListsRead(t *testing.T) {
	s := testenv.Store(t)
	var rows []chstore.Row
	var cohort []string
	for i := range 20000 {
		id := fmt.Sprintf("patient-with-a-long-identifier-%06d", i)
		cohort = append(cohort, id)
		if i%1000 == 0 {
			rows = append(rows, chstore.Row{Type: "Observation", ID: fmt.Sprintf("o%d", i), Seq: uint64(i + 1), LastUpdated: 10, Patients: []string{id}, Body: []byte(`{}`)})
		}
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, s, chstore.Range{Type: "Observation", HashHi: chstore.HashSpace, Until: 10, Patients: cohort, InCompartment: true}, false)
	if len(got) != 20 {
		t.Errorf("read %d Observations of the 20,000-patient cohort, want 20", len(got))
	}
}

// TestStorePointReadsTouchOneSmallGranule: a read of one resource (single
// reads, writes' existence checks, compartments) reads about one granule
// of the versions table, not the default 8,192 rows of bodies.
func TestStorePointReadsTouchOneSmallGranule(t *testing.T) {
	s := testenv.Store(t)
	var rows []chstore.Row
	for i := range 20000 {
		rows = append(rows, chstore.Row{Type: "Patient", ID: fmt.Sprintf("p%d", i), Seq: uint64(i + 1), LastUpdated: uint64(i + 1), Body: []byte(`{"resourceType":"Patient"}`)})
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	var read uint64
	ctx := clickhouse.Context(t.Context(), clickhouse.WithProgress(func(p *clickhouse.Progress) { read += p.Rows }))
	body, ok, err := s.ReadOne(ctx, "Patient", "p4242", 1<<40)
	if err != nil || !ok || string(body) != `{"resourceType":"Patient"}` {
		t.Fatalf("ReadOne = %q, %v, %v", body, ok, err)
	}
	if limit := uint64(2 * chstore.VersionsGranularity); read == 0 || read > limit {
		t.Errorf("reading one resource read %d rows, want 1 to %d", read, limit)
	}
}

// TestStoreInsertIsOnePartHoweverManyBlocks: a large insert sends its rows
// in blocks of a few megabytes, and the server still writes one part per
// table for it: what was stored is read back whole, and nothing was merged
// to get there (the part's level is 0).
func TestStoreInsertIsOnePartHoweverManyBlocks(t *testing.T) {
	cfg := testenv.ClickHouse(t)
	s, err := chstore.Open(t.Context(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := `{"resourceType":"Patient","text":"` + strings.Repeat("x", 3<<20) + `"}`
	var rows []chstore.Row
	for i := range 5 { // 15 MiB: four blocks
		id := fmt.Sprintf("big-%d", i)
		rows = append(rows, chstore.Row{Type: "Patient", ID: id, Seq: uint64(i + 1), LastUpdated: uint64(10 * (i + 1)), Body: []byte(body)})
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, s, chstore.Range{Type: "Patient", HashHi: chstore.HashSpace, Until: 100}, false)
	if len(got) != len(rows) {
		t.Fatalf("read %d resources back, want %d", len(got), len(rows))
	}
	for id, b := range got {
		if b != body {
			t.Errorf("%s came back with %d bytes, want %d", id, len(b), len(body))
		}
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: cfg.Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, table := range []string{chstore.Table, chstore.ChangesTable} {
		var parts, level, n uint64
		err := conn.QueryRow(t.Context(), "SELECT count(), toUInt64(max(level)), sum(rows) FROM system.parts WHERE active AND database = ? AND table = ?",
			cfg.Database, table).Scan(&parts, &level, &n)
		if err != nil {
			t.Fatal(err)
		}
		if parts != 1 || level != 0 || n != uint64(len(rows)) {
			t.Errorf("%s: %d parts (highest level %d) holding %d rows; want one unmerged part of %d", table, parts, level, n, len(rows))
		}
	}
}

// TestStoreReadsLargeBodiesInSmallBlocks: a read of large resources comes
// in blocks of about ReadBlockBytes of bodies, not of ReadBlockRows rows,
// so a reader's memory does not grow with the size of the resources.
func TestStoreReadsLargeBodiesInSmallBlocks(t *testing.T) {
	cfg := testenv.ClickHouse(t)
	cfg.ReadBlockBytes = 64 << 10
	s, err := chstore.Open(t.Context(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 2000
	body := `{"resourceType":"DocumentReference","description":"` + strings.Repeat("x", 8<<10) + `"}`
	var rows []chstore.Row
	for i := range n {
		rows = append(rows, chstore.Row{Type: "DocumentReference", ID: fmt.Sprintf("d%d", i), Seq: uint64(i + 1), LastUpdated: 1, Body: []byte(body)})
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	var blocks, read uint64
	ctx := clickhouse.Context(t.Context(), clickhouse.WithProfileInfo(func(p *clickhouse.ProfileInfo) { blocks += p.Blocks }))
	err = s.ReadLatest(ctx, chstore.Range{Type: "DocumentReference", HashHi: chstore.HashSpace, Until: 1}, func(_ string, b []byte) error {
		if string(b) == body {
			read++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// 16 MiB of bodies: about 256 blocks of 64 KiB. ClickHouse sizes them
	// from an estimate, so allow twice that size, but not a few blocks of
	// megabytes (without the bound, 4 blocks of 512 rows).
	total := uint64(n * len(body))
	if read != n || blocks < total/(2*uint64(cfg.ReadBlockBytes)) {
		t.Errorf("%d of %d resources read whole, in %d blocks: %d KiB a block, want at most %d", read, n, blocks, total/max(blocks, 1)>>10, 2*cfg.ReadBlockBytes>>10)
	}
}
