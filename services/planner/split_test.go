package planner_test

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/streams"
)

const bucketWidth = chstore.HashSpace / chstore.HashBuckets

// uniform gives every bucket of typ the same rows.
func uniform(typ string, rows uint64) []chstore.BucketCount {
	out := make([]chstore.BucketCount, 0, chstore.HashBuckets)
	for b := range uint64(chstore.HashBuckets) {
		out = append(out, chstore.BucketCount{Type: typ, Bucket: b, Rows: rows})
	}
	return out
}

// sparse gives typ rows only in the listed buckets (as BucketCounts does:
// empty buckets are absent).
func sparse(typ string, rowsByBucket map[uint64]uint64) []chstore.BucketCount {
	var out []chstore.BucketCount
	for b := range uint64(chstore.HashBuckets) {
		if r, ok := rowsByBucket[b]; ok {
			out = append(out, chstore.BucketCount{Type: typ, Bucket: b, Rows: r})
		}
	}
	return out
}

func concat(parts ...[]chstore.BucketCount) []chstore.BucketCount {
	var out []chstore.BucketCount
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// checkPlan asserts every property a plan must have, whatever the counts.
func checkPlan(t testing.TB, job streams.Job, until time.Time, counts []chstore.BucketCount, cfg planner.Config, tasks []streams.Task) {
	t.Helper()
	rowsOf := map[string]map[uint64]uint64{} // type -> bucket -> rows
	var typeOrder []string
	for _, c := range counts {
		if rowsOf[c.Type] == nil {
			rowsOf[c.Type] = map[uint64]uint64{}
			typeOrder = append(typeOrder, c.Type)
		}
		rowsOf[c.Type][c.Bucket] += c.Rows
	}
	// Task ids unique and ordered; job fields and limits copied.
	for i, task := range tasks {
		if i > 0 && task.TaskID <= tasks[i-1].TaskID {
			t.Fatalf("task %d id %q not after %q", i, task.TaskID, tasks[i-1].TaskID)
		}
		if task.JobID != job.JobID || !task.Since.Equal(job.Since) || !task.Until.Equal(until) ||
			task.MaxFileResources != cfg.MaxFileResources || task.MaxFileBytes != cfg.MaxFileBytes {
			t.Fatalf("task %s = %+v: job, since, until or file limits not copied (job %s since %s until %s, limits %d/%d)",
				task.TaskID, task, job.JobID, job.Since, until, cfg.MaxFileResources, cfg.MaxFileBytes)
		}
		if task.BaseURL != job.BaseURL || task.AttachmentBase != streams.AttachmentBase(job.BaseURL, job.JobID) {
			t.Fatalf("task %s: base %q, attachment base %q; want the job's %q and its attachment base", task.TaskID, task.BaseURL, task.AttachmentBase, job.BaseURL)
		}
		if task.HashLo >= task.HashHi || task.HashHi > chstore.HashSpace {
			t.Fatalf("task %s has empty or out-of-space range [%d, %d)", task.TaskID, task.HashLo, task.HashHi)
		}
		if task.HashLo%bucketWidth != 0 || (task.HashHi%bucketWidth != 0) {
			t.Fatalf("task %s range [%d, %d) does not fall on bucket bounds", task.TaskID, task.HashLo, task.HashHi)
		}
	}
	// Each type of a packed task is checked as a task of its own, placed
	// among its type's tasks.
	tasks = unpack(tasks, typeOrder)
	// Tasks are grouped by type, in the order of the counts; no other type.
	var seenTypes []string
	for _, task := range tasks {
		if len(seenTypes) == 0 || seenTypes[len(seenTypes)-1] != task.Type {
			if slices.Contains(seenTypes, task.Type) {
				t.Fatalf("tasks of %s are not contiguous: types mixed", task.Type)
			}
			seenTypes = append(seenTypes, task.Type)
		}
	}
	if !slices.Equal(seenTypes, typeOrder) {
		t.Fatalf("planned types %v, counted types %v", seenTypes, typeOrder)
	}
	for _, typ := range typeOrder {
		var mine []streams.Task
		for _, task := range tasks {
			if task.Type == typ {
				mine = append(mine, task)
			}
		}
		// Contiguous cover of [0, HashSpace): no gap, no overlap.
		next := uint64(0)
		var planned uint64
		for i, task := range mine {
			if task.HashLo != next {
				t.Fatalf("%s task %s starts at %d, want %d (gap or overlap)", typ, task.TaskID, task.HashLo, next)
			}
			next = task.HashHi
			var rows, biggest uint64
			shards := max(cfg.Shards, 1)
			shardsRead := map[int]bool{}
			for b := task.HashLo / bucketWidth; b < task.HashHi/bucketWidth; b++ {
				r := rowsOf[typ][b]
				rows += r
				biggest = max(biggest, r)
				if r > 0 {
					shardsRead[chstore.ShardOfBucket(b, shards)] = true
				}
			}
			planned += rows
			if rows > uint64(cfg.TaskRows)+biggest {
				t.Errorf("%s task %s holds %d rows: more than TaskRows %d plus one bucket (%d)", typ, task.TaskID, rows, cfg.TaskRows, biggest)
			}
			if len(shardsRead) > 1 {
				t.Errorf("%s task %s [%d, %d) holds rows of %d shards, want one", typ, task.TaskID, task.HashLo, task.HashHi, len(shardsRead))
			}
			atShardEnd := task.HashHi == chstore.ShardStart(chstore.ShardOfBucket(task.HashHi/bucketWidth, shards), shards)
			if i < len(mine)-1 && rows < uint64(cfg.TaskRows) && !atShardEnd {
				t.Errorf("%s task %s holds %d rows, fewer than TaskRows %d, yet is neither the type's last task nor ends a shard", typ, task.TaskID, rows, cfg.TaskRows)
			}
		}
		if next != chstore.HashSpace {
			t.Fatalf("%s tasks end at %d, not at the end of the hash space %d", typ, next, chstore.HashSpace)
		}
		var total uint64
		for _, r := range rowsOf[typ] {
			total += r
		}
		if planned != total {
			t.Errorf("%s tasks cover %d rows, counted %d", typ, planned, total)
		}
	}
}

// unpack makes each type of a packed task a task of its own, with the
// packed task's id and range, ordered by type as typeOrder says and then
// by range; a plan without packed tasks is returned as it is.
func unpack(tasks []streams.Task, typeOrder []string) []streams.Task {
	if !slices.ContainsFunc(tasks, func(t streams.Task) bool { return len(t.Types) > 0 }) {
		return tasks
	}
	var out []streams.Task
	for _, task := range tasks {
		for _, typ := range task.ExportedTypes() {
			one := task
			one.Type, one.Types = typ, nil
			out = append(out, one)
		}
	}
	slices.SortStableFunc(out, func(a, b streams.Task) int {
		return cmp.Or(cmp.Compare(slices.Index(typeOrder, a.Type), slices.Index(typeOrder, b.Type)), cmp.Compare(a.HashLo, b.HashLo))
	})
	return out
}

func TestPlannerSplit(t *testing.T) {
	cfg := planner.DefaultConfig()
	cfg.TaskRows, cfg.MaxFileResources, cfg.MaxFileBytes = 1000, 123, 4567
	until := time.Date(2025, 3, 4, 5, 6, 7, 890000000, time.UTC)
	since := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		since  time.Time
		counts []chstore.BucketCount
		rows   int // TaskRows override when non-zero
		// tasks per type; nil leaves the number to checkPlan's bounds.
		want map[string]int
	}{
		{name: "nothing to export", counts: nil, want: map[string]int{}},
		{name: "few rows are one task", counts: sparse("Patient", map[uint64]uint64{3: 5, 700: 9}), want: map[string]int{"Patient": 1}},
		{name: "one row in the last bucket", counts: sparse("Device", map[uint64]uint64{1023: 1}), want: map[string]int{"Device": 1}},
		{name: "uniform rows split evenly", counts: uniform("Observation", 10), want: map[string]int{"Observation": 11}},
		// The cut lands on the last bucket with rows; how the empty rest of
		// the space is planned is not prescribed, only that it is covered.
		{name: "exactly TaskRows in one bucket", counts: sparse("Patient", map[uint64]uint64{10: 1000})},
		{name: "a huge bucket ends its task", counts: sparse("Observation", map[uint64]uint64{0: 10, 500: 50_000, 501: 10, 900: 500}), want: map[string]int{"Observation": 2}},
		{name: "a huge last bucket joins the last task", counts: sparse("Observation", map[uint64]uint64{5: 500, 1023: 50_000}), want: map[string]int{"Observation": 1}},
		{name: "every bucket over TaskRows", counts: uniform("Observation", 2000), want: map[string]int{"Observation": 1024}},
		{name: "TaskRows one", rows: 1, counts: sparse("Patient", map[uint64]uint64{1: 1, 2: 1, 400: 3, 1023: 1}), want: map[string]int{"Patient": 4}},
		{
			name:  "several types are never mixed",
			since: since,
			counts: concat(
				sparse("Condition", map[uint64]uint64{7: 3}),
				uniform("Observation", 5),
				sparse("Patient", map[uint64]uint64{0: 400, 100: 400, 200: 400, 1000: 1}),
			),
			want: map[string]int{"Condition": 1, "Observation": 6, "Patient": 2},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := cfg
			if c.rows != 0 {
				cfg.TaskRows = c.rows
			}
			job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "job1", Since: c.since, BaseURL: "https://fhir.example/r4"}}
			tasks := planner.Split(job, until, c.counts, cfg)
			checkPlan(t, job, until, c.counts, cfg, tasks)
			if c.want == nil {
				return
			}
			got := map[string]int{}
			for _, task := range tasks {
				got[task.Type]++
			}
			if len(got) != len(c.want) {
				t.Errorf("tasks per type %v, want %v", got, c.want)
			}
			for typ, n := range c.want {
				if got[typ] != n {
					t.Errorf("tasks per type %v, want %v", got, c.want)
					break
				}
			}
		})
	}
}

