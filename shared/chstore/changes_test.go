package chstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// rowsRead runs a read and returns the rows ClickHouse reported reading.
func rowsRead(t *testing.T, s *chstore.Store, r chstore.Range, deleted bool) (uint64, map[string]string) {
	t.Helper()
	var read uint64
	ctx := clickhouse.Context(t.Context(), clickhouse.WithProgress(func(p *clickhouse.Progress) { read += p.Rows }))
	got := map[string]string{}
	fn := func(id string, body []byte) error { got[id] = string(body); return nil }
	var err error
	if deleted {
		err = s.ReadDeleted(ctx, r, fn)
	} else {
		err = s.ReadLatest(ctx, r, fn)
	}
	if err != nil {
		t.Fatal(err)
	}
	return read, got
}

// TestStoreSinceReadsScanOnlyTheWindow: a _since read over a large store
// where few resources changed reads about the changed rows (plus granule
// slack), not the store; a full read of the same range reads it all.
func TestStoreSinceReadsScanOnlyTheWindow(t *testing.T) {
	s := testenv.Store(t)
	const old, changed = 60000, 40
	rows := make([]chstore.Row, 0, old+changed)
	for i := range old {
		rows = append(rows, chstore.Row{Type: "Observation", ID: fmt.Sprintf("o%d", i), Seq: uint64(i + 1), LastUpdated: uint64(i + 1), Patients: []string{"p"}, Body: []byte(`{"v":1}`)})
	}
	for i := range changed {
		del := i%4 == 0
		body := []byte(`{"v":2}`)
		if del {
			body = nil
		}
		rows = append(rows, chstore.Row{Type: "Observation", ID: fmt.Sprintf("o%d", i*1000), Seq: uint64(old + i + 1), LastUpdated: uint64(old + 1000 + i), Deleted: del, Body: body})
	}
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	since := uint64(old + 500)
	r := chstore.Range{Type: "Observation", HashHi: chstore.HashSpace, Since: since, Until: 1 << 40}
	read, live := rowsRead(t, s, r, false)
	if len(live) != changed*3/4 {
		t.Errorf("since read returned %d live resources, want %d", len(live), changed*3/4)
	}
	// Two passes over the window, each within a granule or two of it.
	if limit := uint64(4 * 8192); read > limit {
		t.Errorf("since read of %d changes read %d rows, want at most %d (the window, not the %d-row store)", changed, read, limit, old)
	}
	_, gone := rowsRead(t, s, r, true)
	if len(gone) != changed/4 {
		t.Errorf("since read returned %d deletions, want %d", len(gone), changed/4)
	}
	// Deletions in a compartment: the compartment comes from the last live
	// version, older than the window, by point lookups.
	rc := r
	rc.Patients = []string{"p"}
	if _, gone := rowsRead(t, s, rc, true); len(gone) != changed/4 {
		t.Errorf("since read of patient p's deletions returned %d, want %d", len(gone), changed/4)
	}
	rc.Patients = []string{"q"}
	if _, gone := rowsRead(t, s, rc, true); len(gone) != 0 {
		t.Errorf("since read of patient q's deletions returned %v, want none", gone)
	}
	full := r
	full.Since = 0
	read, all := rowsRead(t, s, full, false)
	if len(all) != old-changed/4 {
		t.Errorf("full read returned %d resources, want %d", len(all), old-changed/4)
	}
	if read < old {
		t.Errorf("full read reported %d rows read, fewer than the %d stored: the measure above proves nothing", read, old)
	}
	counts, err := s.BucketCounts(t.Context(), []string{"Observation"}, since, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range counts {
		n += c.Rows
	}
	if n != changed {
		t.Errorf("bucket counts since %d sum to %d, want the %d changed versions", since, n, changed)
	}
}

// TestStoreChangeLogHorizonForOlderStores: a store that held versions
// before the change log existed gets a horizon; _since reads from before
// it read the versions table and still see every change.
func TestStoreChangeLogHorizonForOlderStores(t *testing.T) {
	cfg := testenv.ClickHouse(t)
	ctx := context.Background()
	s, err := chstore.Open(ctx, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	// An older store: versions only, no change log.
	conn := s.Conn()
	for _, q := range []string{
		"DROP TABLE " + cfg.Database + ".resource_changes_feed",
		"DROP TABLE " + cfg.Database + "." + chstore.ChangesTable,
		"DROP TABLE " + cfg.Database + ".resource_changes_horizon",
		"INSERT INTO " + s.TableName() + " (type, id, id_hash, seq, last_updated, deleted, patients, body)" +
			" SELECT 'Patient', 'a', 1, 1, 100, 0, [], 'a1' UNION ALL SELECT 'Patient', 'b', 2, 2, 200, 0, [], 'b1'",
	} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	s, err = chstore.Open(ctx, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if h, err := s.Horizon(ctx); err != nil || h != 200 {
		t.Fatalf("horizon %d (%v), want 200 (the latest stamp before the change log)", h, err)
	}
	if err := s.Insert(ctx, []chstore.Row{{Type: "Patient", ID: "c", Seq: 3, LastUpdated: 300, Body: []byte("c1")}}); err != nil {
		t.Fatal(err)
	}
	all := chstore.Range{Type: "Patient", HashHi: chstore.HashSpace, Until: 1000}
	for since, want := range map[uint64]string{150: "b=b1 c=c1", 200: "c=c1", 250: "c=c1"} {
		r := all
		r.Since = since
		if got := render(readAll(t, s, r, false)); got != want {
			t.Errorf("since %d: %q, want %q", since, got, want)
		}
	}
	// Opening again keeps the horizon.
	s2, err := chstore.Open(ctx, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if h, err := s2.Horizon(ctx); err != nil || h != 200 {
		t.Errorf("horizon after reopening %d (%v), want 200", h, err)
	}
}

// TestStoreCompleteChangeLogCopiesWhatTheFeedMissed: the feed copies every
// insert into the change log; when its part of an insert failed (simulated
// here by an insert while the feed is gone), Recover reports the versions
// the replay must skip and CompleteChangeLog copies what the change log
// lacks of the changes named, and of no other (another ingester may be
// storing those), so a since read (change log) and a full read (versions)
// agree.
func TestStoreCompleteChangeLogCopiesWhatTheFeedMissed(t *testing.T) {
	cfg := testenv.ClickHouse(t)
	s, err := chstore.Open(t.Context(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	count := func(table string) (n, distinct uint64) {
		t.Helper()
		if err := s.Conn().QueryRow(t.Context(), "SELECT count(), uniqExact(seq) FROM "+cfg.Database+"."+table).Scan(&n, &distinct); err != nil {
			t.Fatal(err)
		}
		return n, distinct
	}
	if err := s.Insert(t.Context(), []chstore.Row{{Type: "Patient", ID: "a", Seq: 1, LastUpdated: 100, Body: []byte("a")}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := count(chstore.ChangesTable); n != 1 {
		t.Fatalf("the feed copied %d rows into the change log, want 1", n)
	}
	// Versions stored without their copy: the feed is dropped for a while.
	if err := s.Conn().Exec(t.Context(), "DROP TABLE "+cfg.Database+".resource_changes_feed"); err != nil {
		t.Fatal(err)
	}
	if err := s.Insert(t.Context(), []chstore.Row{
		{Type: "Patient", ID: "b", Seq: 2, LastUpdated: 200, Body: []byte("b")},
		{Type: "Patient", ID: "c", Seq: 3, LastUpdated: 300, Body: []byte("c")},
	}); err != nil {
		t.Fatal(err)
	}
	stored, err := s.Recover(t.Context(), 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 || !stored[chstore.VersionKey{Seq: 2, Type: "Patient", ID: "b"}] || !stored[chstore.VersionKey{Seq: 3, Type: "Patient", ID: "c"}] {
		t.Errorf("stored after the watermark %v, want Patient/b at 2 and Patient/c at 3", stored)
	}
	if err := s.CompleteChangeLog(t.Context(), []uint64{2}, 100); err != nil {
		t.Fatal(err)
	}
	if n, _ := count(chstore.ChangesTable); n != 2 {
		t.Errorf("change log holds %d rows after completing change 2, want 2 (a and b)", n)
	}
	if err := s.CompleteChangeLog(t.Context(), []uint64{2, 3}, 100); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{chstore.Table, chstore.ChangesTable} {
		if n, distinct := count(table); n != 3 || distinct != 3 {
			t.Errorf("%s holds %d rows of %d seqs, want 3 of 3", table, n, distinct)
		}
	}
	since := chstore.Range{Type: "Patient", HashHi: chstore.HashSpace, Since: 50, Until: 1000}
	if got := render(readAll(t, s, since, false)); got != "a=a b=b c=c" {
		t.Errorf("since read after recovery: %q", got)
	}
	// Completing again changes nothing.
	if err := s.CompleteChangeLog(t.Context(), []uint64{2, 3}, 100); err != nil {
		t.Fatal(err)
	}
	if n, _ := count(chstore.ChangesTable); n != 3 {
		t.Errorf("change log holds %d rows after completing it again, want 3", n)
	}
}

// TestStoreTrimChangeLogDropsOldMonthsAndRaisesTheHorizon: trimming drops
// whole months older than the cutoff from the change log and raises the
// horizon, so _since reads from before it still see every change (from
// the versions table) and later ones still use the change log. On a
// cluster every shard trims its own change log and keeps its own horizon.
func TestStoreTrimChangeLogDropsOldMonthsAndRaisesTheHorizon(t *testing.T) {
	t.Run("one server", func(t *testing.T) { checkTrim(t, testenv.ClickHouse(t)) })
	t.Run("2 shards x 2 replicas", func(t *testing.T) { checkTrim(t, testenv.ClickHouseCluster(t, 2, 2).Config()) })
}

func checkTrim(t *testing.T, cfg chstore.Config) {
	ctx := context.Background()
	s, err := chstore.Open(ctx, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := func(month time.Month, day int) uint64 {
		return chstore.Micros(time.Date(2020, month, day, 12, 0, 0, 0, time.UTC))
	}
	// January versions on every shard, two March ones.
	var rows []chstore.Row
	for i := range 10 {
		id := fmt.Sprintf("%d-jan", i)
		rows = append(rows, chstore.Row{Type: "Patient", ID: id, Seq: uint64(i + 1), LastUpdated: at(time.January, 10+i), Body: []byte(id)})
	}
	rows = append(rows,
		chstore.Row{Type: "Patient", ID: "mar0", Seq: 11, LastUpdated: at(time.March, 10), Body: []byte("mar0")},
		chstore.Row{Type: "Patient", ID: "mar1", Seq: 12, LastUpdated: at(time.March, 11), Body: []byte("mar1")})
	onShard := map[int]bool{}
	for _, r := range rows[:10] {
		onShard[chstore.ShardOfBucket(uint64(chstore.IDHash(r.ID))/(chstore.HashSpace/chstore.HashBuckets), s.Shards())] = true
	}
	if len(onShard) != s.Shards() {
		t.Fatalf("January's versions lie on %d of %d shards; the test needs them on each", len(onShard), s.Shards())
	}
	if err := s.Insert(ctx, rows); err != nil {
		t.Fatal(err)
	}
	dropped, err := s.TrimChangeLog(ctx, time.Date(2020, time.February, 15, 0, 0, 0, 0, time.UTC), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 1 || dropped[0] != "202001" {
		t.Fatalf("dropped %v, want [202001]", dropped)
	}
	if h, err := s.Horizon(ctx); err != nil || h != at(time.January, 19) {
		t.Errorf("horizon %d (%v), want the newest January stamp %d", h, err, at(time.January, 19))
	}
	var n uint64
	for _, conn := range s.ShardConns() {
		var part uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+cfg.Database+"."+chstore.ChangesTable+" WHERE type = 'Patient'").Scan(&part); err != nil {
			t.Fatal(err)
		}
		n += part
	}
	if n != 2 {
		t.Errorf("the change logs hold %d rows, want the 2 of March", n)
	}
	all := chstore.Range{Type: "Patient", HashHi: chstore.HashSpace, Until: at(time.December, 1)}
	for since, want := range map[uint64]int{
		at(time.January, 5):  12, // before the horizon: the versions table
		at(time.January, 15): 6,  // 6-jan..9-jan and March
		at(time.March, 1):    2,  // after it: the change log
	} {
		r := all
		r.Since = since
		if got := readAll(t, s, r, false); len(got) != want {
			t.Errorf("since %d: read %d resources (%s), want %d", since, len(got), render(got), want)
		}
	}
	if again, err := s.TrimChangeLog(ctx, time.Date(2020, time.February, 15, 0, 0, 0, 0, time.UTC), 0); err != nil || len(again) != 0 {
		t.Errorf("trimming again dropped %v (%v), want nothing", again, err)
	}
}
