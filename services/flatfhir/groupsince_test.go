package flatfhir_test

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestE2EGroupSinceFollowsMembershipAtTransactionTime documents and checks
// what a Group _since export does when the group changes: membership is
// taken as the group stood at transactionTime; a patient who joined after
// _since contributes only resources changed after _since (not their older
// history: fetch that with the patient parameter); a patient who left
// contributes nothing, even when changed.
func TestE2EGroupSinceFollowsMembershipAtTransactionTime(t *testing.T) {
	base := startEngine(t)
	fhirJSON := []string{"Content-Type", "application/fhir+json"}
	put := func(path, body string) {
		t.Helper()
		resp, out := do(t, "PUT", base+path, strings.NewReader(body), fhirJSON...)
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT %s: %d %s", path, resp.StatusCode, out)
		}
	}
	group := func(members ...string) string {
		var m []string
		for _, id := range members {
			m = append(m, `{"entity":{"reference":"Patient/`+id+`"}}`)
		}
		return `{"resourceType":"Group","id":"cohort","type":"person","actual":true,"member":[` + strings.Join(m, ",") + `]}`
	}
	for _, id := range []string{"stays", "joins", "leaves"} {
		put("/Patient/"+id, `{"resourceType":"Patient","id":"`+id+`"}`)
		put("/Observation/obs-"+id, `{"resourceType":"Observation","id":"obs-`+id+`","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/`+id+`"}}`)
	}
	put("/Group/cohort", group("stays", "leaves"))
	m1, _, _ := await(t, kickoff(t, base+"/Group/cohort/$export"))
	if got := exported(t, m1); len(got) != 4 {
		t.Fatalf("first export: %v, want the 2 members and their Observations", got)
	}

	// After T1: "joins" joins, "leaves" leaves and changes, "stays" changes.
	put("/Group/cohort", group("stays", "joins"))
	put("/Observation/obs-stays", `{"resourceType":"Observation","id":"obs-stays","status":"amended","code":{"text":"x"},"subject":{"reference":"Patient/stays"}}`)
	put("/Observation/obs-leaves", `{"resourceType":"Observation","id":"obs-leaves","status":"amended","code":{"text":"x"},"subject":{"reference":"Patient/leaves"}}`)

	m2, _, _ := await(t, kickoff(t, base+"/Group/cohort/$export?_since="+m1.TransactionTime))
	got := exported(t, m2)
	want := map[string]int{"Observation/obs-stays": 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("group _since export %v, want only %v", got, want)
	}
	// The new member's full history comes with the patient parameter.
	resp, body := post(t, base+"/Group/cohort/$export", map[string]any{"name": "patient", "valueReference": map[string]string{"reference": "Patient/joins"}})
	if resp.StatusCode != 202 {
		t.Fatalf("POST kick-off: %d %s", resp.StatusCode, body)
	}
	m3, _, _ := await(t, resp.Header.Get("Content-Location"))
	if got := exported(t, m3); !reflect.DeepEqual(got, map[string]int{"Patient/joins": 1, "Observation/obs-joins": 1}) {
		t.Errorf("new member's history: %v", got)
	}
}
