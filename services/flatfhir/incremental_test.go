package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// TestE2EIncrementalExportAfterFHIRWrites: writes through the FHIR API,
// then a _since export at the previous transactionTime holds exactly the
// changed resources in output and the deletion in deleted.
func TestE2EIncrementalExportAfterFHIRWrites(t *testing.T) {
	base := startEngine(t)
	input := ingestSample(t, base)
	m1, _, _ := await(t, kickoff(t, base+"/$export"))

	var patientID, obsID string
	var keys []string
	for key := range input {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		switch {
		case patientID == "" && strings.HasPrefix(key, "Patient/"):
			patientID = strings.TrimPrefix(key, "Patient/")
		case obsID == "" && strings.HasPrefix(key, "Observation/"):
			obsID = strings.TrimPrefix(key, "Observation/")
		}
	}
	fhirJSON := []string{"Content-Type", "application/fhir+json"}

	// Update a Patient.
	p := input["Patient/"+patientID]
	p["gender"] = "other"
	body, _ := json.Marshal(p)
	resp, out := do(t, "PUT", base+"/Patient/"+patientID, bytes.NewReader(body), fhirJSON...)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") == "" || resp.Header.Get("Last-Modified") == "" || !strings.Contains(string(out), `"other"`) {
		t.Fatalf("PUT update: %d %v %s", resp.StatusCode, resp.Header, out)
	}
	// Delete an Observation, create one.
	if resp, out := do(t, "DELETE", base+"/Observation/"+obsID, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, out)
	}
	// Deleting what never existed succeeds and changes nothing: it must not
	// show up in deleted[] below.
	if resp, out := do(t, "DELETE", base+"/Observation/never-was", nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE of a missing resource: %d %s", resp.StatusCode, out)
	}
	newObs := `{"resourceType":"Observation","status":"final","code":{"text":"new"},"subject":{"reference":"Patient/` + patientID + `"}}`
	resp, out = do(t, "POST", base+"/Observation", strings.NewReader(newObs), fhirJSON...)
	var created struct{ ID string }
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(out, &created) != nil || created.ID == "" ||
		!strings.HasPrefix(resp.Header.Get("Location"), base+"/Observation/"+created.ID+"/_history/") {
		t.Fatalf("POST create: %d %q %s", resp.StatusCode, resp.Header.Get("Location"), out)
	}
	// Reads see the writes.
	if resp, out := do(t, "GET", base+"/Patient/"+patientID, nil); resp.StatusCode != 200 || !strings.Contains(string(out), `"other"`) {
		t.Errorf("read after update: %d %s", resp.StatusCode, out)
	}
	if resp, _ := do(t, "GET", base+"/Observation/"+obsID, nil); resp.StatusCode != 404 {
		t.Errorf("read after delete: %d, want 404", resp.StatusCode)
	}
	// Refusals.
	for _, c := range []struct{ method, url, body string }{
		{"PUT", "/Patient/" + patientID, `{"resourceType":"Patient","id":"someone-else"}`},
		{"PUT", "/Patient/" + patientID, `{"resourceType":"Observation","id":"` + patientID + `"}`},
		{"PUT", "/Patient/" + patientID, `not json`},
		{"PUT", "/Patiant/x", `{"resourceType":"Patiant","id":"x"}`},
		{"POST", "/Observation", `{"resourceType":"Patient"}`},
	} {
		resp, out := do(t, c.method, base+c.url, strings.NewReader(c.body), fhirJSON...)
		if resp.StatusCode/100 != 4 || !strings.Contains(string(out), "OperationOutcome") {
			t.Errorf("%s %s %s: %d %s, want a 4xx OperationOutcome", c.method, c.url, c.body, resp.StatusCode, out)
		}
	}

	// The incremental export.
	status := kickoff(t, base+"/$export?_since="+m1.TransactionTime)
	_, _, raw := await(t, status)
	var m2 struct {
		TransactionTime string
		Output, Deleted []struct {
			Type, URL string
			Count     int
		}
	}
	if err := json.Unmarshal(raw, &m2); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, o := range m2.Output {
		_, body := do(t, "GET", o.URL, nil)
		for _, l := range splitLines(t, bytes.NewReader(body)) {
			got[o.Type+"/"+idOf(t, l)]++
		}
	}
	want := map[string]int{"Patient/" + patientID: 1, "Observation/" + created.ID: 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("_since output %v, want %v", got, want)
	}
	var deleted []string
	for _, d := range m2.Deleted {
		if d.Type != "Bundle" {
			t.Errorf("deleted item of type %s", d.Type)
		}
		_, body := do(t, "GET", d.URL, nil)
		for _, l := range splitLines(t, bytes.NewReader(body)) {
			var b struct {
				ResourceType, Type string
				Entry              []struct{ Request struct{ Method, URL string } }
			}
			if err := json.Unmarshal(l, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "transaction" {
				t.Fatalf("deleted line %s: %v", l, err)
			}
			for _, e := range b.Entry {
				if e.Request.Method != "DELETE" {
					t.Errorf("deleted entry method %s", e.Request.Method)
				}
				deleted = append(deleted, e.Request.URL)
			}
		}
	}
	if !reflect.DeepEqual(deleted, []string{"Observation/" + obsID}) {
		t.Errorf("deleted %v, want [Observation/%s]", deleted, obsID)
	}
	if m2.TransactionTime <= m1.TransactionTime {
		t.Errorf("transactionTime did not advance: %s then %s", m1.TransactionTime, m2.TransactionTime)
	}
}
