package typefilter

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Fixtures in the shapes of the Synthea R4 bulk export
// (the shared synthea-100 sample beside the repository), trimmed, some with elements added.
const (
	obsHeight = `{"resourceType":"Observation","id":"cdec68f5-5a6a-4861-b26b-f4061ff4f2f9","meta":{"versionId":"1","lastUpdated":"2024-03-01T10:00:00.000000Z"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8302-2","display":"Body Height"}],"text":"Body Height"},"subject":{"reference":"Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"},"encounter":{"reference":"Encounter/7518242e-0b07-41d2-8c40-8acd1e3a7bb9"},"effectiveDateTime":"2011-02-02T16:30:49-05:00","issued":"2011-02-02T16:30:49.825-05:00","valueQuantity":{"value":181.2,"unit":"cm","system":"http://unitsofmeasure.org","code":"cm"}}`
	obsWeight = `{"resourceType":"Observation","id":"b1f3b4de-2f2f-4f43-9c1a-0d6b6c1e2a10","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7","display":"Body Weight"}],"text":"Body Weight"},"subject":{"reference":"Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"},"encounter":{"reference":"Encounter/7518242e-0b07-41d2-8c40-8acd1e3a7bb9"},"effectiveDateTime":"2011-02-02T16:30:49-05:00","issued":"2011-02-02T16:30:49.825-05:00","valueQuantity":{"value":80.1,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}`
	obsChol   = `{"resourceType":"Observation","id":"d0e09312-ffeb-4a39-b7dd-81c343709bd0","status":"amended","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory","display":"laboratory"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"2093-3","display":"Total Cholesterol"}],"text":"Total Cholesterol"},"subject":{"reference":"https://fhir.example.org/r4/Patient/58c297c4-d684-4677-8024-01131d93835e/_history/3"},"effectivePeriod":{"start":"2019-07-01T08:00:00Z","end":"2019-07-01T09:00:00Z"},"valueQuantity":{"value":167.49,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}`
	obsGroup  = `{"resourceType":"Observation","id":"grp-obs-1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8302-2"}]},"subject":{"reference":"Group/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"},"effectiveInstant":"2020-05-05T05:05:05.123Z"}`

	condSinusitis = `{"resourceType":"Condition","id":"a5a38601-b6fe-46b4-a67e-cde9d5957dde","clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}]},"code":{"coding":[{"system":"http://snomed.info/sct","code":"40055000","display":"Chronic sinusitis (disorder)"}],"text":"Chronic sinusitis (disorder)"},"subject":{"reference":"Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"},"encounter":{"reference":"Encounter/17b801ac-58e3-4f6b-8b48-8e33f3a36086"},"onsetDateTime":"1985-06-18T17:30:49-04:00","recordedDate":"1985-06-18T17:30:49-04:00"}`
	condResolved  = `{"resourceType":"Condition","id":"f0c4bb7e-2a0f-44b5-a7ac-5fd29d7bd2f2","clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"resolved"}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}]},"code":{"coding":[{"system":"http://snomed.info/sct","code":"444814009","display":"Viral sinusitis (disorder)"}],"text":"Viral sinusitis (disorder)"},"subject":{"reference":"Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"},"recordedDate":"2009-01-05T16:30:49-05:00"}`

	encAmb = `{"resourceType":"Encounter","id":"17b801ac-58e3-4f6b-8b48-8e33f3a36086","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"},"type":[{"coding":[{"system":"http://snomed.info/sct","code":"185345009","display":"Encounter for symptom"}],"text":"Encounter for symptom"}],"subject":{"reference":"Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2","display":"Mr. Abram Lemke"},"participant":[{"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PPRF","display":"primary performer"}],"text":"primary performer"}],"period":{"start":"1985-06-18T17:30:49-04:00","end":"1985-06-18T17:45:49-04:00"},"individual":{"reference":"Practitioner/87a5ab63-4cbe-3f5c-9287-5388c7187ef1","display":"Dr. Otis Ortiz"}}],"period":{"start":"1985-06-18T17:30:49-04:00","end":"1985-06-18T17:45:49-04:00"},"reasonCode":[{"coding":[{"system":"http://snomed.info/sct","code":"75498004","display":"Acute bacterial sinusitis (disorder)"}]}],"serviceProvider":{"reference":"Organization/5d4b9df1-93ae-3bc9-b680-03249990e558","display":"HOLYOKE MEDICAL CENTER"}}`

	patAbram = `{"resourceType":"Patient","id":"6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2","identifier":[{"system":"https://github.com/synthetichealth/synthea","value":"6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"SS","display":"Social Security Number"}],"text":"Social Security Number"},"system":"http://hl7.org/fhir/sid/us-ssn","value":"999-18-8203"}],"active":true,"name":[{"use":"official","family":"Lemke","given":["Abram"],"prefix":["Mr."]}],"telecom":[{"system":"phone","value":"555-532-1156","use":"home"}],"gender":"male","birthDate":"1965-01-13","generalPractitioner":[{"reference":"Practitioner/87a5ab63-4cbe-3f5c-9287-5388c7187ef1"}],"managingOrganization":{"reference":"Organization/5d4b9df1-93ae-3bc9-b680-03249990e558"}}`
	patMaria = `{"resourceType":"Patient","id":"58c297c4-d684-4677-8024-01131d93835e","name":[{"use":"official","family":"Carrasquillo","given":["María Teresa"]},{"use":"maiden","family":"Müller","given":["María","Teresa"],"text":"María Teresa Müller"}],"gender":"female","birthDate":"1972-08-10","generalPractitioner":[]}`
	patBare  = `{"resourceType":"Patient","id":"p3","active":false}`
)

// testNow is the clock of the ap prefix in these tests.
var testNow = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func mustParse(t *testing.T, values ...string) Filter {
	t.Helper()
	f, err := ParseAt(values, testNow)
	if err != nil {
		t.Fatalf("Parse(%q): %v", values, err)
	}
	return f
}

