package chstore_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// history is a made-up change history for the cluster tests: Patients,
// their Observations, updates, deletes and Provenances, stamped 10µs apart.
func history(n int) []chstore.Row {
	var rows []chstore.Row
	seq := uint64(0)
	add := func(typ, id string, deleted bool, patients []string, body string) {
		seq++
		r := chstore.Row{Type: typ, ID: id, Seq: seq, LastUpdated: seq * 10, Deleted: deleted, Patients: patients}
		if !deleted {
			r.Body = []byte(body)
		}
		rows = append(rows, r)
	}
	for i := range n {
		p := fmt.Sprintf("p%d", i)
		add("Patient", p, false, []string{p}, p+"v1")
		add("Observation", "o"+p, false, []string{p}, "o"+p+"v1")
	}
	for i := range n {
		p := fmt.Sprintf("p%d", i)
		switch i % 5 {
		case 0:
			add("Patient", p, false, []string{p}, p+"v2")
		case 1:
			add("Observation", "o"+p, true, nil, "")
		case 2:
			add("Provenance", "prov"+p, false, nil, `{"resourceType":"Provenance","target":[{"reference":"Patient/`+p+`"}]}`)
		}
	}
	return rows
}

// want is what a point-in-time read of typ at until must return: the latest
// version of each resource, live or deleted as asked, changed after since.
func want(rows []chstore.Row, typ string, since, until uint64, deleted bool) map[string]string {
	latest := map[string]chstore.Row{}
	for _, r := range rows {
		if r.Type == typ && r.LastUpdated <= until {
			latest[r.ID] = r
		}
	}
	out := map[string]string{}
	for id, r := range latest {
		if r.Deleted == deleted && r.LastUpdated > since {
			out[id] = string(r.Body)
		}
	}
	return out
}

