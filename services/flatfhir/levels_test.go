package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/shared/fhir"
)

// sampleGroup is the id of the sample's Group of every patient (the
// Synthea set and the generator each have one).
func sampleGroup(t testing.TB, input map[string]map[string]any) string {
	t.Helper()
	patients := 0
	for key := range input {
		if strings.HasPrefix(key, "Patient/") {
			patients++
		}
	}
	for key, r := range input {
		if id, ok := strings.CutPrefix(key, "Group/"); ok {
			if members, _ := r["member"].([]any); len(members) == patients {
				return id
			}
		}
	}
	t.Fatalf("the sample has no Group of all its %d patients", patients)
	return ""
}

// exported downloads every output file of m and returns "Type/id" -> times seen.
func exported(t *testing.T, m manifest) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, o := range m.Output {
		_, body := do(t, "GET", o.URL, nil)
		lines := splitLines(t, bytes.NewReader(body))
		if len(lines) != *o.Count {
			t.Errorf("%s: count %d, %d lines", o.URL, *o.Count, len(lines))
		}
		for _, l := range lines {
			got[o.Type+"/"+idOf(t, l)]++
		}
	}
	return got
}

// inCompartments is the set of input resources in the compartment of one of
// the patients (any patient when patients is nil).
func inCompartments(t *testing.T, input map[string]map[string]any, patients map[string]bool) map[string]int {
	t.Helper()
	want := map[string]int{}
	for key, r := range input {
		typ := strings.SplitN(key, "/", 2)[0]
		if !compartment.InCompartment(typ) {
			continue
		}
		body, _ := json.Marshal(r)
		ids, err := compartment.PatientIDs(typ, body)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if patients == nil || patients[id] {
				want[key] = 1
				break
			}
		}
	}
	return want
}

func post(t *testing.T, url string, params ...map[string]any) (*http.Response, []byte) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"resourceType": "Parameters", "parameter": params})
	return do(t, "POST", url, bytes.NewReader(body), "Accept", "application/fhir+json", "Prefer", "respond-async", "Content-Type", "application/fhir+json")
}

