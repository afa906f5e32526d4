package typefilter

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/sampledata"
)

// FuzzParseAndMatch parses fuzzed _typeFilter values and matches what it
// accepts against real resources and fuzzed bodies: no panic, a refusal
// always says why, and Match of a valid JSON resource never fails.
func FuzzParseAndMatch(f *testing.F) {
	seeds := sampledata.Seeds(f, 1)
	filters := []string{
		"Observation?status=final&category=laboratory",
		"Observation?code=http://loinc.org|8867-4,Condition?clinical-status=active",
		"MedicationRequest?authoredon=ge2020-01-01&status:not=stopped",
		"Patient?gender=female&birthdate=lt1980",
		"Encounter?date=ap2019-06&class=AMB",
		"Patient?name:contains=an,Patient?family:exact=Smith",
		"Observation?subject=Patient/p1&value-quantity=gt5",
		"Immunization?vaccine-code:missing=true",
		"Observation?", "?status=final", "Nope?x=1", "Observation?status=", "Observation?date=ge2020-13-45",
	}
	for i, s := range filters {
		f.Add(s, seeds[i%len(seeds)])
	}
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, value string, body []byte) {
		filter, err := ParseAt(strings.Split(value, "\x00"), now)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("a refusal without a reason")
			}
			return
		}
		var head struct{ ResourceType string }
		if json.Unmarshal(body, &head) != nil || head.ResourceType == "" {
			return
		}
		if _, err := filter.Match(head.ResourceType, body); err != nil {
			var v map[string]any
			if json.Unmarshal(body, &v) == nil {
				t.Fatalf("Match failed on a valid resource: %v\nfilter %q\nbody %s", err, value, body)
			}
		}
	})
}