// checkReads reads every way an export does and compares with the history.
// Bucket counts, an upper bound, may count up to dups versions twice.
func checkReads(t *testing.T, s *chstore.Store, rows []chstore.Row, dups int) {
	t.Helper()
	ctx := t.Context()
	last := rows[len(rows)-1].LastUpdated
	for _, typ := range []string{"Patient", "Observation", "Provenance"} {
		for _, w := range [][2]uint64{{0, last / 2}, {0, last}, {last / 2, last}} {
			r := chstore.Range{Type: typ, HashHi: chstore.HashSpace, Since: w[0], Until: w[1]}
			for _, deleted := range []bool{false, true} {
				if got, exp := readAll(t, s, r, deleted), want(rows, typ, w[0], w[1], deleted); !maps.Equal(got, exp) {
					t.Errorf("%s (since %d, until %d, deleted %v): read %d resources, want %d", typ, w[0], w[1], deleted, len(got), len(exp))
				}
			}
		}
	}
	counts, err := s.BucketCounts(ctx, nil, 0, last)
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for i, c := range counts {
		total += c.Rows
		if i > 0 && (c.Type < counts[i-1].Type || c.Type == counts[i-1].Type && c.Bucket <= counts[i-1].Bucket) {
			t.Fatalf("bucket counts out of order at %d: %+v after %+v", i, c, counts[i-1])
		}
	}
	if total < uint64(len(rows)) || total > uint64(len(rows)+dups) {
		t.Errorf("bucket counts add up to %d versions, want %d (+%d)", total, len(rows), dups)
	}
	for _, id := range []string{"p0", "p1", "p2", "p3", "p7", "p8"} {
		body, ok, err := s.ReadOne(ctx, "Patient", id, last)
		if exp := want(rows, "Patient", 0, last, false)[id]; err != nil || !ok || string(body) != exp {
			t.Errorf("ReadOne Patient/%s = %q, %v, %v; want %q", id, body, ok, err, exp)
		}
	}
	refs := []chstore.Ref{{Type: "Observation", ID: "op0"}, {Type: "Observation", ID: "op1"}, {Type: "Observation", ID: "op2"}, {Type: "Observation", ID: "op3"}}
	patients, err := s.PatientsOf(ctx, refs, last)
	if err != nil {
		t.Fatal(err)
	}
	if len(patients) != 3 || patients[refs[1]] != nil || !slices.Equal(patients[refs[3]], []string{"p3"}) {
		t.Errorf("PatientsOf = %v, want op0, op2 and op3 (op1 is deleted)", patients)
	}
	var targets []chstore.Ref
	for i := range 40 {
		targets = append(targets, chstore.Ref{Type: "Patient", ID: fmt.Sprintf("p%d", i)})
	}
	var provs []string
	err = s.ProvenanceTargeting(ctx, targets, last, func(id string, _ uint64, _ []byte) error {
		provs = append(provs, id)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(provs) != 8 { // p2, p7, ... p37
		t.Errorf("ProvenanceTargeting found %v, want the 8 Provenances of p2, p7, ..., p37", provs)
	}
}

// countOn counts a table's rows on one server, as that server holds them.
func countOn(t *testing.T, addr, table string) uint64 {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n uint64
	if err := conn.QueryRow(t.Context(), "SELECT count() FROM "+table).Scan(&n); err != nil {
		t.Fatalf("count %s on %s: %v", table, addr, err)
	}
	return n
}

// TestStoreOnAShardedReplicatedCluster runs the store on 2 shards of 2
// replicas: every version lands on its id's shard, on both replicas, as
// soon as Insert returns; every read an export makes returns the history's
// answer; with a replica killed (kill -9) the reads go on, an insert fails
// with a quorum error rather than store rows on one replica only, and
// after the restart the replica catches up and inserts pass again.
func TestStoreOnAShardedReplicatedCluster(t *testing.T) {
	c := testenv.ClickHouseCluster(t, 2, 2)
	cfg := c.Config()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	s, err := chstore.Open(ctx, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Shards() != 2 {
		t.Fatalf("store has %d shards, want 2", s.Shards())
	}
	rows := history(200)
	for lo := 0; lo < len(rows); lo += 150 {
		if err := s.Insert(ctx, rows[lo:min(lo+150, len(rows))]); err != nil {
			t.Fatal(err)
		}
	}
	// Placement: each shard holds exactly the versions of its ids, on each
	// replica, change log included, right after the quorum inserts.
	perShard := make([]uint64, 2)
	for _, r := range rows {
		perShard[chstore.ShardOfBucket(uint64(chstore.IDHash(r.ID))/(chstore.HashSpace/chstore.HashBuckets), 2)]++
	}
	if perShard[0] == 0 || perShard[1] == 0 {
		t.Fatalf("history spreads %v over the shards; the test needs both", perShard)
	}
	for i, replicas := range c.Shards() {
		for _, addr := range replicas {
			for _, table := range []string{chstore.Table, chstore.ChangesTable} {
				if n := countOn(t, addr, cfg.Database+"."+table); n != perShard[i] {
					t.Errorf("shard %d replica %s holds %d rows in %s, want %d", i+1, addr, n, table, perShard[i])
				}
			}
		}
	}
	checkReads(t, s, rows, 0)
	// The same versions stored twice, as a replayed block is once the
	// lone copy of its failed quorum insert completes: read once.
	if err := s.Insert(ctx, rows[:5]); err != nil {
		t.Fatal(err)
	}
	checkReads(t, s, rows, 5)

	// kill -9 one replica of the first shard: reads carry on, on the other.
	c.Servers[0][0].Kill()
	for range 3 { // the pool's connections to the dead replica fail one by one
		checkReads(t, s, rows, 5)
	}
	// An insert cannot reach a majority of that shard: it fails, and says so.
	next := rows[len(rows)-1]
	extra := []chstore.Row{}
	for i := 0; len(extra) < 2; i++ {
		id := fmt.Sprintf("late%d", i)
		if chstore.ShardOfBucket(uint64(chstore.IDHash(id))/(chstore.HashSpace/chstore.HashBuckets), 2) == 0 {
			next.Seq++
			next.LastUpdated += 10
			extra = append(extra, chstore.Row{Type: "Patient", ID: id, Seq: next.Seq, LastUpdated: next.LastUpdated, Patients: []string{id}, Body: []byte(id)})
		}
	}
	start := time.Now()
	err = s.Insert(ctx, extra[:1])
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "quorum") {
		t.Errorf("insert with one of two replicas down: %v, want a quorum error", err)
	}
	t.Logf("insert with a replica down failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	// The failed insert may have left its block on the live replica alone,
	// hidden from reads until its quorum completes: the reads still match.
	checkReads(t, s, rows, 5)

	// Back up: the replica catches up, and the replay passes as the
	// ingester's does: it stores what Recover does not report stored, and
	// completes the change log of what it does. The failed insert's block
	// may have completed its quorum by now, without its change log row:
	// the feed writes after the table, and the table's write failed.
	c.Restart(0, 0)
	testenv.Eventually(t, time.Minute, "the restarted replica to catch up", func() bool {
		return countOn(t, c.Servers[0][0].Addr(), cfg.Database+"."+chstore.Table) >= perShard[0]
	})
	watermark := rows[len(rows)-1]
	testenv.Eventually(t, time.Minute, "the replay after the restart", func() bool {
		stored, err := s.Recover(ctx, watermark.Seq, watermark.LastUpdated)
		if err != nil {
			return false
		}
		var rest []chstore.Row
		var recovered []uint64
		for _, r := range extra {
			if stored[chstore.VersionKey{Seq: r.Seq, Type: r.Type, ID: r.ID}] {
				recovered = append(recovered, r.Seq)
			} else {
				rest = append(rest, r)
			}
		}
		if len(recovered) > 0 {
			t.Logf("Recover names %d of the %d changes after the watermark stored", len(recovered), len(extra))
			if err := s.CompleteChangeLog(ctx, recovered, watermark.LastUpdated); err != nil {
				return false
			}
		}
		return s.Insert(ctx, rest) == nil
	})
	rows = append(rows, extra...)
	// The first block may have completed its quorum after Recover looked,
	// and be stored twice: the reads return it once.
	checkReads(t, s, rows, 6)

	for _, addr := range c.Shards()[0] {
		if n := countOn(t, addr, cfg.Database+"."+chstore.Table); n < perShard[0]+2 {
			t.Errorf("replica %s holds %d rows after the restart, want at least %d", addr, n, perShard[0]+2)
		}
	}
}

// TestStoreRecoverNamesAPartlyStoredTransaction: a transaction whose
// versions span shards, stored on one shard only when the ingester died,
// is reported version by version, so the replay stores the rest.
func TestStoreRecoverNamesAPartlyStoredTransaction(t *testing.T) {
	c := testenv.ClickHouseCluster(t, 2, 1)
	cfg := c.Config()
	s, err := chstore.Open(t.Context(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var tx []chstore.Row
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("t%d", i)
		tx = append(tx, chstore.Row{Type: "Patient", ID: id, Seq: 7, LastUpdated: 70, Body: []byte(id)})
	}
	var first []chstore.Row
	want := map[chstore.VersionKey]bool{}
	for _, r := range tx {
		if chstore.ShardOfBucket(uint64(chstore.IDHash(r.ID))/(chstore.HashSpace/chstore.HashBuckets), 2) == 0 {
			first = append(first, r)
			want[chstore.VersionKey{Seq: 7, Type: "Patient", ID: r.ID}] = true
		}
	}
	if len(first) == 0 || len(first) == len(tx) {
		t.Fatalf("the transaction puts %d of %d versions on the first shard; the test needs both shards", len(first), len(tx))
	}
	if err := s.Insert(t.Context(), first); err != nil { // the crash: the other shard's block never went
		t.Fatal(err)
	}
	got, err := s.Recover(t.Context(), 6, 60)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("Recover reported %d versions, want the %d stored on the first shard", len(got), len(want))
	}
}

// TestShardsOwnContiguousBuckets: every bucket belongs to exactly one
// shard, shards own contiguous ranges in order, and ShardStart marks them.
func TestShardsOwnContiguousBuckets(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 7, 1024} {
		prev := 0
		for b := range uint64(chstore.HashBuckets) {
			sh := chstore.ShardOfBucket(b, n)
			if sh != prev && sh != prev+1 {
				t.Fatalf("n=%d: bucket %d in shard %d after shard %d", n, b, sh, prev)
			}
			if sh != prev && chstore.ShardStart(sh, n) != b*(chstore.HashSpace/chstore.HashBuckets) {
				t.Fatalf("n=%d: shard %d starts at bucket %d, ShardStart says hash %d", n, sh, b, chstore.ShardStart(sh, n))
			}
			prev = sh
		}
		if prev != n-1 || chstore.ShardStart(n, n) != chstore.HashSpace || chstore.ShardStart(0, n) != 0 {
			t.Fatalf("n=%d: last shard %d, ShardStart(n)=%d", n, prev, chstore.ShardStart(n, n))
		}
	}
	if got, err := chstore.ParseShards("a:1,a:2; b:1,b:2"); err != nil || len(got) != 2 || !slices.Equal(got[1], []string{"b:1", "b:2"}) {
		t.Errorf("ParseShards = %v, %v", got, err)
	}
	for _, bad := range []string{"", "a:1;;b:1", "a1", "a:1,b:'1"} {
		if _, err := chstore.ParseShards(bad); err == nil {
			t.Errorf("ParseShards(%q) accepted", bad)
		}
	}
}

// TestStoreParallelQuorumInsertsStoreEachVersionOnce: two ingesters insert
// into one replicated shard at once. On 18.16 a quorum insert is refused
// while another's quorum is pending, and the refusal can come from the
// change log's feed after the versions table took the rows: retrying the
// whole insert then stored them twice. Each version must be stored once,
// in both tables.
func TestStoreParallelQuorumInsertsStoreEachVersionOnce(t *testing.T) {
	c := testenv.ClickHouseCluster(t, 1, 2)
	cfg := c.Config()
	s, err := chstore.Open(t.Context(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const inserters, batches, perBatch = 2, 40, 50
	var wg sync.WaitGroup
	errs := make(chan error, inserters)
	for w := range inserters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				var rows []chstore.Row
				for i := range perBatch {
					seq := uint64(1 + w + inserters*(b*perBatch+i))
					id := fmt.Sprintf("w%d-%d-%d", w, b, i)
					rows = append(rows, chstore.Row{Type: "Patient", ID: id, Seq: seq, LastUpdated: 1000 + seq, Body: []byte(`{"resourceType":"Patient"}`)})
				}
				if err := s.Insert(t.Context(), rows); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := uint64(inserters * batches * perBatch)
	for _, addr := range c.Shards()[0] {
		for _, table := range []string{chstore.Table, chstore.ChangesTable} {
			testenv.Eventually(t, 30*time.Second, "the replica to hold every version once", func() bool {
				return countOn(t, addr, cfg.Database+"."+table) >= want
			})
			if n := countOn(t, addr, cfg.Database+"."+table); n != want {
				t.Errorf("replica %s holds %d rows in %s, want %d: versions stored twice", addr, n, table, want)
			}
		}
	}
}
