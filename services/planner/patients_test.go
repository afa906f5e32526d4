package planner_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestPlannerResolvesTheExportsPatientsOnce: the planner decides whose
// data a Group or Patient export holds, as of transactionTime, and lists
// it once for the tasks: the Group's patient members as the Group stood
// then (a later version does not count), narrowed to the patient
// parameter. A Group that did not exist then fails the export with a
// message naming it; a Group without patient members plans no task.
func TestPlannerResolvesTheExportsPatientsOnce(t *testing.T) {
	e := newEnv(t)
	runPlanner(t, e, testConfig())
	ctx := t.Context()
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var seq uint64
	insert(t, e, "Observation", "o", 300, base, &seq)
	group := func(id string, stamp time.Time, members ...string) {
		var entries []string
		for _, m := range members {
			entries = append(entries, `{"entity":{"reference":"`+m+`"}}`)
		}
		seq++
		row := chstore.Row{Type: "Group", ID: id, Seq: seq, LastUpdated: chstore.Micros(stamp),
			Body: []byte(`{"resourceType":"Group","id":"` + id + `","type":"person","actual":true,"member":[` + strings.Join(entries, ",") + `]}`)}
		if err := e.store.Insert(ctx, []chstore.Row{row}); err != nil {
			t.Fatal(err)
		}
	}
	group("g", base, "Patient/p2", "Patient/p0", "Practitioner/x", "Patient/p1")
	group("g", base.Add(2*time.Hour), "Patient/p0", "Patient/p1", "Patient/p2", "Patient/p3") // after transactionTime
	group("none", base, "Practitioner/x")
	group("later", base.Add(2*time.Hour), "Patient/p0")
	setWatermark(t, e, streams.Watermark{Stamp: base.Add(time.Hour)})

	submit := func(id, level, groupID string, patients ...string) {
		job := newJob(id, 0)
		job.Level, job.GroupID, job.Patients = level, groupID, patients
		if err := e.Jobs.Create(ctx, job); err != nil {
			t.Fatal(err)
		}
		publish(t, e, streams.SubjectJobSubmit(id), nil)
		testenv.Eventually(t, 30*time.Second, "job "+id+" planned or failed", func() bool {
			j := getJob(t, e, id)
			return j.Status == streams.JobFailed || j.TasksPublished
		})
	}
	cases := []struct {
		id, level, group string
		patients         []string
		want             []string
	}{
		{"group", streams.LevelGroup, "g", nil, []string{"p0", "p1", "p2"}},
		{"groupnarrowed", streams.LevelGroup, "g", []string{"p2", "p0"}, []string{"p0", "p2"}},
		{"patients", streams.LevelPatient, "", []string{"p7", "p5"}, []string{"p5", "p7"}},
	}
	for _, c := range cases {
		submit(c.id, c.level, c.group, c.patients...)
		tasks := queuedTasks(t, e, c.id)
		if len(tasks) == 0 || slices.ContainsFunc(tasks, func(task streams.Task) bool { return !task.PatientList }) {
			t.Errorf("%s: tasks %+v, want every one to read the patient list", c.id, tasks)
		}
		got, err := streams.LoadPatients(ctx, e.Files, c.id)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: patients %q, %v; want %q", c.id, got, err, c.want)
		}
	}

	submit("all", streams.LevelPatient, "")
	if tasks := queuedTasks(t, e, "all"); len(tasks) == 0 || tasks[0].PatientList {
		t.Errorf("a Patient export without the patient parameter: tasks %+v, want them for any patient", tasks)
	}
	if _, err := streams.LoadPatients(ctx, e.Files, "all"); err == nil {
		t.Error("a patient list stored for an export of every patient")
	}

	submit("empty", streams.LevelGroup, "none")
	if j := getJob(t, e, "empty"); j.Status == streams.JobFailed || j.TasksTotal != 0 {
		t.Errorf("a Group without patient members: status %s, %d tasks; want no task", j.Status, j.TasksTotal)
	}
	submit("missing", streams.LevelGroup, "later")
	if j := getJob(t, e, "missing"); j.Status != streams.JobFailed || !strings.Contains(j.Error, "Group/later did not exist at the export's transactionTime") {
		t.Errorf("a Group created after transactionTime: status %s, error %q", j.Status, j.Error)
	}
}
