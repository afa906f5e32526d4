package compartment

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

// r4PatientCompartment is FHIR R4 (4.0.1) CompartmentDefinition/patient:
// every resource type with inclusion parameters, and those parameters.
var r4PatientCompartment = map[string][]string{
	"Account":                     {"subject"},
	"AdverseEvent":                {"subject"},
	"AllergyIntolerance":          {"patient", "recorder", "asserter"},
	"Appointment":                 {"actor"},
	"AppointmentResponse":         {"actor"},
	"AuditEvent":                  {"patient"},
	"Basic":                       {"patient", "author"},
	"BodyStructure":               {"patient"},
	"CarePlan":                    {"patient", "performer"},
	"CareTeam":                    {"patient", "participant"},
	"ChargeItem":                  {"subject"},
	"Claim":                       {"patient", "payee"},
	"ClaimResponse":               {"patient"},
	"ClinicalImpression":          {"subject"},
	"Communication":               {"subject", "sender", "recipient"},
	"CommunicationRequest":        {"subject", "sender", "recipient", "requester"},
	"Composition":                 {"subject", "author", "attester"},
	"Condition":                   {"patient", "asserter"},
	"Consent":                     {"patient"},
	"Coverage":                    {"policy-holder", "subscriber", "beneficiary", "payor"},
	"CoverageEligibilityRequest":  {"patient"},
	"CoverageEligibilityResponse": {"patient"},
	"DetectedIssue":               {"patient"},
	"DeviceRequest":               {"subject", "performer"},
	"DeviceUseStatement":          {"subject"},
	"DiagnosticReport":            {"subject"},
	"DocumentManifest":            {"subject", "author", "recipient"},
	"DocumentReference":           {"subject", "author"},
	"Encounter":                   {"patient"},
	"EnrollmentRequest":           {"subject"},
	"EpisodeOfCare":               {"patient"},
	"ExplanationOfBenefit":        {"patient", "payee"},
	"FamilyMemberHistory":         {"patient"},
	"Flag":                        {"patient"},
	"Goal":                        {"patient"},
	"Group":                       {"member"},
	"ImagingStudy":                {"patient"},
	"Immunization":                {"patient"},
	"ImmunizationEvaluation":      {"patient"},
	"ImmunizationRecommendation":  {"patient"},
	"Invoice":                     {"subject", "patient", "recipient"},
	"List":                        {"subject", "source"},
	"MeasureReport":               {"patient"},
	"Media":                       {"subject"},
	"MedicationAdministration":    {"patient", "performer", "subject"},
	"MedicationDispense":          {"subject", "patient", "receiver"},
	"MedicationRequest":           {"subject"},
	"MedicationStatement":         {"subject"},
	"MolecularSequence":           {"patient"},
	"NutritionOrder":              {"patient"},
	"Observation":                 {"subject", "performer"},
	"Patient":                     {"link"},
	"Person":                      {"patient"},
	"Procedure":                   {"patient", "performer"},
	"Provenance":                  {"patient"},
	"QuestionnaireResponse":       {"subject", "author"},
	"RelatedPerson":               {"patient"},
	"RequestGroup":                {"subject", "participant"},
	"ResearchSubject":             {"individual"},
	"RiskAssessment":              {"subject"},
	"Schedule":                    {"actor"},
	"ServiceRequest":              {"subject", "performer"},
	"Specimen":                    {"subject"},
	"SupplyDelivery":              {"patient"},
	"SupplyRequest":               {"subject"},
	"VisionPrescription":          {"patient"},
}

// participantParams are the roles the export policy never follows, except
// "actor" where it is a type's only parameter.
var participantParams = []string{
	"performer", "author", "asserter", "recorder", "sender", "recipient", "payee",
	"participant", "attester", "receiver", "requester", "source",
	"policy-holder", "subscriber", "payor",
}

