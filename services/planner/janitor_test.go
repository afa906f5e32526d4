package planner_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
	if _, err := e.Jobs.KV.Put(ctx, streams.KeyDownload("downloading"), []byte(now.Format(time.RFC3339Nano))); err != nil {
		t.Fatal(err)
	}
	// The API's duplicate-export slots: one for a job that is gone, one for
	// a job that stays.
	for key, job := range map[string]string{"active.anonymous.gone": "never-existed", "active.anonymous.kept": "fresh"} {
		if _, err := e.Jobs.KV.Put(ctx, key, []byte(job)); err != nil {
			t.Fatal(err)
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
		_, err := e.Jobs.KV.Get(ctx, "active.anonymous.gone")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	if _, err := e.Jobs.KV.Get(ctx, "active.anonymous.kept"); err != nil {
		t.Errorf("slot of a live job: %v", err)
	}
	// Several sweeps later the others are still there.
	time.Sleep(300 * time.Millisecond)
	for _, id := range []string{"downloading", "fresh"} {
		if gone(id) {
			t.Errorf("export %s was removed", id)
		}
		if _, err := e.Files.GetInfo(ctx, streams.ObjectName(id, "Patient-1.ndjson")); err != nil {
			t.Errorf("file of export %s: %v", id, err)
		}
	}
}