func resourceType(body string) string {
	const k = `{"resourceType":"`
	return body[len(k) : len(k)+strings.IndexByte(body[len(k):], '"')]
}

// matchCase is one filter applied to one body.
type matchCase struct {
	name   string
	filter []string
	body   string
	want   bool
}

func runMatch(t *testing.T, cases []matchCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := mustParse(t, tc.filter...)
			got, err := f.Match(resourceType(tc.body), []byte(tc.body))
			if err != nil {
				t.Fatalf("Match: %v", err)
			}
			if got != tc.want {
				t.Errorf("_typeFilter=%q on %s: got %v, want %v", tc.filter, resourceType(tc.body), got, tc.want)
			}
		})
	}
}

func TestTypeFilterSplit(t *testing.T) {
	tests := []struct {
		value string
		want  []string
	}{
		{"Observation?code=a,b", []string{"Observation?code=a,b"}},
		{"Observation?x=1,Condition?y=2", []string{"Observation?x=1", "Condition?y=2"}},
		{"MedicationRequest?status=active,MedicationRequest?status=completed&authoredon=gt2018-07-01T00:00:00Z",
			[]string{"MedicationRequest?status=active", "MedicationRequest?status=completed&authoredon=gt2018-07-01T00:00:00Z"}},
		{"Observation?code=http://loinc.org|8302-2,http://loinc.org|29463-7,Condition?code=40055000",
			[]string{"Observation?code=http://loinc.org|8302-2,http://loinc.org|29463-7", "Condition?code=40055000"}},
		// Only "[A-Z][A-Za-z]+?" after a comma starts a subquery.
		{"Observation?code=a,B?", []string{"Observation?code=a,B?"}},
		{"Observation?code=a,Bb", []string{"Observation?code=a,Bb"}},
		{"Observation?code=a,bx?y", []string{"Observation?code=a,bx?y"}},
		{"Observation?code=a,X1?y", []string{"Observation?code=a,X1?y"}},
	}
	for _, tc := range tests {
		if got := splitSubqueries(tc.value); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitSubqueries(%q) = %q, want %q", tc.value, got, tc.want)
		}
	}

	// Through Parse: one subquery with two OR values, and two subqueries.
	f := mustParse(t, "Observation?code=8302-2,29463-7")
	if n := len(f.types["Observation"].subs); n != 1 {
		t.Fatalf("Observation?code=8302-2,29463-7: %d subqueries, want 1", n)
	}
	if n := len(f.types["Observation"].subs[0].conds[0].tokens); n != 2 {
		t.Fatalf("Observation?code=8302-2,29463-7: %d OR values, want 2", n)
	}
	f = mustParse(t, "Observation?code=8302-2,Condition?code=40055000")
	if got := f.Types(); !reflect.DeepEqual(got, []string{"Condition", "Observation"}) {
		t.Fatalf("Types() = %q", got)
	}
	runMatch(t, []matchCase{
		{"or-values height", []string{"Observation?code=8302-2,29463-7"}, obsHeight, true},
		{"or-values weight", []string{"Observation?code=8302-2,29463-7"}, obsWeight, true},
		{"or-values chol", []string{"Observation?code=8302-2,29463-7"}, obsChol, false},
		{"two types obs", []string{"Observation?code=8302-2,Condition?code=40055000"}, obsHeight, true},
		{"two types cond", []string{"Observation?code=8302-2,Condition?code=40055000"}, condSinusitis, true},
		{"two types cond neg", []string{"Observation?code=8302-2,Condition?code=40055000"}, condResolved, false},
		{"system|code list", []string{"Observation?code=http://loinc.org|8302-2,http://loinc.org|2093-3"}, obsChol, true},
	})
}

func TestTypeFilterURLEncoded(t *testing.T) {
	runMatch(t, []matchCase{
		{"%7C pipe", []string{"Observation?code=http%3A%2F%2Floinc.org%7C8302-2"}, obsHeight, true},
		{"%7C pipe neg", []string{"Observation?code=http%3A%2F%2Floinc.org%7C8302-2"}, obsWeight, false},
		{"%2C or", []string{"Observation?code=http%3A%2F%2Floinc.org%7C8302-2%2Chttp%3A%2F%2Floinc.org%7C29463-7"}, obsWeight, true},
		{"%2C or neg", []string{"Observation?code=http%3A%2F%2Floinc.org%7C8302-2%2Chttp%3A%2F%2Floinc.org%7C29463-7"}, obsChol, false},
		{"%2C is not a subquery split", []string{"Observation?code=8302-2%2CCondition?code=x"}, obsHeight, true},
		{"%3A in reference", []string{"Observation?subject=https%3A%2F%2Ffhir.example.org%2Fr4%2FPatient%2F58c297c4-d684-4677-8024-01131d93835e"}, obsChol, true},
		{"%2B zone", []string{"Observation?date=2011-02-03T02%3A30%3A49%2B05%3A00"}, obsHeight, true},
		{"raw + zone read as space", []string{"Observation?date=2011-02-03T02:30:49+05:00"}, obsHeight, true},
		{"%5C%2C literal comma", []string{"Patient?name:exact=Lemke%5C%2C%20Abram"}, patAbram, false},
		{"%20 space", []string{"Patient?given=Mar%C3%ADa%20Te"}, patMaria, true},
	})
}

