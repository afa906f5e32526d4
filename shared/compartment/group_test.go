package compartment

import (
	"errors"
	"reflect"
	"testing"
)

func TestCompartmentGroupPatients(t *testing.T) {
	body := `{"resourceType":"Group","id":"g","type":"person","actual":true,"member":[
		{"entity":{"reference":"Patient/b"}},
		{"entity":{"reference":"Patient/a"}},
		{"entity":{"reference":"Patient/a"}},
		{"entity":{"reference":"Practitioner/x"}},
		{"entity":{"reference":"Patient/gone"},"inactive":true},
		{"entity":{"reference":"http://example.org/fhir/Patient/c/_history/2"}},
		{"entity":{"reference":"d","type":"Patient"}},
		{"entity":{"reference":"urn:uuid:1234"}}
	]}`
	got, err := GroupPatients([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "c", "d"}; !reflect.DeepEqual(got, want) {
		t.Errorf("GroupPatients = %v, want %v", got, want)
	}
	if got, err := GroupPatients([]byte(`{"resourceType":"Group","id":"e"}`)); err != nil || len(got) != 0 {
		t.Errorf("empty group: %v, %v", got, err)
	}
	for _, bad := range []string{`{"resourceType":"Patient"}`, `not json`, `{"resourceType":"Group","member":{}}`} {
		if _, err := GroupPatients([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("GroupPatients(%s) error %v, want ErrMalformed", bad, err)
		}
	}
}
