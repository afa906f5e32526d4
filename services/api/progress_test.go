package api

import (
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/streams"
)

func TestAPIRetryAfterFollowsTheEstimatedRemainingTime(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	job := func(done, total int) streams.Job {
		return streams.Job{ExportRequest: streams.ExportRequest{SubmittedAt: t0}, Status: streams.JobRunning, TasksDone: done, TasksTotal: total}
	}
	cases := []struct {
		name    string
		job     streams.Job
		elapsed time.Duration
		hold    time.Duration
		want    int
	}{
		{"just kicked off: 1 s", job(0, 0), 50 * time.Millisecond, 0, 1},
		{"nothing done yet: as long again as so far", job(0, 10), 3 * time.Second, 0, 3},
		{"half done after 2 s: 2 s more", job(5, 10), 2 * time.Second, 0, 2},
		{"a tenth done after 1 s: 9 s more, capped at the longest", job(1, 10), time.Second, 0, 5},
		{"almost done: never below 1 s", job(99, 100), 10 * time.Second, 0, 1},
		{"a clock behind the kick-off: 1 s", job(0, 4), -time.Minute, 0, 1},
		{"rounded up without a hold, so the client comes back after it is due", job(2, 3), 3 * time.Second, 0, 2},
		// With a hold the next poll comes a hold early and is held until
		// the export completes.
		{"a fifth done after 2 s, 8 s more: a 1 s hold early", job(5, 25), 2 * time.Second, time.Second, 5},
		{"3 s more: a 1 s hold early", job(10, 20), 3 * time.Second, time.Second, 2},
		{"1.5 s more: a 1 s hold early, never below 1 s", job(20, 25), 6 * time.Second, time.Second, 1},
		{"0.9 s more: within the hold, 1 s", job(9, 10), 8100 * time.Millisecond, time.Second, 1},
	}
	for _, c := range cases {
		if got := retryAfterSeconds(c.job, t0.Add(c.elapsed), 5*time.Second, c.hold); got != c.want {
			t.Errorf("%s: Retry-After %d, want %d", c.name, got, c.want)
		}
	}
}

func TestAPIProgressText(t *testing.T) {
	for _, c := range []struct {
		job  streams.Job
		want string
	}{
		{streams.Job{Status: streams.JobAccepted}, "0% complete (planning)"},
		{streams.Job{Status: streams.JobRunning, TasksDone: 3, TasksTotal: 12}, "25% complete (3 of 12 tasks)"},
	} {
		if got := progressText(c.job); got != c.want {
			t.Errorf("X-Progress %q, want %q", got, c.want)
		}
	}
}