func TestTypeFilterOrAnd(t *testing.T) {
	runMatch(t, []matchCase{
		// AND within a subquery.
		{"and both", []string{"Observation?code=8302-2&status=final"}, obsHeight, true},
		{"and one fails", []string{"Observation?code=8302-2&status=amended"}, obsHeight, false},
		{"repeated param is AND", []string{"Observation?category=vital-signs&category=laboratory"}, obsHeight, false},
		{"repeated param both hold", []string{"Observation?code=8302-2&code=http://loinc.org|"}, obsHeight, true},
		// OR across subqueries of one type, in one value or repeated.
		{"or in one value", []string{"Observation?code=2093-3,Observation?status=final&code=8302-2"}, obsHeight, true},
		{"or repeated param", []string{"Observation?code=2093-3", "Observation?code=8302-2"}, obsHeight, true},
		{"or none", []string{"Observation?code=2093-3", "Observation?status=cancelled"}, obsHeight, false},
		{"or first", []string{"Observation?code=2093-3", "Observation?status=cancelled"}, obsChol, true},
		// A bare "Type?" matches every resource of the type.
		{"empty subquery", []string{"Observation?", "Observation?code=nothing"}, obsWeight, true},
	})
}

func TestTypeFilterOtherTypesUnfiltered(t *testing.T) {
	f := mustParse(t, "Observation?code=8302-2")
	if f.IsZero() {
		t.Fatal("IsZero() = true for a non-empty filter")
	}
	for _, body := range []string{patAbram, condSinusitis, encAmb, `not json at all`} {
		ok, err := f.Match("Patient", []byte(body))
		if err != nil || !ok {
			t.Errorf("unfiltered type: Match = %v, %v; want true, nil", ok, err)
		}
	}
	if ok, err := f.Match("Observation", []byte(obsWeight)); err != nil || ok {
		t.Errorf("filtered type: Match = %v, %v; want false, nil", ok, err)
	}

	var zero Filter
	if !zero.IsZero() || len(zero.Types()) != 0 {
		t.Errorf("zero Filter: IsZero %v Types %q", zero.IsZero(), zero.Types())
	}
	if ok, err := zero.Match("Observation", []byte(obsWeight)); err != nil || !ok {
		t.Errorf("zero Filter: Match = %v, %v", ok, err)
	}
	f = mustParse(t)
	if !f.IsZero() {
		t.Error("Parse(nil) is not zero")
	}
	f = mustParse(t, "Patient?gender=male", "Condition?code=1,Observation?code=2", "Patient?gender=female")
	if got := f.Types(); !reflect.DeepEqual(got, []string{"Condition", "Observation", "Patient"}) {
		t.Errorf("Types() = %q", got)
	}
	if n := len(f.types["Patient"].subs); n != 2 {
		t.Errorf("Patient subqueries = %d, want 2 (union of repeated _typeFilter)", n)
	}
}

func TestTypeFilterParseErrors(t *testing.T) {
	tests := []struct {
		value string
		want  []string // substrings of the error
	}{
		// Subquery shape and type.
		{"code=8302-2", []string{`"code=8302-2"`, "ResourceType?"}},
		{"?code=8302-2", []string{"ResourceType?"}},
		{"Observation", []string{"ResourceType?"}},
		{"", []string{"ResourceType?"}},
		{"Observation?code=a,", []string{`"code"`, "empty value"}},
		{"Observations?code=8302-2", []string{`unknown resource type "Observations"`}},
		{"observation?code=8302-2", []string{`unknown resource type "observation"`}},
		{"Observation?code=1,Bogus?x=1", []string{`"Bogus?x=1"`, "unknown resource type"}},
		{"Observation?code=a;b", []string{"malformed query"}},
		{"Observation?code=%zz", []string{"malformed query"}},
		// Result parameters.
		{"Observation?_include=Observation:subject", []string{`"_include"`, "not allowed in _typeFilter"}},
		{"Observation?_include:iterate=Observation:subject", []string{"not allowed in _typeFilter"}},
		{"Observation?_revinclude=Provenance:target", []string{"not allowed in _typeFilter"}},
		{"Observation?_sort=date", []string{"not allowed in _typeFilter"}},
		{"Observation?_count=10", []string{"_count is not allowed in _typeFilter"}},
		{"Observation?_elements=code", []string{"not allowed in _typeFilter"}},
		{"Observation?_summary=true", []string{"not allowed in _typeFilter"}},
		{"Observation?_total=accurate", []string{"not allowed in _typeFilter"}},
		{"Observation?_contained=true", []string{"not allowed in _typeFilter"}},
		{"Observation?_containedType=contained", []string{"not allowed in _typeFilter"}},
		// Unsupported parameters.
		{"Observation?value-quantity=5.4", []string{`"value-quantity" is not supported for Observation`}},
		{"Patient?address=Boston", []string{`"address" is not supported for Patient`}},
		{"Device?status=active", []string{`"status" is not supported for Device`}},
		{"Observation?subject.name=Lemke", []string{`"subject.name" is not supported`}},
		{"Patient?_has:Observation:patient:code=8302-2", []string{`"_has" is not supported`}},
		{"Observation?_tag=x", []string{`"_tag" is not supported`}},
		{"Observation?gender=male", []string{`"gender" is not supported for Observation`}},
		// Unsupported modifiers.
		{"Patient?family:text=Lem", []string{"modifier :text is not supported"}},
		{"Observation?code:text=height", []string{"modifier :text"}},
		{"Observation?code:exact=8302-2", []string{"modifier :exact"}},
		{"Observation?code:below=http://loinc.org|8302-2", []string{"modifier :below"}},
		{"Observation?code:in=http://example.org/vs", []string{"modifier :in"}},
		{"Patient?gender:contains=ma", []string{"modifier :contains"}},
		{"Patient?family:not=Lemke", []string{"modifier :not"}},
		{"Observation?subject:Patient=123", []string{"modifier :Patient"}},
		{"Observation?subject:identifier=http://x|1", []string{"modifier :identifier"}},
		{"Observation?date:not=2020", []string{"modifier :not"}},
		{"Observation?code:missing=maybe", []string{":missing takes true or false"}},
		// Malformed values.
		{"Observation?code=", []string{"empty value"}},
		{"Observation?code=|", []string{"neither system nor code"}},
		{"Observation?code=a|b|c", []string{"more than one"}},
		{"Observation?date=2020-13", []string{"bad month"}},
		{"Observation?date=2019-02-29", []string{"bad day"}},
		{"Observation?date=20200101", []string{"malformed date"}},
		{"Observation?date=2020-01-01T25:00", []string{"bad hour"}},
		{"Observation?date=2020-01-01T10", []string{"hh:mm"}},
		{"Observation?date=2020-01-01T10:00:00+15:00", []string{"bad zone offset"}},
		{"Observation?date=2020-01-01T10:00:00X", []string{"bad zone"}},
		{"Observation?date=2020-01-01T10:00:00.Z", []string{"digits after"}},
		{"Observation?date=xx2020", []string{`unknown prefix "xx"`}},
		{"Observation?date=>2020", []string{"bad prefix"}},
		{"Observation?date=gt", []string{"malformed date"}},
		{"Observation?date=2020,", []string{"empty value"}},
		{"Observation?subject=Foo/123", []string{`unknown resource type "Foo"`}},
		{"Observation?subject=a/b/c", []string{"not Type/id"}},
		{"Observation?subject=bad%20id", []string{"not a valid id"}},
		{"Observation?subject=http://example.org/", []string{"not a valid id"}},
		{"Observation?patient=Practitioner/1", []string{"only refers to Patient"}},
	}
	for _, tc := range tests {
		_, err := Parse([]string{tc.value})
		if err == nil {
			t.Errorf("Parse(%q): no error", tc.value)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) = %q, want it to contain %q", tc.value, err, w)
			}
		}
	}
	// The error names the subquery and the parameter.
	_, err := Parse([]string{"Patient?gender=male", "Observation?status=final&_sort=date"})
	if err == nil || !strings.Contains(err.Error(), `"Observation?status=final&_sort=date"`) || !strings.Contains(err.Error(), `parameter "_sort"`) {
		t.Errorf("error %q does not name the subquery and the parameter", err)
	}
}