func TestPlannerSplitRandomCounts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	types := []string{"AllergyIntolerance", "Condition", "Encounter", "Observation", "Patient"}
	until := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 300 {
		var counts []chstore.BucketCount
		for _, typ := range types {
			if r.IntN(4) == 0 {
				continue // type without rows
			}
			density := r.IntN(100) // percent of buckets with rows
			for b := range uint64(chstore.HashBuckets) {
				if r.IntN(100) < density {
					rows := uint64(r.IntN(50) + 1)
					if r.IntN(200) == 0 {
						rows = uint64(r.IntN(100_000)) + 1 // a hot bucket
					}
					counts = append(counts, chstore.BucketCount{Type: typ, Bucket: b, Rows: rows})
				}
			}
		}
		cfg := planner.DefaultConfig()
		cfg.TaskRows = r.IntN(20_000) + 1
		cfg.Shards = r.IntN(4) + 1
		job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "j"}}
		tasks := planner.Split(job, until, counts, cfg)
		checkPlan(t, job, until, counts, cfg, tasks)
		checkPlan(t, job, until, counts, cfg, planner.Pack(tasks, cfg.TaskRows))
		if t.Failed() {
			t.Fatalf("case %d (TaskRows %d, %d shards) failed", i, cfg.TaskRows, cfg.Shards)
		}
	}
}