func TestCompartmentTypes(t *testing.T) {
	var want []string
	for typ := range r4PatientCompartment {
		if typ != "Group" {
			want = append(want, typ)
		}
	}
	slices.Sort(want)
	got := Types()
	if !slices.Equal(got, want) {
		t.Fatalf("Types() =\n%v\nwant\n%v", got, want)
	}
	got[0] = "mutated"
	if Types()[0] == "mutated" {
		t.Fatal("Types returns shared storage")
	}
	for _, typ := range want {
		if !InCompartment(typ) {
			t.Errorf("InCompartment(%q) = false", typ)
		}
	}
	for _, typ := range []string{"Group", "Organization", "Practitioner", "Device", "Location", "Medication", "Bundle", "", "patient", "Foo"} {
		if InCompartment(typ) {
			t.Errorf("InCompartment(%q) = true", typ)
		}
	}
}

// TestCompartmentTable checks the path table against R4 and the policy:
// every parameter used is an R4 compartment parameter of its type, no
// participant role is used, and "actor" only where it is the only one.
func TestCompartmentTable(t *testing.T) {
	for typ, links := range patientLinks {
		r4, ok := r4PatientCompartment[typ]
		if !ok {
			t.Errorf("%s is not in R4 CompartmentDefinition/patient", typ)
			continue
		}
		if len(links) == 0 {
			t.Errorf("%s has no paths", typ)
		}
		for _, l := range links {
			if !slices.Contains(r4, l.Param) {
				t.Errorf("%s: param %q is not an R4 compartment param (%v)", typ, l.Param, r4)
			}
			if slices.Contains(participantParams, l.Param) {
				t.Errorf("%s: param %q is a participant role", typ, l.Param)
			}
			if l.Param == "actor" && len(r4) != 1 {
				t.Errorf("%s: actor used although other params exist", typ)
			}
			if l.Path == "" || strings.HasPrefix(l.Path, typ+".") {
				t.Errorf("%s: path %q must be relative to the resource", typ, l.Path)
			}
		}
	}
	for typ := range r4PatientCompartment {
		_, inTable := patientLinks[typ]
		if typ == "Group" || typ == "Patient" {
			if inTable {
				t.Errorf("%s must not be in the path table", typ)
			}
			continue
		}
		if !inTable {
			t.Errorf("%s missing from the path table", typ)
		}
	}
}

func TestCompartmentReferencedPatientID(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		ref    string
		wantID string
		wantOK bool
	}{
		{"Patient/123", "123", true},
		{"Patient/a-B.9", "a-B.9", true},
		{"Patient/" + long, long, true},
		{"Patient/" + long + "a", "", false},
		{"Patient/123/_history/4", "123", true},
		{"http://example.org/fhir/Patient/123", "123", true},
		{"https://example.org/Patient/123", "123", true},
		{"https://example.org/fhir/r4/Patient/123/_history/7", "123", true},
		{"https://example.org:8443/fhir/Patient/x.y", "x.y", true},
		{"urn:uuid:6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2", "", false},
		{"urn:oid:1.2.3", "", false},
		{"#p1", "", false},
		{"#", "", false},
		{"", "", false},
		{"123", "", false}, // bare id needs type Patient
		{"Practitioner/123", "", false},
		{"Group/123", "", false},
		{"patient/123", "", false},
		{"RelatedPerson/Patient", "", false},
		{"Patient/", "", false},
		{"Patient", "", false},
		{"Patient/_history/2", "", false},
		{"Patient/123/_history/", "", false},
		{"Patient/123/_history/a/b", "", false},
		{"Patient/123/extra", "", false},
		{"/Patient/123", "", false},
		{"foo/Patient/123", "", false},
		{"Patient?identifier=http://x|1", "", false},
		{"Patient/12 3", "", false},
		{"Patient/12_3", "", false},
		{"https://Patient/123", "", false},
		{"https://example.org/fhir/Patient/", "", false},
		{"https://example.org/fhir/Patient/123?_format=json", "", false},
		{"https://example.org/fhir/Observation/123", "", false},
		{"ftp://example.org/fhir/Patient/123", "", false},
		{"Patient/123#frag", "", false},
	}
	for _, tt := range tests {
		id, ok := ReferencedPatientID(tt.ref)
		if id != tt.wantID || ok != tt.wantOK {
			t.Errorf("ReferencedPatientID(%q) = %q, %v; want %q, %v", tt.ref, id, ok, tt.wantID, tt.wantOK)
		}
	}
}