func TestTypeFilterToken(t *testing.T) {
	runMatch(t, []matchCase{
		// CodeableConcept.
		{"cc system|code", []string{"Observation?code=http://loinc.org|8302-2"}, obsHeight, true},
		{"cc code", []string{"Observation?code=8302-2"}, obsHeight, true},
		{"cc wrong code", []string{"Observation?code=http://loinc.org|29463-7"}, obsHeight, false},
		{"cc wrong system", []string{"Observation?code=http://snomed.info/sct|8302-2"}, obsHeight, false},
		{"cc system|", []string{"Observation?code=http://loinc.org|"}, obsHeight, true},
		{"cc other system|", []string{"Observation?code=http://snomed.info/sct|"}, obsHeight, false},
		{"cc |code needs no system", []string{"Observation?code=|8302-2"}, obsHeight, false},
		{"cc case-sensitive", []string{"Observation?code=http://LOINC.org|8302-2"}, obsHeight, false},
		{"cc display is not a code", []string{"Observation?code=Body Height"}, obsHeight, false},
		{"category array", []string{"Observation?category=laboratory"}, obsChol, true},
		{"category array neg", []string{"Observation?category=laboratory"}, obsHeight, false},
		{"condition clinical-status", []string{"Condition?clinical-status=active"}, condSinusitis, true},
		{"condition clinical-status neg", []string{"Condition?clinical-status=active"}, condResolved, false},
		{"condition clinical-status system", []string{"Condition?clinical-status=http://terminology.hl7.org/CodeSystem/condition-clinical|resolved"}, condResolved, true},
		{"condition verification-status", []string{"Condition?verification-status=confirmed"}, condResolved, true},
		// Coding.
		{"coding class", []string{"Encounter?class=AMB"}, encAmb, true},
		{"coding class system", []string{"Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB"}, encAmb, true},
		{"coding class neg", []string{"Encounter?class=IMP"}, encAmb, false},
		{"encounter type", []string{"Encounter?type=http://snomed.info/sct|185345009"}, encAmb, true},
		// Code primitives, with their implicit system.
		{"status", []string{"Observation?status=final"}, obsHeight, true},
		{"status neg", []string{"Observation?status=final"}, obsChol, false},
		{"status implicit system", []string{"Observation?status=http://hl7.org/fhir/observation-status|final"}, obsHeight, true},
		{"status other system", []string{"Observation?status=http://example.org|final"}, obsHeight, false},
		{"status |code", []string{"Observation?status=|final"}, obsHeight, true},
		{"gender", []string{"Patient?gender=male"}, patAbram, true},
		{"gender neg", []string{"Patient?gender=female"}, patAbram, false},
		{"gender system|", []string{"Patient?gender=http://hl7.org/fhir/administrative-gender|"}, patAbram, true},
		{"encounter status", []string{"Encounter?status=finished"}, encAmb, true},
		// Identifier.
		{"identifier system|value", []string{"Patient?identifier=http://hl7.org/fhir/sid/us-ssn|999-18-8203"}, patAbram, true},
		{"identifier value", []string{"Patient?identifier=999-18-8203"}, patAbram, true},
		{"identifier wrong system", []string{"Patient?identifier=https://github.com/synthetichealth/synthea|999-18-8203"}, patAbram, false},
		{"identifier type code is not a value", []string{"Patient?identifier=SS"}, patAbram, false},
		// Boolean.
		{"active true", []string{"Patient?active=true"}, patAbram, true},
		{"active false neg", []string{"Patient?active=false"}, patAbram, false},
		{"active false", []string{"Patient?active=false"}, patBare, true},
		{"active absent", []string{"Patient?active=true"}, patMaria, false},
		// _id.
		{"_id", []string{"Patient?_id=6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"}, patAbram, true},
		{"_id list", []string{"Patient?_id=p1,p3"}, patBare, true},
		{"_id neg", []string{"Patient?_id=p1,p2"}, patBare, false},
		// :not.
		{":not other", []string{"Patient?gender:not=female"}, patAbram, true},
		{":not same", []string{"Patient?gender:not=male"}, patAbram, false},
		{":not missing element", []string{"Patient?gender:not=male"}, patBare, true},
		{":not list", []string{"Patient?gender:not=female,male"}, patAbram, false},
		{":not cc", []string{"Observation?code:not=http://loinc.org|8302-2"}, obsWeight, true},
		{":not cc neg", []string{"Observation?code:not=http://loinc.org|8302-2"}, obsHeight, false},
		{":not category", []string{"Observation?category:not=laboratory"}, obsHeight, true},
	})
}

