package typefilter

import (
	"strings"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// Kinds of search parameter, as in the R4 SearchParameter.type codes.
const (
	kindToken     = "token"
	kindReference = "reference"
	kindDate      = "date"
	kindString    = "string"
)

// spec is one row of the table: a search parameter of one resource type.
type spec struct {
	Kind string
	// Paths are dot paths from the resource root, in JSON names; every step
	// may hold one value or an array. A choice element [x] is listed by the
	// JSON names of the choices it can be searched on.
	Paths []string
	// Target, for a reference parameter, restricts the references that count
	// to those naming this resource type (R4 "where(resolve() is Patient)").
	Target string
	// System is the implicit code system of a code primitive (a token on a
	// JSON string), so that "system|code" can match it.
	System string
}

// Code systems of the required bindings of the code primitives searched
// below (R4 4.0.1).
const (
	sysGender     = "http://hl7.org/fhir/administrative-gender"
	sysObsStatus  = "http://hl7.org/fhir/observation-status"
	sysEncStatus  = "http://hl7.org/fhir/encounter-status"
	sysMedReqStat = "http://hl7.org/fhir/CodeSystem/medicationrequest-status"
	sysMedReqInt  = "http://hl7.org/fhir/CodeSystem/medicationrequest-intent"
	sysEvent      = "http://hl7.org/fhir/event-status"
	sysFMStatus   = "http://hl7.org/fhir/fm-status"
	sysClaimUse   = "http://hl7.org/fhir/claim-use"
	sysEOBStatus  = "http://hl7.org/fhir/explanationofbenefit-status"
	sysDRStatus   = "http://hl7.org/fhir/diagnostic-report-status"
	sysReqStatus  = "http://hl7.org/fhir/request-status"
	sysReqIntent  = "http://hl7.org/fhir/request-intent"
)

// Small constructors keep the table readable. Paths are "|"-separated.
func tok(paths string) spec { return spec{Kind: kindToken, Paths: strings.Split(paths, "|")} }
func code(path, system string) spec {
	return spec{Kind: kindToken, Paths: []string{path}, System: system}
}
func ref(paths string) spec { return spec{Kind: kindReference, Paths: strings.Split(paths, "|")} }
func patientRef(paths string) spec {
	return spec{Kind: kindReference, Paths: strings.Split(paths, "|"), Target: "Patient"}
}
func date(paths string) spec { return spec{Kind: kindDate, Paths: strings.Split(paths, "|")} }
func str(paths string) spec  { return spec{Kind: kindString, Paths: strings.Split(paths, "|")} }

// common holds the parameters every resource type supports.
var common = map[string]spec{
	"_id":          tok("id"),
	"_lastUpdated": date("meta.lastUpdated"),
}

// table maps resource type -> search parameter -> spec. Each comment gives
// the R4 (4.0.1) SearchParameter expression the row follows, where it
// differs from the plain path.
var table = map[string]map[string]spec{
	"Patient": {
		"gender":    code("gender", sysGender),
		"birthdate": date("birthDate"),
		"family":    str("name.family"),
		"given":     str("name.given"),
		// R4: "any of the string fields in the HumanName"; this server uses
		// family, given and text.
		"name":                 str("name.family|name.given|name.text"),
		"identifier":           tok("identifier"),
		"active":               tok("active"),
		"general-practitioner": ref("generalPractitioner"),
		"organization":         ref("managingOrganization"),
	},
	"Observation": {
		"status":    code("status", sysObsStatus),
		"code":      tok("code"),
		"category":  tok("category"),
		"subject":   ref("subject"),
		"patient":   patientRef("subject"), // Observation.subject.where(resolve() is Patient)
		"encounter": ref("encounter"),
		"date":      date("effectiveDateTime|effectivePeriod|effectiveInstant"), // Observation.effective (Timing not searched)
	},
	"Condition": {
		"clinical-status":     tok("clinicalStatus"),
		"verification-status": tok("verificationStatus"),
		"category":            tok("category"),
		"code":                tok("code"),
		"subject":             ref("subject"),
		"patient":             patientRef("subject"),
		"encounter":           ref("encounter"),
		"onset-date":          date("onsetDateTime|onsetPeriod"),
		"recorded-date":       date("recordedDate"),
	},
	"Encounter": {
		"status":           code("status", sysEncStatus),
		"class":            tok("class"),
		"type":             tok("type"),
		"subject":          ref("subject"),
		"patient":          patientRef("subject"),
		"date":             date("period"),
		"service-provider": ref("serviceProvider"),
		"participant":      ref("participant.individual"),
	},
	"MedicationRequest": {
		"status":     code("status", sysMedReqStat),
		"intent":     code("intent", sysMedReqInt),
		"code":       tok("medicationCodeableConcept"), // (MedicationRequest.medication as CodeableConcept)
		"subject":    ref("subject"),
		"patient":    patientRef("subject"),
		"authoredon": date("authoredOn"),
		"encounter":  ref("encounter"),
		"requester":  ref("requester"),
	},
	"Procedure": {
		"status":    code("status", sysEvent),
		"code":      tok("code"),
		"subject":   ref("subject"),
		"patient":   patientRef("subject"),
		"date":      date("performedDateTime|performedPeriod"), // Procedure.performed (string, Age, Range not searched)
		"encounter": ref("encounter"),
	},
	"Immunization": {
		"status":       code("status", sysEvent),
		"vaccine-code": tok("vaccineCode"),
		"patient":      patientRef("patient"),
		"date":         date("occurrenceDateTime"), // Immunization.occurrence (string not searched)
	},
	"Claim": {
		"status":   code("status", sysFMStatus),
		"use":      code("use", sysClaimUse),
		"patient":  patientRef("patient"),
		"provider": ref("provider"),
		"insurer":  ref("insurer"),
		"created":  date("created"),
	},
	"ExplanationOfBenefit": {
		"status":   code("status", sysEOBStatus),
		"patient":  patientRef("patient"),
		"provider": ref("provider"),
		"claim":    ref("claim"),
		"coverage": ref("insurance.coverage"),
		"created":  date("created"),
	},
	"Coverage": {
		"status":      code("status", sysFMStatus),
		"beneficiary": ref("beneficiary"),
		"patient":     patientRef("beneficiary"),
		"payor":       ref("payor"),
	},
	"DiagnosticReport": {
		"status":    code("status", sysDRStatus),
		"code":      tok("code"),
		"category":  tok("category"),
		"subject":   ref("subject"),
		"patient":   patientRef("subject"),
		"encounter": ref("encounter"),
		"date":      date("effectiveDateTime|effectivePeriod"),
	},
	"AllergyIntolerance": {
		"clinical-status":     tok("clinicalStatus"),
		"verification-status": tok("verificationStatus"),
		"code":                tok("code|reaction.substance"), // AllergyIntolerance.code | AllergyIntolerance.reaction.substance
		"patient":             patientRef("patient"),
	},
	"CarePlan": {
		"status":   code("status", sysReqStatus),
		"intent":   code("intent", sysReqIntent),
		"category": tok("category"),
		"subject":  ref("subject"),
		"patient":  patientRef("subject"),
		"date":     date("period"),
	},
	"Organization": {
		"name":       str("name|alias"), // Organization.name | Organization.alias
		"identifier": tok("identifier"),
		"active":     tok("active"),
		"type":       tok("type"),
	},
	"Practitioner": {
		"name":       str("name.family|name.given|name.text"),
		"family":     str("name.family"),
		"given":      str("name.given"),
		"identifier": tok("identifier"),
		"active":     tok("active"),
	},
}

// resultParams are the R4 search result parameters: they shape a search
// response, not the set of matches, so they have no meaning in _typeFilter.
var resultParams = map[string]bool{
	"_include": true, "_revinclude": true, "_sort": true, "_count": true,
	"_elements": true, "_summary": true, "_total": true, "_contained": true,
	"_containedType": true,
}

// lookup returns the spec of parameter name on type typ.
func lookup(typ, name string) (spec, bool) {
	if s, ok := common[name]; ok {
		return s, true
	}
	s, ok := table[typ][name]
	return s, ok
}

// Supported returns, for documentation, the supported search parameters per
// resource type with their kind ("token", "reference", "date" or "string").
// Every R4 resource type is listed: each supports _id and _lastUpdated, and
// the types of the table in the package documentation support more. The
// result is a fresh copy the caller may modify.
func Supported() map[string]map[string]string {
	out := make(map[string]map[string]string)
	for _, typ := range fhir.ResourceTypes() {
		m := make(map[string]string, len(common)+len(table[typ]))
		for name, s := range common {
			m[name] = s.Kind
		}
		for name, s := range table[typ] {
			m[name] = s.Kind
		}
		out[typ] = m
	}
	return out
}