func TestPlannerSplitTasksCarryTheAttachmentBase(t *testing.T) {
	job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "j1", BaseURL: "https://fhir.example/r4"}}
	tasks := planner.Split(job, time.Now(), uniform("Patient", 10), planner.DefaultConfig())
	if len(tasks) == 0 {
		t.Fatal("no tasks")
	}
	for _, task := range tasks {
		if task.AttachmentBase != "https://fhir.example/r4/files/j1/attachments/" || task.BaseURL != job.BaseURL {
			t.Errorf("task %s: attachment base %q, base %q", task.TaskID, task.AttachmentBase, task.BaseURL)
		}
	}
	// A job recorded without a base (before the API recorded one) gets no
	// attachment base: its writers rewrite nothing.
	job.BaseURL = ""
	if tasks := planner.Split(job, time.Now(), uniform("Patient", 10), planner.DefaultConfig()); tasks[0].AttachmentBase != "" {
		t.Errorf("attachment base %q without a job base", tasks[0].AttachmentBase)
	}
}

// TestPlannerBinaryTasksSayWhatTheyEmit: Binary tasks export only
// patients' Binaries, as DocumentReferences, when the export wants
// DocumentReferences but not Binary, or at Patient and Group level; at
// system level with Binary among the types they export every Binary.
func TestPlannerBinaryTasksSayWhatTheyEmit(t *testing.T) {
	counts := concat(uniform("Binary", 1), uniform("DocumentReference", 1))
	cases := []struct {
		name    string
		job     streams.Job
		planned bool
		emitAs  string
	}{
		{"system, every type", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelSystem}}, true, ""},
		{"system, _type=Binary", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelSystem, Types: []string{"Binary"}}}, true, ""},
		{"system, _type=Binary,DocumentReference", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelSystem, Types: []string{"Binary", "DocumentReference"}}}, true, ""},
		{"system, _type=DocumentReference", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelSystem, Types: []string{"DocumentReference"}}}, true, "DocumentReference"},
		{"system, _type=Observation", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelSystem, Types: []string{"Observation"}}}, false, ""},
		{"patient, every type", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelPatient}}, true, "DocumentReference"},
		{"patient, _type=Binary", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelPatient, Types: []string{"Binary"}}}, true, "DocumentReference"},
		{"group, _type=DocumentReference", streams.Job{ExportRequest: streams.ExportRequest{Level: streams.LevelGroup, GroupID: "g", Types: []string{"DocumentReference"}}}, true, "DocumentReference"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.job.JobID = "j"
			var binary []streams.Task
			for _, task := range planner.Split(c.job, time.Unix(10, 0), counts, planner.DefaultConfig()) {
				if task.Type == "Binary" {
					binary = append(binary, task)
				} else if task.EmitAs != "" {
					t.Errorf("%s task with EmitAs %q", task.Type, task.EmitAs)
				}
			}
			if (len(binary) > 0) != c.planned {
				t.Fatalf("%d Binary tasks, want planned %v", len(binary), c.planned)
			}
			for _, task := range binary {
				if task.EmitAs != c.emitAs {
					t.Errorf("Binary task emits %q, want %q", task.EmitAs, c.emitAs)
				}
			}
		})
	}
}