func TestTypeFilterReference(t *testing.T) {
	const abram = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"
	const maria = "58c297c4-d684-4677-8024-01131d93835e"
	covBody := `{"resourceType":"Coverage","id":"cov1","status":"active","beneficiary":{"reference":"Patient/` + abram + `"},"payor":[{"display":"Medicaid"},{"reference":"Organization/org-1"}]}`
	eobBody := `{"resourceType":"ExplanationOfBenefit","id":"eob1","status":"active","patient":{"reference":"Patient/` + abram + `"},"created":"1985-06-18T17:45:49-04:00","insurer":{"display":"Medicaid"},"provider":{"reference":"Practitioner/87a5ab63-4cbe-3f5c-9287-5388c7187ef1"},"referral":{"reference":"#referral"},"claim":{"reference":"Claim/001ae14e-3afb-4b8f-b23e-3ad65fec5e4e"},"insurance":[{"focal":true,"coverage":{"reference":"Coverage/cov1"}},{"focal":false,"coverage":{"reference":"urn:uuid:1b9e3a3c-0e4b-4f0e-9d8e-6a1b2c3d4e5f"}}]}`
	claimBody := `{"resourceType":"Claim","id":"c1","status":"active","use":"claim","patient":{"reference":"` + abram + `","type":"Patient"},"created":"1985-06-18T17:45:49-04:00","provider":{"reference":"Organization/5d4b9df1-93ae-3bc9-b680-03249990e558"},"insurer":{"display":"Medicaid"}}`
	runMatch(t, []matchCase{
		{"Type/id", []string{"Observation?subject=Patient/" + abram}, obsHeight, true},
		{"Type/id other", []string{"Observation?subject=Patient/" + maria}, obsHeight, false},
		{"bare id", []string{"Observation?subject=" + abram}, obsHeight, true},
		{"bare id any type", []string{"Observation?subject=" + abram}, obsGroup, true},
		{"wrong type", []string{"Observation?subject=Group/" + abram}, obsHeight, false},
		{"absolute search value", []string{"Observation?subject=http://example.org/fhir/Patient/" + abram}, obsHeight, true},
		{"absolute resource value", []string{"Observation?subject=Patient/" + maria}, obsChol, true},
		{"history on search value", []string{"Observation?subject=Patient/" + maria + "/_history/1"}, obsChol, true},
		{"patient", []string{"Observation?patient=" + abram}, obsHeight, true},
		{"patient Type/id", []string{"Observation?patient=Patient/" + abram}, obsHeight, true},
		{"patient ignores Group subject", []string{"Observation?patient=" + abram}, obsGroup, false},
		{"subject sees Group", []string{"Observation?subject=Group/" + abram}, obsGroup, true},
		{"encounter", []string{"Observation?encounter=Encounter/7518242e-0b07-41d2-8c40-8acd1e3a7bb9"}, obsHeight, true},
		{"encounter neg", []string{"Observation?encounter=Encounter/17b801ac-58e3-4f6b-8b48-8e33f3a36086"}, obsHeight, false},
		{"participant.individual", []string{"Encounter?participant=Practitioner/87a5ab63-4cbe-3f5c-9287-5388c7187ef1"}, encAmb, true},
		{"service-provider", []string{"Encounter?service-provider=Organization/5d4b9df1-93ae-3bc9-b680-03249990e558"}, encAmb, true},
		{"service-provider neg", []string{"Encounter?service-provider=Organization/other"}, encAmb, false},
		{"general-practitioner array", []string{"Patient?general-practitioner=Practitioner/87a5ab63-4cbe-3f5c-9287-5388c7187ef1"}, patAbram, true},
		{"organization", []string{"Patient?organization=5d4b9df1-93ae-3bc9-b680-03249990e558"}, patAbram, true},
		{"coverage payor array, display-only entry", []string{"Coverage?payor=Organization/org-1"}, covBody, true},
		{"coverage patient is beneficiary", []string{"Coverage?patient=" + abram}, covBody, true},
		{"eob insurance.coverage", []string{"ExplanationOfBenefit?coverage=Coverage/cov1"}, eobBody, true},
		{"eob urn exact", []string{"ExplanationOfBenefit?coverage=urn:uuid:1b9e3a3c-0e4b-4f0e-9d8e-6a1b2c3d4e5f"}, eobBody, true},
		{"eob claim", []string{"ExplanationOfBenefit?claim=001ae14e-3afb-4b8f-b23e-3ad65fec5e4e"}, eobBody, true},
		{"eob provider", []string{"ExplanationOfBenefit?provider=Organization/87a5ab63-4cbe-3f5c-9287-5388c7187ef1"}, eobBody, false},
		{"claim bare id with type", []string{"Claim?patient=Patient/" + abram}, claimBody, true},
		{"claim insurer display only", []string{"Claim?insurer=Organization/x"}, claimBody, false},
	})
}