func TestCompartmentPatientIDs(t *testing.T) {
	tests := []struct {
		name string
		typ  string
		body string
		want []string
	}{
		// Observation: subject counts, performer does not.
		{"Observation subject", "Observation",
			`{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/A"}}`, []string{"A"}},
		{"Observation performer only", "Observation",
			`{"resourceType":"Observation","id":"o1","subject":{"reference":"Group/G"},"performer":[{"reference":"Patient/B"}]}`, nil},
		{"Observation subject and performer", "Observation",
			`{"resourceType":"Observation","performer":[{"reference":"Patient/B"},{"reference":"Practitioner/P"}],"subject":{"reference":"Patient/A","display":"A"}}`, []string{"A"}},
		{"Observation no resourceType", "Observation", `{"subject":{"reference":"Patient/A"}}`, []string{"A"}},
		{"Observation subject absent", "Observation", `{"resourceType":"Observation","status":"final"}`, nil},
		{"Observation subject null", "Observation", `{"resourceType":"Observation","subject":null}`, nil},
		{"Observation reference null", "Observation", `{"resourceType":"Observation","subject":{"reference":null}}`, nil},
		{"Observation identifier-only reference", "Observation",
			`{"resourceType":"Observation","subject":{"identifier":{"system":"s","value":"v"},"type":"Patient"}}`, nil},
		{"Observation contained patient ignored", "Observation",
			`{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"p"}],"subject":{"reference":"#p"}}`, nil},
		{"Observation contained subject ignored", "Observation",
			`{"resourceType":"Observation","contained":[{"resourceType":"Observation","subject":{"reference":"Patient/X"}}],"subject":{"reference":"Patient/A"}}`, []string{"A"}},
		{"Observation nested subject key ignored", "Observation",
			`{"resourceType":"Observation","component":[{"subject":{"reference":"Patient/X"}}],"subject":{"reference":"Patient/A"}}`, []string{"A"}},
		{"Observation extension ignored", "Observation",
			`{"resourceType":"Observation","extension":[{"url":"u","valueReference":{"reference":"Patient/X"}}],"subject":{"reference":"Patient/A"}}`, []string{"A"}},
		// Reference forms.
		{"absolute reference", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"https://fhir.example.org/r4/Patient/A"}}`, []string{"A"}},
		{"_history reference", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"Patient/A/_history/3"}}`, []string{"A"}},
		{"absolute _history reference", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"http://x.org/fhir/Patient/A/_history/3"}}`, []string{"A"}},
		{"type plus relative id", "Observation",
			`{"resourceType":"Observation","subject":{"type":"Patient","reference":"A"}}`, []string{"A"}},
		{"type URL plus relative id", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"A","type":"http://hl7.org/fhir/StructureDefinition/Patient"}}`, []string{"A"}},
		{"relative id without type", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"A"}}`, nil},
		{"relative id with other type", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"A","type":"Group"}}`, nil},
		{"urn:uuid ignored", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"urn:uuid:6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2","type":"Patient"}}`, nil},
		{"escaped reference", "Observation",
			`{"resourceType":"Observation","subject":{"reference":"Patient\/\u0041"}}`, []string{"A"}},
		{"escaped key", "Observation",
			`{"resourceType":"Obs\u0065rvation","subj\u0065ct":{"r\u0065ference":"Patient/A"}}`, []string{"A"}},
		{"whitespace", "Observation",
			" \n{ \"resourceType\" : \"Observation\" ,\r\n\t\"subject\" : { \"reference\" : \"Patient/A\" } } \n", []string{"A"}},
		// Patient: its own id; link.other does not add patients.
		{"Patient self", "Patient",
			`{"resourceType":"Patient","id":"P1","link":[{"other":{"reference":"Patient/P2"},"type":"seealso"}],"generalPractitioner":[{"reference":"Practitioner/x"}]}`, []string{"P1"}},
		{"Patient without id", "Patient", `{"resourceType":"Patient","name":[{"family":"X"}]}`, nil},
		// Coverage: beneficiary counts, subscriber / policyHolder / payor do not.
		{"Coverage beneficiary", "Coverage",
			`{"resourceType":"Coverage","subscriber":{"reference":"Patient/S"},"policyHolder":{"reference":"Patient/H"},"beneficiary":{"reference":"Patient/A"},"payor":[{"reference":"Patient/Y"}]}`, []string{"A"}},
		{"Coverage subscriber only", "Coverage",
			`{"resourceType":"Coverage","subscriber":{"reference":"Patient/S"},"beneficiary":{"reference":"RelatedPerson/R"}}`, nil},
		// Claim and ExplanationOfBenefit: patient, not payee.
		{"Claim patient", "Claim",
			`{"resourceType":"Claim","patient":{"reference":"Patient/A"},"payee":{"party":{"reference":"Patient/B"}},"provider":{"reference":"Organization/O"}}`, []string{"A"}},
		{"ExplanationOfBenefit patient", "ExplanationOfBenefit",
			`{"resourceType":"ExplanationOfBenefit","contained":[{"resourceType":"Coverage","id":"c","beneficiary":{"reference":"Patient/X"}}],"patient":{"reference":"Patient/A"},"payee":{"party":{"reference":"Patient/B"}}}`, []string{"A"}},
		// Encounter: patient = subject (Patient only); participants ignored.
		{"Encounter subject", "Encounter",
			`{"resourceType":"Encounter","subject":{"reference":"Patient/A"},"participant":[{"individual":{"reference":"Practitioner/P"}}]}`, []string{"A"}},
		{"Encounter group subject", "Encounter",
			`{"resourceType":"Encounter","subject":{"reference":"Group/G"}}`, nil},
		// Provenance: target, Patient refs only, many.
		{"Provenance target", "Provenance",
			`{"resourceType":"Provenance","target":[{"reference":"Observation/o"},{"reference":"Patient/B"},{"reference":"Patient/A"},{"reference":"Patient/B/_history/2"}],"agent":[{"who":{"reference":"Patient/C"}}]}`, []string{"A", "B"}},
		// AuditEvent: agent.who and entity.what.
		{"AuditEvent agent and entity", "AuditEvent",
			`{"resourceType":"AuditEvent","agent":[{"who":{"reference":"Practitioner/P"}},{"who":{"reference":"Patient/B"}}],"entity":[{"what":{"reference":"Patient/A"}},{"what":{"reference":"Observation/o"}}],"source":{"observer":{"reference":"Patient/X"}}}`, []string{"A", "B"}},
		// Appointment: participant.actor, Patient refs only.
		{"Appointment actor", "Appointment",
			`{"resourceType":"Appointment","participant":[{"actor":{"reference":"Practitioner/P"},"status":"accepted"},{"actor":{"reference":"Patient/A"},"status":"accepted"},{"status":"needs-action"}]}`, []string{"A"}},
		{"AppointmentResponse actor", "AppointmentResponse",
			`{"resourceType":"AppointmentResponse","actor":{"reference":"Patient/A"}}`, []string{"A"}},
		{"Schedule actor", "Schedule",
			`{"resourceType":"Schedule","actor":[{"reference":"Location/L"},{"reference":"Patient/A"}]}`, []string{"A"}},
		// Person: link.target.
		{"Person link target", "Person",
			`{"resourceType":"Person","link":[{"target":{"reference":"Patient/B"}},{"target":{"reference":"RelatedPerson/R"}},{"target":{"reference":"Patient/A"}}]}`, []string{"A", "B"}},
		// Others.
		{"CareTeam subject not participant", "CareTeam",
			`{"resourceType":"CareTeam","subject":{"reference":"Patient/A"},"participant":[{"member":{"reference":"Patient/B"}}]}`, []string{"A"}},
		{"AllergyIntolerance patient not asserter", "AllergyIntolerance",
			`{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/A"},"asserter":{"reference":"Patient/B"},"recorder":{"reference":"Patient/C"}}`, []string{"A"}},
		{"Immunization patient", "Immunization", `{"resourceType":"Immunization","patient":{"reference":"Patient/A"}}`, []string{"A"}},
		{"ImagingStudy subject", "ImagingStudy", `{"resourceType":"ImagingStudy","subject":{"reference":"Patient/A"}}`, []string{"A"}},
		{"DocumentReference subject not author", "DocumentReference",
			`{"resourceType":"DocumentReference","subject":{"reference":"Patient/A"},"author":[{"reference":"Patient/B"}]}`, []string{"A"}},
		{"Communication subject not sender", "Communication",
			`{"resourceType":"Communication","subject":{"reference":"Patient/A"},"sender":{"reference":"Patient/B"},"recipient":[{"reference":"Patient/C"}]}`, []string{"A"}},
		{"MedicationAdministration subject not performer", "MedicationAdministration",
			`{"resourceType":"MedicationAdministration","subject":{"reference":"Patient/A"},"performer":[{"actor":{"reference":"Patient/B"}}]}`, []string{"A"}},
		{"ResearchSubject individual", "ResearchSubject", `{"resourceType":"ResearchSubject","individual":{"reference":"Patient/A"}}`, []string{"A"}},
		{"EnrollmentRequest candidate", "EnrollmentRequest", `{"resourceType":"EnrollmentRequest","candidate":{"reference":"Patient/A"}}`, []string{"A"}},
		{"SupplyRequest deliverTo", "SupplyRequest", `{"resourceType":"SupplyRequest","deliverTo":{"reference":"Patient/A"}}`, []string{"A"}},
		{"RelatedPerson patient", "RelatedPerson", `{"resourceType":"RelatedPerson","patient":{"reference":"Patient/A"}}`, []string{"A"}},
		{"Consent patient", "Consent", `{"resourceType":"Consent","patient":{"reference":"Patient/A"},"performer":[{"reference":"Patient/B"}]}`, []string{"A"}},
		{"Specimen subject", "Specimen", `{"resourceType":"Specimen","subject":{"reference":"Patient/A"}}`, []string{"A"}},
		{"Invoice subject not recipient", "Invoice",
			`{"resourceType":"Invoice","subject":{"reference":"Patient/A"},"recipient":{"reference":"Patient/B"}}`, []string{"A"}},
		// Outside the compartment: nil, body not examined.
		{"Group excluded", "Group",
			`{"resourceType":"Group","member":[{"entity":{"reference":"Patient/A"}}]}`, nil},
		{"Organization not in compartment", "Organization", `{"resourceType":"Organization","id":"o"}`, nil},
		{"Device not in compartment", "Device", `{"resourceType":"Device","patient":{"reference":"Patient/A"}}`, nil},
		{"unknown type, malformed body", "Organization", `{`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PatientIDs(tt.typ, []byte(tt.body))
			if err != nil {
				t.Fatalf("PatientIDs: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("PatientIDs = %q, want %q", got, tt.want)
			}
			if !InCompartment(tt.typ) && got != nil {
				t.Fatalf("non-nil result for type outside the compartment")
			}
		})
	}
}