// typeRange is one type over one hash range: what a plan must cover.
type typeRange struct {
	typ    string
	lo, hi uint64
}

func covered(tasks []streams.Task) []typeRange {
	var out []typeRange
	for _, task := range tasks {
		for _, typ := range task.ExportedTypes() {
			out = append(out, typeRange{typ, task.HashLo, task.HashHi})
		}
	}
	slices.SortFunc(out, func(a, b typeRange) int {
		if a.typ != b.typ {
			return strings.Compare(a.typ, b.typ)
		}
		return cmp.Compare(a.lo, b.lo)
	})
	return out
}

// TestPlannerPacksSmallTypes: small types over the same hash range share a
// task of at most TaskRows rows; large types, Binary and associated tasks
// stay alone; what the plan covers is unchanged, and task ids run in order.
func TestPlannerPacksSmallTypes(t *testing.T) {
	cfg := planner.DefaultConfig()
	cfg.TaskRows, cfg.Shards = 1000, 1
	counts := concat(
		sparse("Binary", map[uint64]uint64{3: 5}),
		sparse("Condition", map[uint64]uint64{1: 300, 9: 100}),
		sparse("Encounter", map[uint64]uint64{2: 400}),
		uniform("Observation", 10), // 10,240 rows: tasks of their own
		sparse("Patient", map[uint64]uint64{4: 250}),
		sparse("Procedure", map[uint64]uint64{5: 20}),
		sparse("Provenance", map[uint64]uint64{6: 30}),
	)
	job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "j", Level: streams.LevelSystem, IncludeAssociatedData: streams.AssociatedLatestProvenance}}
	split := planner.Split(job, time.Unix(10, 0), counts, cfg)
	tasks := planner.Pack(split, cfg.TaskRows)
	if !slices.Equal(covered(tasks), covered(split)) {
		t.Fatalf("packing changed what the plan covers:\n%v\n%v", covered(tasks), covered(split))
	}
	var packs [][]string
	for i, task := range tasks {
		if want := fmt.Sprintf("%05d", i); task.TaskID != want {
			t.Errorf("task %d has id %s, want %s", i, task.TaskID, want)
		}
		if task.Rows > uint64(cfg.TaskRows) && len(task.Types) > 0 {
			t.Errorf("task %s packs %v with %d rows, more than %d", task.TaskID, task.Types, task.Rows, cfg.TaskRows)
		}
		if len(task.Types) > 0 {
			if task.Type != "" || task.HashLo != 0 || task.HashHi != chstore.HashSpace {
				t.Errorf("packed task %s: type %q, range [%d, %d)", task.TaskID, task.Type, task.HashLo, task.HashHi)
			}
			packs = append(packs, task.Types)
		}
	}
	// Condition (400) and Encounter (400) fill a pack: Patient (250) would
	// pass 1,000 and starts the next, with Procedure. Provenance is only
	// exported as associated data here: its task stays alone.
	want := [][]string{{"Condition", "Encounter"}, {"Patient", "Procedure"}}
	if !slices.EqualFunc(packs, want, slices.Equal) {
		t.Errorf("packs %v, want %v", packs, want)
	}
	for _, task := range tasks {
		if (task.Type == "Binary" || task.Associated != "" || task.Type == "Observation") && len(task.Types) > 0 {
			t.Errorf("task %s of %s packed", task.TaskID, task.TypeLabel())
		}
	}
	// With two shards every small type has a task per shard: packs form
	// per shard, never across.
	cfg.Shards = 2
	split = planner.Split(job, time.Unix(10, 0), counts, cfg)
	tasks = planner.Pack(split, cfg.TaskRows)
	if !slices.Equal(covered(tasks), covered(split)) {
		t.Fatal("packing changed what a two-shard plan covers")
	}
	for _, task := range tasks {
		if len(task.Types) > 0 && task.HashLo != 0 && task.HashLo != chstore.ShardStart(1, 2) {
			t.Errorf("packed task %s spans [%d, %d), not a shard", task.TaskID, task.HashLo, task.HashHi)
		}
	}
	if len(tasks) >= len(split) {
		t.Errorf("two shards: %d tasks packed from %d", len(tasks), len(split))
	}
}