func TestTypeFilterDate(t *testing.T) {
	// testNow, 2026-01-01: ap widens 2013-02-06 by ~1.3 years.
	patient := func(birth string) string {
		return `{"resourceType":"Patient","id":"p","birthDate":"` + birth + `"}`
	}
	obs := func(dt string) string {
		return `{"resourceType":"Observation","id":"o","status":"final","effectiveDateTime":"` + dt + `"}`
	}
	enc := func(period string) string {
		return `{"resourceType":"Encounter","id":"e","status":"finished","period":` + period + `}`
	}
	targets := []struct {
		name, body, param string
		want              string // eq ne gt lt ge le sa eb ap, 1 = match
	}{
		{"date same day", patient("2013-02-06"), "Patient?birthdate=", "100011001"},
		{"date day before", patient("2013-02-05"), "Patient?birthdate=", "010101011"},
		{"date two days after", patient("2013-02-08"), "Patient?birthdate=", "011010101"},
		{"date year precision", patient("2013"), "Patient?birthdate=", "011111001"},
		{"date long before", patient("2009-01-01"), "Patient?birthdate=", "010101010"},
		{"dateTime inside (offset)", obs("2013-02-06T16:30:49-05:00"), "Observation?date=", "100011001"},
		{"dateTime next UTC day (offset)", obs("2013-02-06T22:30:49-05:00"), "Observation?date=", "011010101"},
		{"dateTime just before", obs("2013-02-05T23:59:59Z"), "Observation?date=", "010101011"},
		{"dateTime no zone is UTC", obs("2013-02-06T00:00:00"), "Observation?date=", "100011001"},
		{"period inside", enc(`{"start":"2013-02-06T16:30:49-05:00","end":"2013-02-06T16:45:49-05:00"}`), "Encounter?date=", "100011001"},
		{"period straddles start", enc(`{"start":"2013-02-05T12:00:00Z","end":"2013-02-06T12:00:00Z"}`), "Encounter?date=", "010101001"},
		{"period open end", enc(`{"start":"2013-02-06T10:00:00Z"}`), "Encounter?date=", "011010001"},
		{"period open start", enc(`{"end":"2013-01-01"}`), "Encounter?date=", "010101011"},
		{"period after", enc(`{"start":"2013-02-07T00:00:00Z","end":"2013-02-08T00:00:00Z"}`), "Encounter?date=", "011010101"},
		{"period covers", enc(`{"start":"2013-02-01","end":"2013-02-28"}`), "Encounter?date=", "011111001"},
	}
	prefixes := []string{"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}
	for _, tg := range targets {
		for i, p := range prefixes {
			f := mustParse(t, tg.param+p+"2013-02-06")
			got, err := f.Match(resourceType(tg.body), []byte(tg.body))
			if err != nil {
				t.Fatalf("%s %s: %v", tg.name, p, err)
			}
			if want := tg.want[i] == '1'; got != want {
				t.Errorf("%s: %s2013-02-06 on %s: got %v, want %v", tg.name, p, tg.body, got, want)
			}
		}
	}
	// No prefix is eq.
	runMatch(t, []matchCase{
		{"default eq", []string{"Patient?birthdate=1965-01-13"}, patAbram, true},
		{"default eq month", []string{"Patient?birthdate=1965-01"}, patAbram, true},
		{"default eq year", []string{"Patient?birthdate=1965"}, patAbram, true},
		{"default eq neg", []string{"Patient?birthdate=1965-02"}, patAbram, false},
		{"dateTime search second precision", []string{"Observation?date=2011-02-02T21:30:49Z"}, obsHeight, true},
		{"dateTime search minute precision", []string{"Observation?date=2011-02-02T16:30-05:00"}, obsHeight, true},
		{"dateTime search no zone = UTC", []string{"Observation?date=2011-02-02T16:30:49"}, obsHeight, false},
		{"instant fraction precision", []string{"Observation?date=2020-05-05T05:05:05Z"}, obsGroup, true},
		{"instant ms eq", []string{"Observation?date=2020-05-05T05:05:05.123Z"}, obsGroup, true},
		{"instant ms gt", []string{"Observation?date=gt2020-05-05T05:05:05.122Z"}, obsGroup, true},
		{"instant ms lt", []string{"Observation?date=lt2020-05-05T05:05:05.123Z"}, obsGroup, false},
		{"bulk example gt", []string{"Observation?date=gt2018-07-01T00:00:00Z"}, obsHeight, false},
		{"effectivePeriod choice", []string{"Observation?date=2019-07-01"}, obsChol, true},
		{"range AND", []string{"Observation?date=ge2011-01-01&date=lt2012-01-01"}, obsHeight, true},
		{"range AND neg", []string{"Observation?date=ge2011-03-01&date=lt2012-01-01"}, obsHeight, false},
		{"date OR", []string{"Observation?date=lt2000,gt2019-06"}, obsChol, true},
		{"condition onset", []string{"Condition?onset-date=1985-06-18"}, condSinusitis, true},
		{"condition onset absent", []string{"Condition?onset-date=le2020"}, condResolved, false},
		{"condition recorded", []string{"Condition?recorded-date=gt2000"}, condResolved, true},
		{"_lastUpdated", []string{"Observation?_lastUpdated=gt2024-01-01"}, obsHeight, true},
		{"_lastUpdated neg", []string{"Observation?_lastUpdated=lt2024-03-01T10:00:00Z"}, obsHeight, false},
		{"_lastUpdated absent", []string{"Observation?_lastUpdated=gt2000"}, obsWeight, false},
		{"encounter period", []string{"Encounter?date=ge1985-06-18T21:30:00Z&date=le1985-06-18T22:00:00Z"}, encAmb, true},
	})
}

func TestTypeFilterString(t *testing.T) {
	orgBody := `{"resourceType":"Organization","id":"ef58ea08-d883-3957-8300-150554edc8fb","identifier":[{"system":"https://github.com/synthetichealth/synthea","value":"ef58ea08-d883-3957-8300-150554edc8fb"}],"active":true,"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/organization-type","code":"prov","display":"Healthcare Provider"}],"text":"Healthcare Provider"}],"name":"HEALTHALLIANCE HOSPITALS, INC","alias":["Leominster Hospital"]}`
	practBody := `{"resourceType":"Practitioner","id":"4edac2d9-adb7-3723-a5d2-40ca35ae9e17","identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"9999999999"}],"active":true,"name":[{"family":"Christiansen","given":["Darlena"],"prefix":["Dr."]}],"gender":"female"}`
	runMatch(t, []matchCase{
		{"family starts-with", []string{"Patient?family=lem"}, patAbram, true},
		{"family not inside", []string{"Patient?family=emke"}, patAbram, false},
		{"family case", []string{"Patient?family=LEMKE"}, patAbram, true},
		{"family exact", []string{"Patient?family:exact=Lemke"}, patAbram, true},
		{"family exact case", []string{"Patient?family:exact=lemke"}, patAbram, false},
		{"family exact prefix", []string{"Patient?family:exact=Lem"}, patAbram, false},
		{"family contains", []string{"Patient?family:contains=EMK"}, patAbram, true},
		{"family contains neg", []string{"Patient?family:contains=xyz"}, patAbram, false},
		{"given array in array", []string{"Patient?given=ab"}, patAbram, true},
		{"given second name", []string{"Patient?given=teresa"}, patMaria, true},
		{"given accent-insensitive", []string{"Patient?given=maria"}, patMaria, true},
		{"family accent-insensitive", []string{"Patient?family=muller"}, patMaria, true},
		{"family exact accent", []string{"Patient?family:exact=Muller"}, patMaria, false},
		{"family exact accent pos", []string{"Patient?family:exact=Müller"}, patMaria, true},
		{"name family", []string{"Patient?name=carras"}, patMaria, true},
		{"name given", []string{"Patient?name=abr"}, patAbram, true},
		{"name text", []string{"Patient?name:contains=teresa müller"}, patMaria, true},
		{"name prefix is not searched", []string{"Patient?name=mr"}, patAbram, false},
		{"name OR", []string{"Patient?name=zzz,lemke"}, patAbram, true},
		{"name absent", []string{"Patient?name=a"}, patBare, false},
		{"org name", []string{"Organization?name=healthalliance"}, orgBody, true},
		{"org alias", []string{"Organization?name=leominster"}, orgBody, true},
		{"org name neg", []string{"Organization?name=hospitals"}, orgBody, false},
		{"org name contains", []string{"Organization?name:contains=hospitals"}, orgBody, true},
		{"org name escaped comma", []string{`Organization?name:exact=HEALTHALLIANCE HOSPITALS\, INC`}, orgBody, true},
		{"org type", []string{"Organization?type=prov"}, orgBody, true},
		{"org identifier", []string{"Organization?identifier=ef58ea08-d883-3957-8300-150554edc8fb"}, orgBody, true},
		{"practitioner given", []string{"Practitioner?given=darl"}, practBody, true},
		{"practitioner family", []string{"Practitioner?family=christ&active=true"}, practBody, true},
		{"practitioner identifier", []string{"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999"}, practBody, true},
		{"practitioner name neg", []string{"Practitioner?name=otis"}, practBody, false},
	})
}

func TestTypeFilterMissing(t *testing.T) {
	runMatch(t, []matchCase{
		{"encounter present, missing=true", []string{"Observation?encounter:missing=true"}, obsHeight, false},
		{"encounter present, missing=false", []string{"Observation?encounter:missing=false"}, obsHeight, true},
		{"encounter absent, missing=true", []string{"Observation?encounter:missing=true"}, obsChol, true},
		{"encounter absent, missing=false", []string{"Observation?encounter:missing=false"}, obsChol, false},
		{"token", []string{"Patient?gender:missing=true"}, patBare, true},
		{"token present", []string{"Patient?gender:missing=true"}, patAbram, false},
		{"boolean false is a value", []string{"Patient?active:missing=false"}, patBare, true},
		{"date choice absent", []string{"Condition?onset-date:missing=true"}, condResolved, true},
		{"date choice present", []string{"Condition?onset-date:missing=true"}, condSinusitis, false},
		{"date choice period", []string{"Observation?date:missing=false"}, obsChol, true},
		{"string nested", []string{"Patient?given:missing=false"}, patMaria, true},
		{"string absent", []string{"Patient?family:missing=true"}, patBare, true},
		{"empty array is missing", []string{"Patient?general-practitioner:missing=true"}, patMaria, true},
		{"array present", []string{"Patient?general-practitioner:missing=true"}, patAbram, false},
		{"patient restricted: Group subject", []string{"Observation?patient:missing=true"}, obsGroup, true},
		{"patient restricted: subject missing=false", []string{"Observation?subject:missing=false"}, obsGroup, true},
		{"patient restricted: Patient subject", []string{"Observation?patient:missing=false"}, obsHeight, true},
		{"_lastUpdated", []string{"Observation?_lastUpdated:missing=true"}, obsWeight, true},
		{"and with values", []string{"Observation?code=8302-2&encounter:missing=false"}, obsGroup, false},
	})
}

func TestTypeFilterMalformedBody(t *testing.T) {
	f := mustParse(t, "Observation?code=8302-2&date=gt2000&subject=x", "Patient?name=a")
	tests := []struct {
		typ, body, want string
	}{
		{"Observation", `{"resourceType":"Observation",`, "not valid JSON"},
		{"Observation", `[{"resourceType":"Observation"}]`, "not a JSON object"},
		{"Observation", `"Observation"`, "not a JSON object"},
		{"Observation", `{"resourceType":"Patient","id":"x"}`, "resourceType"},
		{"Observation", `{"id":"x"}`, "resourceType"},
		{"Observation", `{"resourceType":"Observation","code":7}`, "code"},
		{"Observation", `{"resourceType":"Observation","code":{"coding":{"code":"8302-2"}}}`, "code.coding"},
		{"Observation", `{"resourceType":"Observation","code":{"coding":[{"code":8302}]}}`, "code.code"},
		{"Observation", `{"resourceType":"Observation","code":{"coding":[{"code":"8302-2"}]},"effectiveDateTime":"yesterday"}`, "effectiveDateTime"},
		{"Observation", `{"resourceType":"Observation","code":{"coding":[{"code":"8302-2"}]},"effectivePeriod":{"start":"2020-02-30"}}`, "effectivePeriod.start"},
		{"Observation", `{"resourceType":"Observation","code":{"coding":[{"code":"8302-2"}]},"effectiveDateTime":"2020-01-01","subject":"Patient/x"}`, "subject"},
		{"Observation", `{"resourceType":"Observation","code":{"coding":[{"code":"8302-2"}]},"effectiveDateTime":"2020-01-01","subject":{"reference":1}}`, "subject.reference"},
		{"Patient", `{"resourceType":"Patient","name":{"family":7}}`, "name.family"},
		{"Patient", `{"resourceType":"Patient","name":["a"]}`, "name.family"},
	}
	for _, tc := range tests {
		ok, err := f.Match(tc.typ, []byte(tc.body))
		if err == nil {
			t.Errorf("Match(%s) = %v, nil; want an error", tc.body, ok)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "malformed "+tc.typ) {
			t.Errorf("Match(%s) error %q, want it to mention %q", tc.body, err, tc.want)
		}
	}
	// Null is absence, and members the filter does not read are not checked.
	for _, body := range []string{
		`{"resourceType":"Observation","code":null,"effectiveDateTime":7}`,
		`{"resourceType":"Observation","valueQuantity":"odd","code":{"coding":[null,{"code":"1"}]}}`,
		" \n{ \"resourceType\" : \"Observation\" , \"c\\u006fde\" : { } } ",
	} {
		if ok, err := f.Match("Observation", []byte(body)); err != nil || ok {
			t.Errorf("Match(%s) = %v, %v; want false, nil", body, ok, err)
		}
	}
	// An escaped key is read under its real name.
	g := mustParse(t, "Observation?code=8302-2")
	if ok, err := g.Match("Observation", []byte(`{"resourceType":"Observation","c\u006fde":{"coding":[{"code":"8302-2"}]}}`)); err != nil || !ok {
		t.Errorf("escaped key: %v, %v", ok, err)
	}
}

func TestTypeFilterSupported(t *testing.T) {
	s := Supported()
	checks := map[string]map[string]string{
		"Patient":              {"_id": "token", "_lastUpdated": "date", "gender": "token", "birthdate": "date", "family": "string", "general-practitioner": "reference"},
		"Observation":          {"code": "token", "patient": "reference", "date": "date"},
		"ExplanationOfBenefit": {"coverage": "reference", "created": "date"},
		"Device":               {"_id": "token", "_lastUpdated": "date"},
	}
	for typ, params := range checks {
		for p, k := range params {
			if s[typ][p] != k {
				t.Errorf("Supported()[%s][%s] = %q, want %q", typ, p, s[typ][p], k)
			}
		}
	}
	if len(s["Device"]) != 2 {
		t.Errorf("Device supports %v, want only _id and _lastUpdated", s["Device"])
	}
	// The table is consistent, and every row can be parsed with :missing.
	for typ, params := range table {
		for name, sp := range params {
			if sp.Kind != kindReference && sp.Target != "" || sp.Kind != kindToken && sp.System != "" {
				t.Errorf("%s.%s: Target/System on a %s parameter", typ, name, sp.Kind)
			}
			if (name == "patient") != (sp.Target == "Patient") {
				t.Errorf("%s.%s: Target %q", typ, name, sp.Target)
			}
			if _, err := Parse([]string{typ + "?" + name + ":missing=false"}); err != nil {
				t.Errorf("%s.%s: %v", typ, name, err)
			}
		}
	}
}

// TestTypeFilterDocTable keeps the table in doc.go in step with the code.
func TestTypeFilterDocTable(t *testing.T) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	start := strings.Index(text, "// and these types support more")
	end := strings.Index(text, "// The paths follow")
	if start < 0 || end < start {
		t.Fatal("doc.go: parameter table not found")
	}
	got := map[string]map[string]spec{}
	typ := ""
	for _, line := range strings.Split(text[start:end], "\n") {
		if !strings.HasPrefix(line, "//\t") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, "//\t"))
		if !strings.HasPrefix(line, "//\t ") {
			typ, fields = fields[0], fields[1:]
			got[typ] = map[string]spec{}
		}
		s := spec{Kind: fields[1]}
		rest := strings.Join(fields[2:], " ")
		if p, ok := strings.CutSuffix(rest, " (Patient only)"); ok {
			rest, s.Target = p, "Patient"
		}
		s.Paths = strings.Split(strings.ReplaceAll(rest, " | ", "|"), "|")
		got[typ][fields[0]] = s
	}
	if len(got) != len(table) {
		t.Errorf("doc.go lists %d types, table has %d", len(got), len(table))
	}
	for typ, params := range table {
		if len(got[typ]) != len(params) {
			t.Errorf("%s: doc.go lists %d parameters, table has %d", typ, len(got[typ]), len(params))
		}
		for name, s := range params {
			d := got[typ][name]
			if d.Kind != s.Kind || d.Target != s.Target || !reflect.DeepEqual(d.Paths, s.Paths) {
				t.Errorf("%s %s: doc.go says %+v, table has %+v", typ, name, d, s)
			}
		}
	}
	for name, s := range common {
		want := "//\t" + name
		if !strings.Contains(text, want) || !strings.Contains(text, s.Paths[0]) {
			t.Errorf("doc.go does not document %s", name)
		}
	}
}
