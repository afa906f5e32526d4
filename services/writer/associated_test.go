package writer_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestWriterAssociatedProvenance: an includeAssociatedData task exports the
// Provenances whose targets the export's output holds (type, _since,
// compartments, _typeFilter), all of them or each target's most recent,
// however the Provenances are spread over hash ranges.
func TestWriterAssociatedProvenance(t *testing.T) {
	e := newEnv(t)
	var rows []chstore.Row
	seq := uint64(0)
	add := func(typ, id string, stamp uint64, patients []string, body string) {
		seq++
		rows = append(rows, chstore.Row{Type: typ, ID: id, Seq: seq, LastUpdated: stamp, Patients: patients, Body: []byte(body)})
	}
	add("Patient", "p1", 10, []string{"p1"}, `{"resourceType":"Patient","id":"p1"}`)
	add("Patient", "p2", 10, []string{"p2"}, `{"resourceType":"Patient","id":"p2"}`)
	add("Patient", "p3", 500, []string{"p3"}, `{"resourceType":"Patient","id":"p3"}`)
	add("Observation", "o1", 10, []string{"p1"}, `{"resourceType":"Observation","id":"o1","status":"final"}`)
	add("Observation", "o2", 10, []string{"p2"}, `{"resourceType":"Observation","id":"o2","status":"preliminary"}`)
	add("Organization", "org", 10, nil, `{"resourceType":"Organization","id":"org"}`)
	add("Observation", "gone", 10, []string{"p1"}, `{"resourceType":"Observation","id":"gone","status":"final"}`)
	seq++
	rows = append(rows, chstore.Row{Type: "Observation", ID: "gone", Seq: seq, LastUpdated: 15, Deleted: true})
	prov := func(id string, stamp uint64, recorded string, targets ...string) {
		var refs []string
		for _, t := range targets {
			refs = append(refs, fmt.Sprintf(`{"reference":%q}`, t))
		}
		add("Provenance", id, stamp, nil, fmt.Sprintf(`{"resourceType":"Provenance","id":%q,"target":[%s],"recorded":%q,"agent":[{"who":{"reference":"Patient/p2"}}],"location":{"reference":"Location/l"}}`,
			id, strings.Join(refs, ","), recorded))
	}
	prov("a-p1-old", 20, "2020-01-01T00:00:00Z", "Patient/p1")
	prov("a-p1-new", 20, "2021-01-01T00:00:00+01:00", "https://fhir.example/Patient/p1/_history/1")
	prov("a-o1", 20, "2020-01-01T00:00:00Z", "Observation/o1")
	prov("a-multi", 20, "2022-01-01T00:00:00Z", "Patient/p2", "Observation/o1")
	prov("a-p2", 20, "2021-06-01T00:00:00Z", "Patient/p2")
	prov("a-org", 20, "2020-01-01T00:00:00Z", "Organization/org")
	prov("a-tie1", 20, "2021-01-01T00:00:00Z", "Patient/p3")
	prov("a-tie2", 20, "2021-01-01T00:00:00Z", "Patient/p3") // same recorded, stored later: wins
	prov("a-gone", 20, "2020-01-01T00:00:00Z", "Observation/gone")
	prov("a-since", 600, "2019-01-01T00:00:00Z", "Patient/p3")
	prov("a-late", 2000, "2030-01-01T00:00:00Z", "Patient/p1") // after the export's time
	if err := e.store.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	until := time.UnixMicro(1000).UTC()
	runWriters(t, e, 2)

	cases := []struct {
		name       string
		level      string
		patients   []string
		mode       string
		types      []string
		typeFilter []string
		elements   []string
		since      time.Time
		want       string
	}{
		{"relevant Patients", streams.LevelSystem, nil, streams.AssociatedRelevantProvenance, []string{"Patient"}, nil, nil, time.Time{},
			"a-multi a-p1-new a-p1-old a-p2 a-since a-tie1 a-tie2"},
		{"latest Patients", streams.LevelSystem, nil, streams.AssociatedLatestProvenance, []string{"Patient"}, nil, nil, time.Time{},
			"a-multi a-p1-new a-tie2"},
		{"relevant every type", streams.LevelSystem, nil, streams.AssociatedRelevantProvenance, nil, nil, nil, time.Time{},
			"a-multi a-o1 a-org a-p1-new a-p1-old a-p2 a-since a-tie1 a-tie2"},
		{"latest every type", streams.LevelSystem, nil, streams.AssociatedLatestProvenance, nil, nil, nil, time.Time{},
			"a-multi a-org a-p1-new a-tie2"},
		{"relevant filtered Observations", streams.LevelSystem, nil, streams.AssociatedRelevantProvenance, []string{"Observation"},
			[]string{"Observation?status=final"}, nil, time.Time{}, "a-multi a-o1"},
		{"relevant none filtered", streams.LevelSystem, nil, streams.AssociatedRelevantProvenance, []string{"Observation"},
			[]string{"Observation?status=cancelled"}, nil, time.Time{}, ""},
		{"relevant patient p1", streams.LevelPatient, []string{"p1"}, streams.AssociatedRelevantProvenance, []string{"Patient", "Observation"}, nil, nil, time.Time{},
			"a-multi a-o1 a-p1-new a-p1-old"},
		{"latest patient p1", streams.LevelPatient, []string{"p1"}, streams.AssociatedLatestProvenance, []string{"Patient", "Observation"}, nil, nil, time.Time{},
			"a-multi a-p1-new"},
		{"relevant since", streams.LevelSystem, nil, streams.AssociatedRelevantProvenance, []string{"Patient"}, nil, nil, time.UnixMicro(400),
			"a-since"},
		{"latest since", streams.LevelSystem, nil, streams.AssociatedLatestProvenance, []string{"Patient"}, nil, nil, time.UnixMicro(400),
			""}, // p3 changed, but its latest Provenance (a-tie2) did not
		{"relevant elements", streams.LevelSystem, nil, streams.AssociatedRelevantProvenance, []string{"Patient"}, nil, []string{"Patient.id"}, time.UnixMicro(400),
			"a-since"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			job := fmt.Sprintf("assoc%d", i)
			createJob(t, e, job, streams.JobRunning, until)
			tasks := thirds(job, "Provenance", c.since, until, 100, 1<<20)
			for i := range tasks {
				tasks[i].Level, tasks[i].PatientList, tasks[i].Associated = c.level, listPatients(t, e, job, c.patients), c.mode
				tasks[i].ExportTypes, tasks[i].TypeFilter, tasks[i].Elements = c.types, c.typeFilter, c.elements
			}
			publishTasks(t, e, tasks)
			testenv.Eventually(t, 30*time.Second, "associated task results", func() bool {
				for _, task := range tasks {
					if _, ok := result(t, e, job, task.TaskID); !ok {
						return false
					}
				}
				return true
			})
			var ids []string
			for _, f := range readResults(t, e, tasks) {
				if f.file.Type != "Provenance" || strings.HasPrefix(f.file.Name, "deleted-") {
					t.Errorf("file %s of type %s", f.file.Name, f.file.Type)
				}
				for _, l := range f.lines {
					var r struct {
						ID       string
						Target   []any
						Agent    []any
						Location any
						Meta     struct{ Tag []struct{ Code string } }
					}
					if err := json.Unmarshal(l, &r); err != nil {
						t.Fatal(err)
					}
					ids = append(ids, r.ID)
					if c.elements != nil && (len(r.Meta.Tag) != 1 || r.Meta.Tag[0].Code != "SUBSETTED" || r.Target == nil || r.Agent == nil || r.Location != nil) {
						t.Errorf("with _elements, %s is not trimmed to its mandatory elements and tagged SUBSETTED: %s", r.ID, l)
					}
				}
			}
			slices.Sort(ids)
			if got := strings.Join(ids, " "); got != c.want {
				t.Errorf("Provenances %q, want %q", got, c.want)
			}
		})
	}
}