func TestE2EPatientAndGroupLevels(t *testing.T) {
	base := startEngine(t)
	input := ingestSample(t, base)
	groupID := sampleGroup(t, input)
	var group struct {
		Member []struct{ Entity struct{ Reference string } }
	}
	raw, _ := json.Marshal(input["Group/"+groupID])
	_ = json.Unmarshal(raw, &group)
	members := map[string]bool{}
	for _, m := range group.Member {
		members[strings.TrimPrefix(m.Entity.Reference, "Patient/")] = true
	}
	if len(members) != 100 {
		t.Fatalf("sample group has %d members, want 100", len(members))
	}

	t.Run("group export holds exactly its members' compartments", func(t *testing.T) {
		m, _, _ := await(t, kickoff(t, base+"/Group/"+groupID+"/$export"))
		got := exported(t, m)
		want := inCompartments(t, input, members)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("group export: %d resources, want %d (diff %v)", len(got), len(want), diffKeys(got, want, 5))
		}
		patients := 0
		for key := range got {
			if strings.HasPrefix(key, "Patient/") {
				patients++
				if !members[strings.TrimPrefix(key, "Patient/")] {
					t.Errorf("%s is not a member", key)
				}
			}
		}
		if patients != 100 {
			t.Errorf("group export has %d Patients, want the group's 100", patients)
		}
	})
	t.Run("patient export holds every compartment", func(t *testing.T) {
		m, _, _ := await(t, kickoff(t, base+"/Patient/$export?_type=Patient,Observation"))
		got := exported(t, m)
		want := map[string]int{}
		for key := range inCompartments(t, input, nil) {
			if strings.HasPrefix(key, "Patient/") || strings.HasPrefix(key, "Observation/") {
				want[key] = 1
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("patient export: %d resources, want %d (diff %v)", len(got), len(want), diffKeys(got, want, 5))
		}
	})
	var two []string
	for id := range members {
		two = append(two, id)
	}
	sort.Strings(two)
	two = two[:2]
	chosen := map[string]bool{two[0]: true, two[1]: true}
	patientParams := []map[string]any{
		{"name": "patient", "valueReference": map[string]string{"reference": "Patient/" + two[0]}},
		{"name": "patient", "valueReference": map[string]string{"reference": "Patient/" + two[1]}},
	}
	for _, url := range []string{base + "/Patient/$export", base + "/Group/" + groupID + "/$export"} {
		t.Run("POST with patient parameters "+strings.TrimPrefix(url, base), func(t *testing.T) {
			resp, body := post(t, url, patientParams...)
			if resp.StatusCode != 202 {
				t.Fatalf("POST kick-off: %d %s", resp.StatusCode, body)
			}
			m, _, _ := await(t, resp.Header.Get("Content-Location"))
			if m.Request != url {
				t.Errorf("request = %q, want the kick-off URL %q", m.Request, url)
			}
			got := exported(t, m)
			want := inCompartments(t, input, chosen)
			if len(want) < 50 || !reflect.DeepEqual(got, want) {
				t.Errorf("export for two patients: %d resources, want %d (diff %v)", len(got), len(want), diffKeys(got, want, 5))
			}
		})
	}
	refusals := []struct {
		name   string
		do     func() (*http.Response, []byte)
		status int
	}{
		{"unknown group", func() (*http.Response, []byte) {
			return do(t, "GET", base+"/Group/no-such-group/$export", nil, "Accept", "application/fhir+json", "Prefer", "respond-async")
		}, 404},
		{"patient in a GET", func() (*http.Response, []byte) {
			return do(t, "GET", base+"/Patient/$export?patient=Patient/"+two[0], nil, "Accept", "application/fhir+json", "Prefer", "respond-async")
		}, 400},
		{"non-compartment type at patient level", func() (*http.Response, []byte) {
			return do(t, "GET", base+"/Patient/$export?_type=Organization", nil, "Accept", "application/fhir+json", "Prefer", "respond-async")
		}, 400},
		{"unknown patient", func() (*http.Response, []byte) {
			return post(t, base+"/Patient/$export", map[string]any{"name": "patient", "valueReference": map[string]string{"reference": "Patient/nobody"}})
		}, 400},
		{"a Practitioner as patient", func() (*http.Response, []byte) {
			return post(t, base+"/Patient/$export", map[string]any{"name": "patient", "valueReference": map[string]string{"reference": "Practitioner/x"}})
		}, 400},
		{"patient parameter at system level", func() (*http.Response, []byte) {
			return post(t, base+"/$export", patientParams[0])
		}, 400},
		{"a body that is not Parameters", func() (*http.Response, []byte) {
			return do(t, "POST", base+"/$export", strings.NewReader(`{"resourceType":"Patient"}`), "Content-Type", "application/fhir+json")
		}, 400},
		{"a wrong value type", func() (*http.Response, []byte) {
			return post(t, base+"/$export", map[string]any{"name": "_type", "valueInteger": 3})
		}, 400},
	}
	for _, r := range refusals {
		t.Run("refuses "+r.name, func(t *testing.T) {
			resp, body := r.do()
			var oo fhir.OperationOutcome
			if resp.StatusCode != r.status || json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" {
				t.Errorf("%d %s, want %d with an OperationOutcome", resp.StatusCode, body, r.status)
			}
		})
	}
	t.Run("POST system export with _type entries", func(t *testing.T) {
		resp, body := post(t, base+"/$export", map[string]any{"name": "_type", "valueString": "Patient"}, map[string]any{"name": "_type", "valueString": "Practitioner"})
		if resp.StatusCode != 202 {
			t.Fatalf("POST kick-off: %d %s", resp.StatusCode, body)
		}
		m, _, _ := await(t, resp.Header.Get("Content-Location"))
		counts := map[string]int{}
		for _, o := range m.Output {
			counts[o.Type] += *o.Count
		}
		if want := typeCounts(input, "Patient", "Practitioner"); !reflect.DeepEqual(counts, want) {
			t.Errorf("counts %v, want %v", counts, want)
		}
	})
	t.Run("_elements trims and tags SUBSETTED", func(t *testing.T) {
		// The IG's roster pattern, plus a type-qualified element.
		m, _, _ := await(t, kickoff(t, base+"/Group/"+groupID+"/$export?_type=Patient,Observation&_elements=id,Observation.subject"))
		keys := map[string]map[string]bool{}
		total := map[string]int{}
		for _, o := range m.Output {
			_, body := do(t, "GET", o.URL, nil)
			for _, line := range splitLines(t, bytes.NewReader(body)) {
				var r map[string]any
				if err := json.Unmarshal(line, &r); err != nil {
					t.Fatal(err)
				}
				total[o.Type]++
				if keys[o.Type] == nil {
					keys[o.Type] = map[string]bool{}
				}
				for k := range r {
					keys[o.Type][k] = true
				}
				tags, _ := r["meta"].(map[string]any)["tag"].([]any)
				subsetted := false
				for _, tag := range tags {
					tm, _ := tag.(map[string]any)
					subsetted = subsetted || tm["code"] == "SUBSETTED" && tm["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
				}
				if !subsetted {
					t.Fatalf("%s/%v is not tagged SUBSETTED: %v", o.Type, r["id"], r["meta"])
				}
			}
		}
		want := map[string]map[string]bool{
			"Patient":     {"resourceType": true, "id": true, "meta": true},
			"Observation": {"resourceType": true, "id": true, "meta": true, "status": true, "code": true, "subject": true},
		}
		if !reflect.DeepEqual(keys, want) {
			t.Errorf("elements present %v, want %v", keys, want)
		}
		if total["Patient"] != 100 {
			t.Errorf("%d Patients, want 100", total["Patient"])
		}
	})
	t.Run("_typeFilter keeps matching resources of the filtered type only", func(t *testing.T) {
		hasCode := func(r map[string]any, codes ...string) bool {
			code, _ := r["code"].(map[string]any)
			list, _ := code["coding"].([]any)
			for _, c := range list {
				cm, _ := c.(map[string]any)
				for _, want := range codes {
					if cm["system"] == "http://loinc.org" && cm["code"] == want {
						return true
					}
				}
			}
			return false
		}
		want := map[string]int{}
		for key, r := range input {
			switch {
			case strings.HasPrefix(key, "Patient/"):
				want[key] = 1
			case strings.HasPrefix(key, "Observation/") && hasCode(r, "8302-2", "29463-7"):
				want[key] = 1
			}
		}
		// Two subqueries for one type (OR), URL-encoded as a client sends them.
		q := url.QueryEscape("Observation?code="+url.QueryEscape("http://loinc.org|8302-2")) + "," +
			url.QueryEscape("Observation?code="+url.QueryEscape("http://loinc.org|29463-7"))
		m, _, _ := await(t, kickoff(t, base+"/$export?_type=Patient,Observation&_typeFilter="+q))
		got := exported(t, m)
		if len(want) < 200 || !reflect.DeepEqual(got, want) {
			t.Errorf("_typeFilter export: %d resources, want %d (diff %v)", len(got), len(want), diffKeys(got, want, 5))
		}
	})
	t.Run("group read and search", func(t *testing.T) {
		resp, body := do(t, "GET", base+"/Group/"+groupID, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(body), groupID) {
			t.Fatalf("read: %d", resp.StatusCode)
		}
		var g struct {
			Name       string
			Identifier []struct{ System, Value string }
		}
		raw, _ := json.Marshal(input["Group/"+groupID])
		if err := json.Unmarshal(raw, &g); err != nil || g.Name == "" || len(g.Identifier) == 0 {
			t.Fatalf("the sample Group has no name or identifier: %s", raw)
		}
		// A name search matches the start of a word, whatever its case.
		firstWord := strings.ToLower(strings.Fields(g.Name)[0])
		for q, want := range map[string]int{
			"name=" + firstWord: 1, "name=nothing": 0,
			"identifier=" + g.Identifier[0].System + "|" + g.Identifier[0].Value: 1,
			"identifier=" + g.Identifier[0].Value:                                1,
			"_id=" + groupID + ",other":                                          1,
		} {
			resp, body := do(t, "GET", base+"/Group?"+q, nil)
			var b struct {
				ResourceType string
				Total        int
			}
			if resp.StatusCode != 200 || json.Unmarshal(body, &b) != nil || b.ResourceType != "Bundle" || b.Total != want {
				t.Errorf("search %s: %d %s, want %d matches", q, resp.StatusCode, body, want)
			}
		}
		if resp, _ := do(t, "GET", base+"/Group/nope", nil); resp.StatusCode != 404 {
			t.Errorf("read of a missing group: %d", resp.StatusCode)
		}
		if resp, _ := do(t, "GET", base+"/Group?member=x", nil); resp.StatusCode != 400 {
			t.Errorf("unsupported search parameter: %d", resp.StatusCode)
		}
	})
}

func diffKeys(got, want map[string]int, n int) []string {
	var out []string
	for k := range got {
		if want[k] != got[k] {
			out = append(out, "+"+k)
		}
	}
	for k := range want {
		if got[k] == 0 {
			out = append(out, "-"+k)
		}
	}
	sort.Strings(out)
	if len(out) > n {
		out = out[:n]
	}
	return out
}
