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
		want    int
	}{
		{"just kicked off: 1 s", job(0, 0), 50 * time.Millisecond, 1},
		{"nothing done yet: as long again as so far", job(0, 10), 3 * time.Second, 3},
		{"half done after 2 s: 2 s more", job(5, 10), 2 * time.Second, 2},
		{"a tenth done after 1 s: 9 s more, capped at the longest", job(1, 10), time.Second, 5},
		{"almost done: never below 1 s", job(99, 100), 10 * time.Second, 1},
		{"a clock behind the kick-off: 1 s", job(0, 4), -time.Minute, 1},
		{"rounded up, so the client comes back after it is due", job(2, 3), 3 * time.Second, 2},
	}
	for _, c := range cases {
		if got := retryAfterSeconds(c.job, t0.Add(c.elapsed), 5*time.Second); got != c.want {
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
