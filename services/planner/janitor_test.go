package planner_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestPlannerJanitorRemovesExpiredExportsButNotOneBeingDownloaded: an
// export past its Expires goes, files and all; one whose files are being
// downloaded stays until the download ends; a fresh one stays.
func TestPlannerJanitorRemovesExpiredExportsButNotOneBeingDownloaded(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	now := time.Now().UTC()
	jobs := map[string]time.Time{"expired": now.Add(-time.Minute), "downloading": now.Add(-time.Minute), "fresh": now.Add(time.Hour)}
	for id, expires := range jobs {
		j := newJob(id, 0)
		j.Status, j.ExpiresAt = streams.JobComplete, expires
		if err := e.Jobs.Create(ctx, j); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Files.PutString(ctx, streams.ObjectName(id, "Patient-1.ndjson"), "{}\n"); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Jobs.RenewDownload(ctx, "downloading", now); err != nil {
		t.Fatal(err)
	}
	// The API's duplicate-export slots: one for a job that is gone, one for
	// a job that stays.
	for request, job := range map[string]string{"gone": "never-existed", "kept": "fresh"} {
		if _, ok, err := e.Jobs.ClaimSlot(ctx, "", request, job); err != nil || !ok {
			t.Fatalf("claim slot %s: %v", request, err)
		}
	}
	cfg := testConfig()
	cfg.SweepEvery = 50 * time.Millisecond
	runPlanner(t, e, cfg)

	gone := func(id string) bool {
		_, _, err := e.Jobs.Get(ctx, id)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	}
	testenv.Eventually(t, 20*time.Second, "expired export removed", func() bool { return gone("expired") })
	if _, err := e.Files.GetInfo(ctx, streams.ObjectName("expired", "Patient-1.ndjson")); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("file of the expired export still there: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, "slot of a gone job purged", func() bool {
		_, held, err := e.Jobs.SlotHolder(ctx, "", "gone")
		return err == nil && !held
	})
	if job, held, err := e.Jobs.SlotHolder(ctx, "", "kept"); err != nil || !held || job != "fresh" {
		t.Errorf("slot of a live job: %q %v %v", job, held, err)
	}
	// Several sweeps later the others are still there.
	awaitSweeps(t, e, 3)
	for _, id := range []string{"downloading", "fresh"} {
		if gone(id) {
			t.Errorf("export %s was removed", id)
		}
		if _, err := e.Files.GetInfo(ctx, streams.ObjectName(id, "Patient-1.ndjson")); err != nil {
			t.Errorf("file of export %s: %v", id, err)
		}
	}
}

// TestPlannerJanitorRemovesWhatARemovedExportLeftBehind: files, task
// results and download leases of an export whose record is gone (a writer
// killed after storing them for an export cancelled meanwhile) are
// removed; those of an export that exists are not.
func TestPlannerJanitorRemovesWhatARemovedExportLeftBehind(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	if err := e.Jobs.Create(ctx, newJob("live", 0)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"live", "removed"} {
		if _, err := e.Files.PutString(ctx, streams.ObjectName(id, "Patient-00000-a1-1-001.ndjson"), "{}\n"); err != nil {
			t.Fatal(err)
		}
		if err := e.Jobs.RecordTaskResult(ctx, streams.TaskResult{JobID: id, TaskID: "00000", Attempt: 1, Token: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	// A lease alone names a job too.
	if err := e.Jobs.RenewDownload(ctx, "leased", time.Now()); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.SweepEvery = 50 * time.Millisecond
	runPlanner(t, e, cfg)

	testenv.Eventually(t, 20*time.Second, "the removed export's file deleted", func() bool {
		_, err := e.Files.GetInfo(ctx, streams.ObjectName("removed", "Patient-00000-a1-1-001.ndjson"))
		return errors.Is(err, jetstream.ErrObjectNotFound)
	})
	testenv.Eventually(t, 10*time.Second, "the removed export's records deleted", func() bool {
		jobs, err := e.Jobs.RecordedJobs(ctx)
		return err == nil && len(jobs) == 1 && jobs[0] == "live"
	})
	// Sweeps later, the live export keeps its file and result.
	awaitSweeps(t, e, 2)
	if _, err := e.Files.GetInfo(ctx, streams.ObjectName("live", "Patient-00000-a1-1-001.ndjson")); err != nil {
		t.Errorf("file of the live export: %v", err)
	}
	if _, ok, err := e.Jobs.TaskResult(ctx, "live", "00000"); err != nil || !ok {
		t.Errorf("task result of the live export: %v %v", ok, err)
	}
}

// TestPlannerJanitorTrimsTheChangeLog: with a change log retention, the
// janitor drops the months older than it from the change log; _since
// reads from before then still see every change.
func TestPlannerJanitorTrimsTheChangeLog(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	old := time.Date(2020, time.January, 10, 12, 0, 0, 0, time.UTC)
	recent := time.Now().Add(-time.Hour)
	rows := []chstore.Row{
		{Type: "Patient", ID: "old", Seq: 1, LastUpdated: chstore.Micros(old), Body: []byte("old")},
		{Type: "Patient", ID: "recent", Seq: 2, LastUpdated: chstore.Micros(recent), Body: []byte("recent")},
	}
	if err := e.store.Insert(ctx, rows); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.SweepEvery, cfg.ChangeLogRetention, cfg.TrimEvery, cfg.TrimGrace = 50*time.Millisecond, 30*24*time.Hour, time.Hour, 0
	runPlanner(t, e, cfg)
	testenv.Eventually(t, 20*time.Second, "old month dropped from the change log", func() bool {
		var n uint64
		err := e.store.Conn().QueryRow(ctx, "SELECT count() FROM "+strings.TrimSuffix(e.store.TableName(), chstore.Table)+chstore.ChangesTable).Scan(&n)
		return err == nil && n == 1
	})
	got := map[string]bool{}
	r := chstore.Range{Type: "Patient", HashHi: chstore.HashSpace, Since: chstore.Micros(old) - 1, Until: chstore.Micros(time.Now())}
	if err := e.store.ReadLatest(ctx, r, func(id string, _ []byte) error { got[id] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if !got["old"] || !got["recent"] {
		t.Errorf("a _since read from before the trimmed month returned %v, want old and recent", got)
	}
}

// awaitSweeps waits for n janitor sweeps. A sweep purges the slot of a job
// that does not exist: each such slot gone is one more sweep, and the
// sweep after it went over every job.
func awaitSweeps(t *testing.T, e env, n int) {
	t.Helper()
	for i := range n {
		request := fmt.Sprintf("probe-%d", i)
		if _, ok, err := e.Jobs.ClaimSlot(t.Context(), "", request, "never-existed"); err != nil || !ok {
			t.Fatalf("claim probe slot: %v", err)
		}
		testenv.Eventually(t, 10*time.Second, "a sweep", func() bool {
			_, held, err := e.Jobs.SlotHolder(t.Context(), "", request)
			return err == nil && !held
		})
	}
}