func TestCompartmentMalformed(t *testing.T) {
	tests := []struct {
		name string
		typ  string
		body string
	}{
		{"empty", "Observation", ``},
		{"whitespace", "Observation", "  \n"},
		{"truncated", "Observation", `{"resourceType":"Observation","subject":{"reference":"Patient/A"}`},
		{"truncated in string", "Observation", `{"resourceType":"Observ`},
		{"not an object", "Observation", `["Patient/A"]`},
		{"null body", "Observation", `null`},
		{"string body", "Patient", `"Patient"`},
		{"trailing garbage", "Observation", `{"subject":{"reference":"Patient/A"}} x`},
		{"two objects", "Observation", `{}{}`},
		{"trailing NUL", "Observation", "{}\x00"},
		{"trailing comma", "Observation", `{"subject":{"reference":"Patient/A"},}`},
		{"missing colon", "Observation", `{"subject" {"reference":"Patient/A"}}`},
		{"single quotes", "Observation", `{'subject':{}}`},
		{"bad literal", "Observation", `{"status":tru}`},
		{"bad number", "Observation", `{"valueInteger":01}`},
		{"bad number dot", "Observation", `{"valueDecimal":1.}`},
		{"bad number exp", "Observation", `{"valueDecimal":1e}`},
		{"plus number", "Observation", `{"valueDecimal":+1}`},
		{"bad escape", "Observation", `{"code":"\x"}`},
		{"bad unicode escape", "Observation", `{"code":"\u12G4"}`},
		{"control char in string", "Observation", "{\"code\":\"a\nb\"}"},
		{"unclosed array in skipped value", "Observation", `{"performer":[{"reference":"Patient/B"},"subject":{}}`},
		{"wrong resourceType", "Observation", `{"resourceType":"Condition","subject":{"reference":"Patient/A"}}`},
		{"resourceType not a string", "Observation", `{"resourceType":7}`},
		{"subject is a string", "Observation", `{"subject":"Patient/A"}`},
		{"subject is a number", "Observation", `{"subject":1}`},
		{"reference is a number", "Observation", `{"subject":{"reference":1}}`},
		{"reference is an object", "Observation", `{"subject":{"reference":{"x":"Patient/A"}}}`},
		{"type is an array", "Observation", `{"subject":{"reference":"A","type":["Patient"]}}`},
		{"nested arrays", "Provenance", `{"target":[[{"reference":"Patient/A"}]]}`},
		{"backbone is a string", "Appointment", `{"participant":["Patient/A"]}`},
		{"Patient id not a string", "Patient", `{"resourceType":"Patient","id":12}`},
		{"Patient id invalid", "Patient", `{"resourceType":"Patient","id":"a/b"}`},
		{"Patient malformed after id", "Patient", `{"resourceType":"Patient","id":"P1","name":[}`},
		{"too deep", "Observation", `{"x":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PatientIDs(tt.typ, []byte(tt.body))
			if err == nil {
				t.Fatalf("PatientIDs = %q, want an error", got)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if got != nil {
				t.Fatalf("PatientIDs returned ids %q with an error", got)
			}
		})
	}
}

// TestCompartmentDepth checks the nesting limit against encoding/json.
func TestCompartmentDepth(t *testing.T) {
	for _, n := range []int{maxDepth - 2, maxDepth - 1, maxDepth, maxDepth + 1} {
		body := `{"x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`
		_, err := PatientIDs("Observation", []byte(body))
		if valid := json.Valid([]byte(body)); valid != (err == nil) {
			t.Errorf("depth %d: json.Valid = %v, PatientIDs error = %v", n+1, valid, err)
		}
	}
}

// TestCompartmentBinaryBelongsToItsSecurityContextPatient: a Binary is in
// the compartment of the patient its securityContext names (it is exported
// as that patient's DocumentReference), though R4 lists no Binary there.
func TestCompartmentBinaryBelongsToItsSecurityContextPatient(t *testing.T) {
	for body, want := range map[string]string{
		`{"resourceType":"Binary","id":"b","contentType":"text/plain","securityContext":{"reference":"Patient/p1"},"data":"aGk="}`: "p1",
		`{"resourceType":"Binary","id":"b","contentType":"text/plain","securityContext":{"reference":"Practitioner/x"}}`:           "",
		`{"resourceType":"Binary","id":"b","contentType":"text/plain"}`:                                                            "",
	} {
		got, err := PatientIDs("Binary", []byte(body))
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("PatientIDs(%s) = %v, %v; want %q", body, got, err, want)
		}
	}
	if _, err := PatientIDs("Binary", []byte(`{"resourceType":"Binary",`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("malformed Binary: %v, want ErrMalformed", err)
	}
	if InCompartment("Binary") || slices.Contains(Types(), "Binary") {
		t.Error("Binary joined the R4 compartment's type list")
	}
}
