package fhir_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

func TestFHIRRewriteReferences(t *testing.T) {
	to := map[string]string{"urn:uuid:a": "Patient/1", "urn:uuid:b": "Practitioner/2"}
	var asked []string
	fn := func(ref string) (string, bool) {
		asked = append(asked, ref)
		r, ok := to[ref]
		return r, ok
	}
	in := `{"resourceType":"Observation", "subject": {"reference" : "urn:uuid:a"},` +
		`"performer":[{"reference":"urn:uuid:b","display":"urn:uuid:a"},{"reference":"Practitioner/9"}],` +
		`"note":[{"text":"reference"}],"reference":{"reference":"urn:uuid:b"},"x":{"reference":7},"y":"\"reference\""}`
	got, err := fhir.RewriteReferences([]byte(in), fn)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"resourceType":"Observation", "subject": {"reference" : "Patient/1"},` +
		`"performer":[{"reference":"Practitioner/2","display":"urn:uuid:a"},{"reference":"Practitioner/9"}],` +
		`"note":[{"text":"reference"}],"reference":{"reference":"Practitioner/2"},"x":{"reference":7},"y":"\"reference\""}`
	if string(got) != want {
		t.Errorf("rewritten\n%s\nwant\n%s", got, want)
	}
	if !json.Valid(got) {
		t.Error("result is not valid JSON")
	}
	if wantAsked := []string{"urn:uuid:a", "urn:uuid:b", "Practitioner/9", "urn:uuid:b"}; !reflect.DeepEqual(asked, wantAsked) {
		t.Errorf("asked about %v, want %v", asked, wantAsked)
	}
	// Nothing to rewrite: the very same bytes.
	same := []byte(`{"resourceType":"Patient","link":[{"other":{"reference":"Patient/3"}}]}`)
	if got, err := fhir.RewriteReferences(same, fn); err != nil || &got[0] != &same[0] {
		t.Errorf("unchanged body was copied or failed: %v", err)
	}
	// Escapes in a reference are decoded before fn sees them.
	got, _ = fhir.RewriteReferences([]byte(`{"reference":"urn:uuid:\u0061"}`), fn)
	if !strings.Contains(string(got), `"Patient/1"`) {
		t.Errorf("escaped reference not rewritten: %s", got)
	}
}
