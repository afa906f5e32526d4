package flatfhir_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/bulkclient"
	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/shared/synth"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestE2EAStrictClientCompletesEveryLevel runs the engine as `make run`
// does (generated sample patients loaded at start, default tuning) and
// exports at system, Patient and Group level, GET and POST, with a client
// that parses every body strictly and waits as Retry-After says. Each
// export holds exactly what it should, and the client is never throttled.
func TestE2EAStrictClientCompletesEveryLevel(t *testing.T) {
	const patients = 40
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 2, Replicas: 1,
		SamplePatients: patients, PollRate: 2,
	}
	base, stop := runEngine(t, cfg, flatfhir.Tuning{})
	t.Cleanup(stop)

	// What the engine loaded: the generator's resources, by type.
	all := map[string]int{}
	inCompartment := map[string]int{}
	err := synth.Generate(t.Context(), synth.Config{Patients: patients, Seed: 1}, func(typ string, body []byte) error {
		all[typ]++
		if ids, err := compartment.PatientIDs(typ, body); err == nil && len(ids) > 0 {
			inCompartment[typ]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	patientOf := func() string {
		var id string
		_ = synth.Generate(t.Context(), synth.Config{Patients: 1, Seed: 1}, func(typ string, body []byte) error {
			if typ == "Patient" && id == "" {
				id = idOf(t, body)
			}
			return nil
		})
		return id
	}()

	c := &bulkclient.Client{MaxRetryAfter: 10 * time.Second}
	param := func(name, value string) map[string]any { return map[string]any{"name": name, "valueString": value} }
	cases := []struct {
		name   string
		url    string
		params []map[string]any // POST when set
		want   map[string]int   // resources by type; nil: check only that some came
	}{
		{"system, GET", base + "/$export", nil, all},
		{"system, POST with _type", base + "/$export", []map[string]any{param("_type", "Patient,Organization")},
			map[string]int{"Patient": all["Patient"], "Organization": all["Organization"]}},
		{"Patient level, GET", base + "/Patient/$export", nil, inCompartment},
		{"Patient level, POST with a patient", base + "/Patient/$export",
			[]map[string]any{{"name": "patient", "valueReference": map[string]string{"reference": "Patient/" + patientOf}}, param("_type", "Patient")},
			map[string]int{"Patient": 1}},
		{"Group level, GET", base + "/Group/synth-group-1/$export?_type=Patient,Observation",
			nil, map[string]int{"Patient": all["Patient"], "Observation": inCompartment["Observation"]}},
		{"Group level, POST", base + "/Group/synth-group-1/$export", []map[string]any{param("_type", "Encounter")},
			map[string]int{"Encounter": inCompartment["Encounter"]}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			start := time.Now()
			var status string
			var err error
			if tc.params != nil {
				status, err = c.KickoffPost(ctx, tc.url, map[string]any{"resourceType": "Parameters", "parameter": tc.params})
			} else {
				status, err = c.Kickoff(ctx, tc.url)
			}
			if err != nil {
				t.Fatal(err)
			}
			var last bulkclient.Progress
			c := *c
			c.OnProgress = func(p bulkclient.Progress) { last = p }
			m, st, err := c.Await(ctx, status)
			if err != nil {
				t.Fatalf("await %s: %v (last X-Progress %q)", status, err, last.XProgress)
			}
			t.Logf("manifest after %s, %d polls, %s waited as told", time.Since(start).Round(time.Millisecond), st.Polls, st.Waited)
			if st.Throttled > 0 {
				t.Errorf("a client honouring Retry-After was throttled %d times", st.Throttled)
			}
			if len(m.Error) != 0 {
				t.Errorf("error files %+v", m.Error)
			}
			// Four files at a time, gzip-encoded, as real clients fetch them.
			var mu sync.Mutex
			got := map[string]int{}
			seen := map[string]bool{}
			_, err = c.DownloadAll(ctx, m, 4, func(_ bulkclient.Kind, f bulkclient.File) (func([]byte) error, error) {
				return func(line []byte) error {
					var r struct{ ResourceType, ID string }
					if err := json.Unmarshal(line, &r); err != nil || r.ResourceType != f.Type {
						return fmt.Errorf("a %s line in a %s file (%v)", r.ResourceType, f.Type, err)
					}
					mu.Lock()
					defer mu.Unlock()
					if key := r.ResourceType + "/" + r.ID; seen[key] {
						t.Errorf("%s exported twice", key)
					} else {
						seen[key] = true
					}
					got[r.ResourceType]++
					return nil
				}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("exported %v, want %v", got, tc.want)
			}
			if err := c.Delete(ctx, status); err != nil {
				t.Errorf("release: %v", err)
			}
		})
	}
}
