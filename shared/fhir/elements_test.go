package fhir

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

const tagJSON = `{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}`

func TestFHIRElementsParse(t *testing.T) {
	cases := []struct {
		name    string
		values  []string
		wantErr string // substring; "" for success
		zero    bool
	}{
		{"no values", nil, "", true},
		{"empty list", []string{}, "", true},
		{"bare", []string{"birthDate"}, "", false},
		{"qualified", []string{"Patient.birthDate"}, "", false},
		{"comma list with blanks", []string{"Patient.gender, birthDate ,Observation.value"}, "", false},
		{"several values", []string{"Patient.gender", "code"}, "", false},
		{"empty value", []string{""}, `empty item in ""`, false},
		{"empty item", []string{"Patient.id,,name"}, `empty item in "Patient.id,,name"`, false},
		{"trailing comma", []string{"name,"}, "empty item", false},
		{"blank item", []string{"name, ,gender"}, "empty item", false},
		{"nested", []string{"Patient.name.family"}, `"Patient.name.family": only top-level elements`, false},
		{"nested bare", []string{"name.family"}, `"name.family": unknown resource type "name" (only top-level elements`, false},
		{"unknown type", []string{"Patiant.name"}, `"Patiant.name": unknown resource type "Patiant"`, false},
		{"empty type", []string{".name"}, `".name": unknown resource type ""`, false},
		{"lowercase type", []string{"patient.name"}, `unknown resource type "patient"`, false},
		{"uppercase element", []string{"Patient.Name"}, `"Patient.Name": element name "Name"`, false},
		{"empty element", []string{"Patient."}, `"Patient.": element name ""`, false},
		{"underscore element", []string{"_birthDate"}, `"_birthDate": element name`, false},
		{"dash in element", []string{"birth-date"}, `"birth-date": element name`, false},
		{"choice marker", []string{"Observation.value[x]"}, `element name "value[x]"`, false},
		{"bare type name", []string{"Patient"}, `"Patient": element name`, false},
		{"error after good items", []string{"id", "Observation.code,Foo.bar"}, `"Foo.bar": unknown resource type`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := ParseElements(c.values)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseElements(%q) error = %v", c.values, err)
				}
				if e.IsZero() != c.zero {
					t.Fatalf("IsZero() = %v, want %v", e.IsZero(), c.zero)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("ParseElements(%q) error = %v, want it to contain %q", c.values, err, c.wantErr)
			}
			if !e.IsZero() {
				t.Fatalf("failed parse returned a non-zero Elements")
			}
		})
	}
}

