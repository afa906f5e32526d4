package flatfhir_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// provenanceIn splits an export's contents into its Provenance ids, sorted,
// and everything else; a resource listed more than once fails the test.
func provenanceIn(t *testing.T, got map[string]int) (ids []string, rest map[string]int) {
	t.Helper()
	rest = map[string]int{}
	for key, n := range got {
		if n != 1 {
			t.Errorf("%s exported %d times, want once", key, n)
		}
		if id, ok := strings.CutPrefix(key, "Provenance/"); ok {
			ids = append(ids, id)
		} else {
			rest[key] = n
		}
	}
	slices.Sort(ids)
	return ids, rest
}

// TestE2EIncludeAssociatedData: includeAssociatedData adds the Provenances
// of the exported resources on the wire, at every level, with _since, and
// never lists a Provenance twice.
func TestE2EIncludeAssociatedData(t *testing.T) {
	base := startEngine(t)
	input := ingestSample(t, base)
	var patients, observationsOfA, orgs []string
	for key := range input {
		typ, id, _ := strings.Cut(key, "/")
		switch typ {
		case "Patient":
			patients = append(patients, id)
		case "Organization":
			orgs = append(orgs, id)
		}
	}
	slices.Sort(patients)
	slices.Sort(orgs)
	pA, pB := patients[0], patients[1]
	for key, r := range input {
		if id, ok := strings.CutPrefix(key, "Observation/"); ok {
			if subj, _ := r["subject"].(map[string]any); subj["reference"] == "Patient/"+pA {
				observationsOfA = append(observationsOfA, id)
			}
		}
	}
	slices.Sort(observationsOfA)
	oA := observationsOfA[0]

	// Two Provenances for Patient A (the 2021 one is the latest), one for
	// its Observation, one for Patient B and that Observation (the latest
	// for B), an older one for B, and one for an Organization.
	provenance := func(id, recorded string, targets ...string) string {
		var refs []string
		for _, t := range targets {
			refs = append(refs, fmt.Sprintf(`{"reference":%q}`, t))
		}
		return fmt.Sprintf(`{"resourceType":"Provenance","id":%q,"target":[%s],"recorded":%q,"agent":[{"who":{"reference":"Organization/%s"}}]}`,
			id, strings.Join(refs, ","), recorded, orgs[0])
	}
	ingest := func(lines ...string) {
		t.Helper()
		resp, out := do(t, "POST", base+"/$ingest", strings.NewReader(strings.Join(lines, "\n")), "Content-Type", "application/fhir+ndjson")
		if resp.StatusCode != 200 {
			t.Fatalf("ingest: %d %s", resp.StatusCode, out)
		}
	}
	ingest(
		provenance("pv-a-old", "2020-01-01T00:00:00Z", "Patient/"+pA),
		provenance("pv-a-new", "2021-01-01T00:00:00+01:00", "Patient/"+pA),
		provenance("pv-oa", "2020-01-01T00:00:00Z", "Observation/"+oA),
		provenance("pv-multi", "2022-01-01T00:00:00Z", "Patient/"+pB, "Observation/"+oA),
		provenance("pv-b", "2021-06-01T00:00:00Z", base+"/Patient/"+pB+"/_history/1"),
		provenance("pv-org", "2020-01-01T00:00:00Z", "Organization/"+orgs[0]),
	)
	allPatients := map[string]int{}
	for _, id := range patients {
		allPatients["Patient/"+id] = 1
	}
	relevantForPatients := []string{"pv-a-new", "pv-a-old", "pv-b", "pv-multi"}

	systemCases := []struct {
		name, query string
		want        []string
	}{
		{"relevant at system level adds exactly the Provenances of the Patients",
			"_type=Patient&includeAssociatedData=RelevantProvenanceResources", relevantForPatients},
		{"latest adds each Patient's most recent Provenance",
			"_type=Patient&includeAssociatedData=LatestProvenanceResources", []string{"pv-a-new", "pv-multi"}},
		{"both values: the least restrictive wins",
			"_type=Patient&includeAssociatedData=LatestProvenanceResources&includeAssociatedData=RelevantProvenanceResources", relevantForPatients},
		{"_type with Provenance lists every Provenance once",
			"_type=Patient,Provenance&includeAssociatedData=RelevantProvenanceResources",
			[]string{"pv-a-new", "pv-a-old", "pv-b", "pv-multi", "pv-oa", "pv-org"}},
	}
	for _, c := range systemCases {
		t.Run(c.name, func(t *testing.T) {
			m, _, _ := await(t, kickoff(t, base+"/$export?"+c.query))
			ids, rest := provenanceIn(t, exported(t, m))
			if !reflect.DeepEqual(ids, c.want) {
				t.Errorf("Provenances %v, want %v", ids, c.want)
			}
			if !reflect.DeepEqual(rest, allPatients) {
				t.Errorf("besides Provenance %d resources, want the %d Patients (diff %v)", len(rest), len(allPatients), diffKeys(rest, allPatients, 5))
			}
		})
	}

	t.Run("POST with valueCode and valueString entries", func(t *testing.T) {
		resp, body := post(t, base+"/$export",
			map[string]any{"name": "_type", "valueString": "Patient"},
			map[string]any{"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"},
			map[string]any{"name": "includeAssociatedData", "valueString": "RelevantProvenanceResources"})
		if resp.StatusCode != 202 {
			t.Fatalf("POST kick-off: %d %s", resp.StatusCode, body)
		}
		m, _, _ := await(t, resp.Header.Get("Content-Location"))
		if ids, _ := provenanceIn(t, exported(t, m)); !reflect.DeepEqual(ids, relevantForPatients) {
			t.Errorf("Provenances %v, want %v", ids, relevantForPatients)
		}
	})

	for _, value := range []string{"SomeProvenanceResources", "_myPreset"} {
		t.Run("refuses "+value, func(t *testing.T) {
			resp, body := do(t, "GET", base+"/$export?_type=Patient&includeAssociatedData="+value, nil, "Accept", "application/fhir+json", "Prefer", "respond-async")
			var oo fhir.OperationOutcome
			if resp.StatusCode != 400 || json.Unmarshal(body, &oo) != nil || len(oo.Issue) == 0 || !strings.Contains(oo.Issue[0].Diagnostics, value) {
				t.Errorf("%d %s, want 400 with an OperationOutcome naming %s", resp.StatusCode, body, value)
			}
		})
	}
	t.Run("lenient ignores an unknown value and reports it", func(t *testing.T) {
		resp, body := do(t, "GET", base+"/$export?_type=Patient&includeAssociatedData=_myPreset", nil,
			"Accept", "application/fhir+json", "Prefer", "respond-async, handling=lenient")
		if resp.StatusCode != 202 {
			t.Fatalf("lenient kick-off: %d %s", resp.StatusCode, body)
		}
		m, _, _ := await(t, resp.Header.Get("Content-Location"))
		if ids, rest := provenanceIn(t, exported(t, m)); len(ids) != 0 || len(rest) != 100 {
			t.Errorf("%d Provenances and %d others, want the 100 Patients only", len(ids), len(rest))
		}
		if len(m.Error) != 1 {
			t.Fatalf("error = %d entries, want 1 file", len(m.Error))
		}
		item := m.Error[0]
		r, b := do(t, "GET", item.URL, nil)
		if r.StatusCode != 200 || item.Type != "OperationOutcome" || !strings.Contains(string(b), "_myPreset") {
			t.Errorf("error file %s: %d %s", item.URL, r.StatusCode, b)
		}
	})

	patientA := map[string]any{"name": "patient", "valueReference": map[string]string{"reference": "Patient/" + pA}}
	compartmentOfA := inCompartments(t, input, map[string]bool{pA: true})
	t.Run("Patient level with patient: only the Provenances of that compartment's exported resources", func(t *testing.T) {
		resp, body := post(t, base+"/Patient/$export", patientA,
			map[string]any{"name": "_type", "valueString": "Patient,Observation"},
			map[string]any{"name": "includeAssociatedData", "valueCode": "RelevantProvenanceResources"})
		if resp.StatusCode != 202 {
			t.Fatalf("POST kick-off: %d %s", resp.StatusCode, body)
		}
		m, _, _ := await(t, resp.Header.Get("Content-Location"))
		ids, rest := provenanceIn(t, exported(t, m))
		if want := []string{"pv-a-new", "pv-a-old", "pv-multi", "pv-oa"}; !reflect.DeepEqual(ids, want) {
			t.Errorf("Provenances %v, want %v", ids, want)
		}
		want := map[string]int{}
		for key := range compartmentOfA {
			if strings.HasPrefix(key, "Patient/") || strings.HasPrefix(key, "Observation/") {
				want[key] = 1
			}
		}
		if !reflect.DeepEqual(rest, want) {
			t.Errorf("besides Provenance %d resources, want %d (diff %v)", len(rest), len(want), diffKeys(rest, want, 5))
		}
	})
	t.Run("Patient level without _type, relevant: the default rule's Provenances, each once", func(t *testing.T) {
		resp, body := post(t, base+"/Patient/$export", patientA,
			map[string]any{"name": "includeAssociatedData", "valueCode": "RelevantProvenanceResources"})
		if resp.StatusCode != 202 {
			t.Fatalf("POST kick-off: %d %s", resp.StatusCode, body)
		}
		m, _, _ := await(t, resp.Header.Get("Content-Location"))
		ids, rest := provenanceIn(t, exported(t, m))
		if want := []string{"pv-a-new", "pv-a-old", "pv-multi", "pv-oa"}; !reflect.DeepEqual(ids, want) {
			t.Errorf("Provenances %v, want %v", ids, want)
		}
		if !reflect.DeepEqual(rest, compartmentOfA) {
			t.Errorf("besides Provenance %d resources, want %d (diff %v)", len(rest), len(compartmentOfA), diffKeys(rest, compartmentOfA, 5))
		}
	})

	// LatestProvenanceResources: "Other Provenance resources will not be
	// returned", even where the default rule or _type would export them.
	everything := map[string]int{}
	for key := range input {
		everything[key] = 1
	}
	allCompartments := inCompartments(t, input, nil)
	latestCases := []struct {
		name, url string
		params    []map[string]any // a POST kick-off when set
		want      []string
		wantRest  map[string]int
	}{
		{"Patient level without _type: only the latest of each exported resource", base + "/Patient/$export",
			[]map[string]any{patientA, {"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"}},
			[]string{"pv-a-new", "pv-multi"}, compartmentOfA},
		{"system level without _type", base + "/$export?includeAssociatedData=LatestProvenanceResources", nil,
			[]string{"pv-a-new", "pv-multi", "pv-org"}, everything},
		{"system level, _type naming Provenance", base + "/$export?_type=Patient,Provenance&includeAssociatedData=LatestProvenanceResources", nil,
			[]string{"pv-a-new", "pv-multi"}, allPatients},
		{"Group level without _type", base + "/Group/" + sampleGroup(t, input) + "/$export?includeAssociatedData=LatestProvenanceResources", nil,
			[]string{"pv-a-new", "pv-multi"}, allCompartments},
		{"_typeFilter narrows what Provenances are associated with", base + "/$export?_type=Patient,Provenance&_typeFilter=" +
			url.QueryEscape("Patient?_id="+pB) + "&includeAssociatedData=LatestProvenanceResources", nil,
			[]string{"pv-multi"}, map[string]int{"Patient/" + pB: 1}},
		{"only Provenance asked for: nothing to associate with", base + "/$export?_type=Provenance&includeAssociatedData=LatestProvenanceResources", nil,
			nil, map[string]int{}},
	}
	for _, c := range latestCases {
		t.Run("latest, "+c.name, func(t *testing.T) {
			status := ""
			if c.params != nil {
				resp, body := post(t, c.url, c.params...)
				if resp.StatusCode != 202 {
					t.Fatalf("POST kick-off: %d %s", resp.StatusCode, body)
				}
				status = resp.Header.Get("Content-Location")
			} else {
				status = kickoff(t, c.url)
			}
			m, _, _ := await(t, status)
			ids, rest := provenanceIn(t, exported(t, m))
			if !reflect.DeepEqual(ids, c.want) {
				t.Errorf("Provenances %v, want %v", ids, c.want)
			}
			if !reflect.DeepEqual(rest, c.wantRest) {
				t.Errorf("besides Provenance %d resources, want %d (diff %v)", len(rest), len(c.wantRest), diffKeys(rest, c.wantRest, 5))
			}
		})
	}

	t.Run("_since: Provenances changed since, of resources changed since", func(t *testing.T) {
		m, _, _ := await(t, kickoff(t, base+"/$export?_type=Patient&_outputFormat=ndjson"))
		since := m.TransactionTime
		updated, _ := json.Marshal(input["Patient/"+pB])
		if resp, out := do(t, "PUT", base+"/Patient/"+pB, strings.NewReader(string(updated)), "Content-Type", "application/fhir+json"); resp.StatusCode != 200 {
			t.Fatalf("update Patient/%s: %d %s", pB, resp.StatusCode, out)
		}
		ingest(
			provenance("pv-a-later", "2023-01-01T00:00:00Z", "Patient/"+pA), // A itself did not change
			provenance("pv-b-later", "2023-01-01T00:00:00Z", "Patient/"+pB),
		)
		for _, mode := range []string{"RelevantProvenanceResources", "LatestProvenanceResources"} {
			m, _, _ := await(t, kickoff(t, base+"/$export?_type=Patient&includeAssociatedData="+mode+"&_since="+url.QueryEscape(since)))
			ids, rest := provenanceIn(t, exported(t, m))
			if want := []string{"pv-b-later"}; !reflect.DeepEqual(ids, want) {
				t.Errorf("%s: Provenances %v, want %v", mode, ids, want)
			}
			if want := map[string]int{"Patient/" + pB: 1}; !reflect.DeepEqual(rest, want) {
				t.Errorf("%s: besides Provenance %v, want %v", mode, rest, want)
			}
		}
	})
}