func TestFHIRElementsApply(t *testing.T) {
	cases := []struct {
		name     string
		elements []string
		typ      string
		in       string
		want     string
		subsets  bool
	}{
		{
			name:     "bare element applies to every type",
			elements: []string{"subject"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","id":"o","status":"final","category":[{"text":"c"}],"code":{"text":"x"},"subject":{"reference":"Patient/p"},"issued":"2020"}`,
			want:     `{"resourceType":"Observation","id":"o","meta":{"tag":[` + tagJSON + `]},"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"}}`,
			subsets:  true,
		},
		{
			name:     "type-qualified element applies to its type",
			elements: []string{"Patient.gender,Observation.issued"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","gender":"male","issued":"x","birthDate":"2000"}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `]},"gender":"male"}`,
			subsets:  true,
		},
		{
			name:     "bare and qualified are a union",
			elements: []string{"Patient.gender", "birthDate"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","name":[{"family":"F"}],"gender":"male","birthDate":"2000"}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `]},"gender":"male","birthDate":"2000"}`,
			subsets:  true,
		},
		{
			name:     "bare elements reach a type no qualified item names",
			elements: []string{"Patient.gender,note"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","id":"o","status":"final","code":{},"gender":"x","note":[{"text":"n"}],"issued":"2020"}`,
			want:     `{"resourceType":"Observation","id":"o","meta":{"tag":[` + tagJSON + `]},"status":"final","code":{},"note":[{"text":"n"}]}`,
			subsets:  true,
		},
		{
			name:     "untouched type when only other types are qualified keeps mandatory only",
			elements: []string{"Patient.birthDate"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"},"valueQuantity":{"value":1}}`,
			want:     `{"resourceType":"Observation","id":"o","meta":{"tag":[` + tagJSON + `]},"status":"final","code":{"text":"x"}}`,
			subsets:  true,
		},
		{
			name:     "untouched type without mandatory elements keeps the header",
			elements: []string{"Observation.value"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","meta":{"versionId":"2"},"gender":"male","birthDate":"2000"}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"versionId":"2","tag":[` + tagJSON + `]}}`,
			subsets:  true,
		},
		{
			name:     "mandatory elements are always kept",
			elements: []string{"Observation.subject"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"},"effectiveDateTime":"2020"}`,
			want:     `{"resourceType":"Observation","id":"o","meta":{"tag":[` + tagJSON + `]},"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"}}`,
			subsets:  true,
		},
		{
			name:     "choice element keeps its typed keys and their companions",
			elements: []string{"Observation.value"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","id":"o","status":"final","code":{},"valueQuantity":{"value":1},"valueSet":"x","valuex":1,"value":2,"_valueString":{"id":"e"},"effectivePeriod":{}}`,
			want:     `{"resourceType":"Observation","id":"o","meta":{"tag":[` + tagJSON + `]},"status":"final","code":{},"valueQuantity":{"value":1},"valueSet":"x","value":2,"_valueString":{"id":"e"}}`,
			subsets:  true,
		},
		{
			name:     "a non-choice element only matches its exact key",
			elements: []string{"name"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","name":[],"nameUse":"x","deceasedBoolean":false}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `]},"name":[]}`,
			subsets:  true,
		},
		{
			name:     "bare choice element expands per type",
			elements: []string{"deceased"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","deceasedDateTime":"2020","_deceasedDateTime":{"id":"x"},"gender":"male"}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `]},"deceasedDateTime":"2020","_deceasedDateTime":{"id":"x"}}`,
			subsets:  true,
		},
		{
			name:     "exact choice key asked",
			elements: []string{"Observation.valueString"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","status":"final","code":{},"valueString":"s","valueQuantity":{}}`,
			want:     `{"resourceType":"Observation","meta":{"tag":[` + tagJSON + `]},"status":"final","code":{},"valueString":"s"}`,
			subsets:  true,
		},
		{
			name:     "required choice element keeps any medication key",
			elements: []string{"MedicationRequest.note"},
			typ:      "MedicationRequest",
			in:       `{"resourceType":"MedicationRequest","id":"m","status":"active","intent":"order","medicationCodeableConcept":{"text":"x"},"subject":{"reference":"Patient/p"},"authoredOn":"2020","note":[]}`,
			want:     `{"resourceType":"MedicationRequest","id":"m","meta":{"tag":[` + tagJSON + `]},"status":"active","intent":"order","medicationCodeableConcept":{"text":"x"},"subject":{"reference":"Patient/p"},"note":[]}`,
			subsets:  true,
		},
		{
			name:     "birthDate keeps _birthDate",
			elements: []string{"Patient.birthDate"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","gender":"male","_gender":{"id":"g"},"birthDate":"2000","_birthDate":{"extension":[{"url":"u","valueDateTime":"2000-01-01T10:00:00Z"}]}}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `]},"birthDate":"2000","_birthDate":{"extension":[{"url":"u","valueDateTime":"2000-01-01T10:00:00Z"}]}}`,
			subsets:  true,
		},
		{
			name:     "existing meta.tag array gets SUBSETTED appended and other meta members stay",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","meta":{"versionId":"3","tag":[{"system":"s","code":"c"}],"lastUpdated":"T"},"gender":"male","active":true}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"versionId":"3","tag":[{"system":"s","code":"c"},` + tagJSON + `],"lastUpdated":"T"},"gender":"male"}`,
			subsets:  true,
		},
		{
			name:     "SUBSETTED already tagged is not duplicated",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `,{"code":"x"}]},"gender":"male","active":true}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `,{"code":"x"}]},"gender":"male"}`,
			subsets:  true,
		},
		{
			name:     "SUBSETTED code from another system is not ours",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","meta":{"tag":[{"system":"other","code":"SUBSETTED"}]},"active":true}`,
			want:     `{"resourceType":"Patient","meta":{"tag":[{"system":"other","code":"SUBSETTED"},` + tagJSON + `]}}`,
			subsets:  true,
		},
		{
			name:     "meta without tag gets one at its end",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"meta":{"versionId":"1","security":[{"code":"s"}]},"resourceType":"Patient","id":"p","active":true}`,
			want:     `{"meta":{"versionId":"1","security":[{"code":"s"}],"tag":[` + tagJSON + `]},"resourceType":"Patient","id":"p"}`,
			subsets:  true,
		},
		{
			name:     "empty meta, empty tag array, null tag and null meta",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","meta":{ "tag" : [ ] },"active":true}`,
			want:     `{"resourceType":"Patient","meta":{"tag":[` + tagJSON + `]}}`,
			subsets:  true,
		},
		{
			name:     "null tag",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","meta":{"tag":null,"source":"s"},"active":true}`,
			want:     `{"resourceType":"Patient","meta":{"tag":[` + tagJSON + `],"source":"s"}}`,
			subsets:  true,
		},
		{
			name:     "null meta",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","meta":null,"active":true}`,
			want:     `{"resourceType":"Patient","meta":{"tag":[` + tagJSON + `]}}`,
			subsets:  true,
		},
		{
			name:     "empty meta object",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","meta":{},"active":true}`,
			want:     `{"resourceType":"Patient","meta":{"tag":[` + tagJSON + `]}}`,
			subsets:  true,
		},
		{
			name:     "no meta and no id: meta follows resourceType",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","gender":"male","active":true}`,
			want:     `{"resourceType":"Patient","meta":{"tag":[` + tagJSON + `]},"gender":"male"}`,
			subsets:  true,
		},
		{
			name:     "no header at all: meta comes first",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{"gender":"male","active":true}`,
			want:     `{"meta":{"tag":[` + tagJSON + `]},"gender":"male"}`,
			subsets:  true,
		},
		{
			name:     "no tag when nothing removed",
			elements: []string{"Patient.birthDate,gender"},
			typ:      "Patient",
			in:       `{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},"birthDate":"2000","_birthDate":{"id":"b"}}`,
			want:     `{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},"birthDate":"2000","_birthDate":{"id":"b"}}`,
			subsets:  false,
		},
		{
			name:     "no tag when only mandatory and header members are present",
			elements: []string{"Patient.gender"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","id":"o","status":"final","code":{}}`,
			want:     `{"resourceType":"Observation","id":"o","status":"final","code":{}}`,
			subsets:  false,
		},
		{
			name:     "type with an empty requiredElements entry keeps header plus asked",
			elements: []string{"Organization.name"},
			typ:      "Organization",
			in:       `{"resourceType":"Organization","id":"x","active":true,"name":"N","type":[{}]}`,
			want:     `{"resourceType":"Organization","id":"x","meta":{"tag":[` + tagJSON + `]},"name":"N"}`,
			subsets:  true,
		},
		{
			name:     "type with no requiredElements entry keeps header plus asked",
			elements: []string{"status,name"},
			typ:      "SubscriptionStatus", // R4B, not R4: no entry
			in:       `{"resourceType":"SubscriptionStatus","id":"s","status":"active","type":"event-notification","subscription":{}}`,
			want:     `{"resourceType":"SubscriptionStatus","id":"s","meta":{"tag":[` + tagJSON + `]},"status":"active"}`,
			subsets:  true,
		},
		{
			name:     "whitespace between members is dropped, inside values kept",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       "{\n  \"resourceType\" : \"Patient\",\n  \"id\": \"p\",\n  \"gender\" :\t\"male\" ,\n  \"name\": [ {\"text\": \"a,b}\"} ]\n}\n",
			want:     `{"resourceType":"Patient","id":"p","meta":{"tag":[` + tagJSON + `]},"gender":"male"}`,
			subsets:  true,
		},
		{
			name:     "values keep their bytes",
			elements: []string{"Observation.value"},
			typ:      "Observation",
			in:       `{"resourceType":"Observation","status":"final","code":{ "text" : "\u00e9\"}" },"valueQuantity":{"value":1.50e0},"note":[1]}`,
			want:     `{"resourceType":"Observation","meta":{"tag":[` + tagJSON + `]},"status":"final","code":{ "text" : "\u00e9\"}" },"valueQuantity":{"value":1.50e0}}`,
			subsets:  true,
		},
		{
			name: "zero Elements removes nothing",
			typ:  "Patient",
			in:   `{ "resourceType":"Patient", "id":"p", "gender":"male" }`,
			want: `{"resourceType":"Patient","id":"p","gender":"male"}`,
		},
		{
			name:     "empty object",
			elements: []string{"gender"},
			typ:      "Patient",
			in:       `{}`,
			want:     `{}`,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := ParseElements(c.elements)
			if err != nil {
				t.Fatal(err)
			}
			prefix := []byte("PREFIX")
			got, subsetted, err := e.Apply(append([]byte(nil), prefix...), c.typ, []byte(c.in))
			if err != nil {
				t.Fatalf("Apply error = %v", err)
			}
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("Apply lost dst: %s", got)
			}
			got = got[len(prefix):]
			if string(got) != c.want {
				t.Errorf("Apply =\n %s\nwant\n %s", got, c.want)
			}
			if subsetted != c.subsets {
				t.Errorf("subsetted = %v, want %v", subsetted, c.subsets)
			}
			if !json.Valid(got) {
				t.Fatalf("output is not valid JSON: %s", got)
			}
			checkKeptMembers(t, []byte(c.in), got, subsetted)
			if bytes.Count(got, []byte(`"SUBSETTED"`)) > 1 && !bytes.Contains([]byte(c.in), []byte(`"other"`)) {
				t.Errorf("SUBSETTED tagged more than once: %s", got)
			}
		})
	}
}

// checkKeptMembers checks that every member of out is a member of in with
// the same bytes (meta excepted when subsetted), in the same order.
func checkKeptMembers(t *testing.T, in, out []byte, subsetted bool) {
	t.Helper()
	inFields, err := topLevel(in)
	if err != nil {
		t.Fatal(err)
	}
	outFields, err := topLevel(out)
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	for _, of := range outFields {
		key := string(of.key(out))
		if key == "meta" && subsetted {
			continue
		}
		found := false
		for next < len(inFields) {
			f := inFields[next]
			next++
			if string(f.key(in)) == key {
				if !bytes.Equal(in[f.vs:f.ve], out[of.vs:of.ve]) {
					t.Errorf("member %s changed: %s -> %s", key, in[f.vs:f.ve], out[of.vs:of.ve])
				}
				found = true
				break
			}
		}
		if !found {
			t.Errorf("member %s is not in the input or is out of order", key)
		}
	}
}

func TestFHIRElementsApplyTagIsValidFHIR(t *testing.T) {
	e, err := ParseElements([]string{"gender"})
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := e.Apply(nil, "Patient", []byte(`{"resourceType":"Patient","meta":{"tag":[{"code":"a"}]},"active":true}`))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Meta struct {
			Tag []struct{ System, Code string }
		}
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Meta.Tag) != 2 || r.Meta.Tag[1].System != "http://terminology.hl7.org/CodeSystem/v3-ObservationValue" || r.Meta.Tag[1].Code != "SUBSETTED" {
		t.Fatalf("meta.tag = %+v", r.Meta.Tag)
	}
	// Applying again to the output removes nothing more and tags nothing more.
	again, subsetted, err := e.Apply(nil, "Patient", out)
	if err != nil || subsetted || !bytes.Equal(again, out) {
		t.Fatalf("second Apply = %s, %v, %v; want %s unchanged", again, subsetted, err, out)
	}
}

func TestFHIRElementsApplyErrors(t *testing.T) {
	e, err := ParseElements([]string{"gender"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, in, wantErr string }{
		{"array", `[1]`, "not a JSON object"},
		{"string", `"x"`, "not a JSON object"},
		{"meta not an object", `{"resourceType":"Patient","meta":"m","active":true}`, "meta"},
		{"tag not an array", `{"resourceType":"Patient","meta":{"tag":{"code":"x"}},"active":true}`, "meta.tag is not an array"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dst := []byte("keep")
			got, subsetted, err := e.Apply(dst, "Patient", []byte(c.in))
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("Apply(%s) error = %v, want %q", c.in, err, c.wantErr)
			}
			if subsetted || string(got) != "keep" {
				t.Fatalf("Apply on error = %q, %v; want dst unchanged", got, subsetted)
			}
		})
	}
	// A meta that is not an object is fine when nothing is removed.
	if _, _, err := e.Apply(nil, "Patient", []byte(`{"resourceType":"Patient","meta":"m","gender":"x"}`)); err != nil {
		t.Fatalf("untrimmed resource: %v", err)
	}
}

func TestFHIRElementsRequiredTable(t *testing.T) {
	for _, typ := range ResourceTypes() {
		if _, ok := requiredElements[typ]; !ok {
			t.Errorf("requiredElements has no entry for R4 type %s", typ)
		}
	}
	for typ, els := range requiredElements {
		if !IsResourceType(typ) {
			t.Errorf("requiredElements has non-R4 type %s", typ)
		}
		for _, el := range els {
			base, choice := strings.CutSuffix(el, "[x]")
			if !validElementName(base) {
				t.Errorf("%s: bad element name %q", typ, el)
			}
			if choice && !contains(choiceElements[typ], base) {
				t.Errorf("%s: required %s missing from choiceElements", typ, el)
			}
			if base == "resourceType" || base == "id" || base == "meta" {
				t.Errorf("%s: %s need not be listed", typ, el)
			}
		}
	}
	for typ, els := range choiceElements {
		if !IsResourceType(typ) {
			t.Errorf("choiceElements has non-R4 type %s", typ)
		}
		for _, el := range els {
			if !validElementName(el) {
				t.Errorf("%s: bad choice name %q", typ, el)
			}
		}
	}
	want := map[string]string{
		"Patient":                  "",
		"Observation":              "status code",
		"Condition":                "subject",
		"Encounter":                "status class",
		"Procedure":                "status subject",
		"MedicationRequest":        "status intent medication[x] subject",
		"Immunization":             "status vaccineCode patient occurrence[x]",
		"AllergyIntolerance":       "patient",
		"DiagnosticReport":         "status code",
		"CarePlan":                 "status intent subject",
		"CareTeam":                 "",
		"Claim":                    "status type use patient created provider priority insurance",
		"ExplanationOfBenefit":     "status type use patient created insurer provider outcome insurance",
		"Coverage":                 "status beneficiary payor",
		"Organization":             "",
		"Practitioner":             "",
		"Device":                   "",
		"ImagingStudy":             "status subject",
		"DocumentReference":        "status content",
		"Provenance":               "target recorded agent",
		"Group":                    "type actual",
		"Goal":                     "lifecycleStatus description subject",
		"MedicationAdministration": "status medication[x] subject effective[x]",
		"MedicationStatement":      "status medication[x] subject",
		"ServiceRequest":           "status intent subject",
		"Location":                 "",
		"PractitionerRole":         "",
		"Medication":               "",
		"RelatedPerson":            "patient",
		"Specimen":                 "",
		"FamilyMemberHistory":      "status patient relationship",
		"Consent":                  "status scope category",
		"Binary":                   "contentType",
		"Bundle":                   "type",
		"OperationOutcome":         "issue",
	}
	for typ, w := range want {
		if got := strings.Join(requiredElements[typ], " "); got != w {
			t.Errorf("requiredElements[%s] = %q, want %q", typ, got, w)
		}
	}
	choices := map[string]string{
		"Observation":              "effective value",
		"Condition":                "onset abatement",
		"MedicationRequest":        "reported medication",
		"Procedure":                "performed",
		"Immunization":             "occurrence",
		"Encounter":                "",
		"Patient":                  "deceased multipleBirth",
		"AllergyIntolerance":       "onset",
		"DiagnosticReport":         "effective",
		"Claim":                    "",
		"ExplanationOfBenefit":     "",
		"CarePlan":                 "",
		"DocumentReference":        "",
		"Coverage":                 "",
		"MedicationStatement":      "medication effective",
		"MedicationAdministration": "medication effective",
		"MedicationDispense":       "statusReason medication",
		"Goal":                     "start",
		"FamilyMemberHistory":      "born age deceased",
		"RiskAssessment":           "occurrence",
		"ServiceRequest":           "quantity occurrence asNeeded",
		"DeviceRequest":            "code occurrence",
		"Specimen":                 "",
	}
	for typ, w := range choices {
		if got := strings.Join(choiceElements[typ], " "); got != w {
			t.Errorf("choiceElements[%s] = %q, want %q", typ, got, w)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func BenchmarkFHIRElementsApply(b *testing.B) {
	e, err := ParseElements([]string{"Observation.subject,Observation.value,Patient.birthDate"})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"resourceType":"Observation","id":"obs-1","meta":{"versionId":"3","lastUpdated":"2024-01-01T00:00:00Z","tag":[{"system":"s","code":"c"}]},` +
		`"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],` +
		`"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/p1"},` +
		`"encounter":{"reference":"Encounter/e1"},"effectiveDateTime":"2024-01-01T00:00:00Z","issued":"2024-01-01T00:00:00Z",` +
		`"performer":[{"reference":"Practitioner/x"}],"valueQuantity":{"value":72,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"},` +
		`"interpretation":[{"text":"normal"}],"note":[{"text":"resting"}]}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var dst []byte
	for b.Loop() {
		dst, _, err = e.Apply(dst[:0], "Observation", body)
		if err != nil {
			b.Fatal(err)
		}
	}
}
