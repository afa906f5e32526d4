package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// The Bulk Data IG (v2.0.0) kick-off parameter _elements asks the server to
// leave out of every exported resource the top-level elements that were not
// listed. Each item is "[ResourceType].[element]" or a bare "[element]":
//
//   - a bare element applies to every resource type;
//   - "Type.element" applies to that type only;
//   - resourceType, id and meta are always kept, and so is every mandatory
//     top-level element of the type (R4 min >= 1, see requiredElements),
//     whether asked for or not;
//   - a resource that lost at least one member is tagged SUBSETTED in
//     meta.tag, so that nobody mistakes it for the complete resource; one
//     that lost nothing is left untagged.
//
// The kept elements of a type are the union of the bare items and the
// items qualified with that type. So when only type-qualified items were
// given (say _elements=Patient.birthDate), a type that none of them names
// (Observation) keeps nothing but resourceType, id, meta and its mandatory
// elements, and is tagged SUBSETTED. The SMART Bulk Data reference server
// behaves this way; the alternative (exporting such types whole) would hand
// out more than the client asked for.
//
// A choice element (value[x]) appears in JSON as its name plus a type
// suffix (valueQuantity, valueString): asking for "value" keeps every such
// key of a type whose choiceElements entry lists "value"; for other types
// only the exact key matches. A FHIR JSON primitive's extension companion
// (_birthDate for birthDate) is kept or dropped with the element itself.

// subsettedTag is the Coding that marks a resource as incomplete.
const (
	subsettedSystem = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
	subsettedCode   = "SUBSETTED"
	subsettedTag    = `{"system":"` + subsettedSystem + `","code":"` + subsettedCode + `"}`
)

// choiceElements lists, for each R4 (4.0.1) resource type that has any, the
// names (without [x]) of its top-level choice elements. Types not listed
// have none (Encounter, Claim, ExplanationOfBenefit, CarePlan,
// DocumentReference, Coverage, Specimen, ...).
var choiceElements = map[string][]string{
	"ActivityDefinition":          {"subject", "timing", "product"},
	"AllergyIntolerance":          {"onset"},
	"ChargeItem":                  {"occurrence", "product"},
	"ClinicalImpression":          {"effective"},
	"CommunicationRequest":        {"occurrence"},
	"ConceptMap":                  {"source", "target"},
	"Condition":                   {"onset", "abatement"},
	"Consent":                     {"source"},
	"Contract":                    {"topic", "legallyBinding"},
	"CoverageEligibilityRequest":  {"serviced"},
	"CoverageEligibilityResponse": {"serviced"},
	"DetectedIssue":               {"identified"},
	"DeviceDefinition":            {"manufacturer"},
	"DeviceRequest":               {"code", "occurrence"},
	"DeviceUseStatement":          {"timing"},
	"DiagnosticReport":            {"effective"},
	"EventDefinition":             {"subject"},
	"FamilyMemberHistory":         {"born", "age", "deceased"},
	"Goal":                        {"start"},
	"GuidanceResponse":            {"module"},
	"Immunization":                {"occurrence"},
	"ImmunizationEvaluation":      {"doseNumber", "seriesDoses"},
	"Library":                     {"subject"},
	"Measure":                     {"subject"},
	"Media":                       {"created"},
	"MedicationAdministration":    {"medication", "effective"},
	"MedicationDispense":          {"statusReason", "medication"},
	"MedicationRequest":           {"reported", "medication"},
	"MedicationStatement":         {"medication", "effective"},
	"MessageDefinition":           {"event"},
	"MessageHeader":               {"event"},
	"Observation":                 {"effective", "value"},
	"Patient":                     {"deceased", "multipleBirth"},
	"PlanDefinition":              {"subject"},
	"Procedure":                   {"performed"},
	"Provenance":                  {"occurred"},
	"ResearchDefinition":          {"subject"},
	"ResearchElementDefinition":   {"subject"},
	"RiskAssessment":              {"occurrence"},
	"ServiceRequest":              {"quantity", "occurrence", "asNeeded"},
	"SupplyDelivery":              {"occurrence"},
	"SupplyRequest":               {"item", "occurrence"},
}

// Elements is a parsed _elements value.
type Elements struct {
	given bool
	bare  []string            // elements kept for every type
	typed map[string][]string // resource type -> elements kept for it only
}

// ParseElements parses the values (each may be a comma list; several values
// are one union). Blanks around an item are ignored. Errors (each naming the
// offending item): an empty item; a path with more than one dot (nested,
// e.g. Patient.name.family) -> "only top-level elements"; an unknown
// resource type prefix; an element name that is not [a-z][A-Za-z0-9]*
// (after an optional Type. prefix). No values at all give the zero
// Elements.
func ParseElements(values []string) (Elements, error) {
	var e Elements
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			item = strings.Trim(item, " \t")
			if item == "" {
				return Elements{}, fmt.Errorf("_elements: empty item in %q", v)
			}
			typ, name, qualified := strings.Cut(item, ".")
			if !qualified {
				typ, name = "", item
			}
			switch {
			case strings.Contains(name, "."):
				return Elements{}, fmt.Errorf("_elements item %q: only top-level elements are supported", item)
			case qualified && !IsResourceType(typ) && validElementName(typ):
				// name.family: most likely a nested path without a type.
				return Elements{}, fmt.Errorf("_elements item %q: unknown resource type %q (only top-level elements are supported)", item, typ)
			case qualified && !IsResourceType(typ):
				return Elements{}, fmt.Errorf("_elements item %q: unknown resource type %q", item, typ)
			case !validElementName(name):
				return Elements{}, fmt.Errorf("_elements item %q: element name %q is not of the form [a-z][A-Za-z0-9]*", item, name)
			}
			e.given = true
			if !qualified {
				e.bare = addUnique(e.bare, name)
				continue
			}
			if e.typed == nil {
				e.typed = map[string][]string{}
			}
			e.typed[typ] = addUnique(e.typed[typ], name)
		}
	}
	return e, nil
}

func addUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func validElementName(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// IsZero reports whether no _elements was given.
func (e Elements) IsZero() bool { return !e.given }

// Apply returns body trimmed for its resource type, appended to dst (dst
// may be nil), and whether it was subsetted. body is one valid JSON
// resource object; the output is compact, keeps the kept members
// byte-for-byte and in their original order. When members were removed,
// meta.tag gets the SUBSETTED Coding (appended to an existing tag array
// unless already there; the other meta members are kept); a resource
// without meta gets one after its id (after resourceType without id). A
// zero Elements removes nothing. On error dst is returned as it was.
func (e Elements) Apply(dst []byte, resourceType string, body []byte) ([]byte, bool, error) {
	fields, err := topLevel(body)
	if err != nil {
		return dst, false, err
	}
	s := selector{
		all:      !e.given,
		bare:     e.bare,
		typed:    e.typed[resourceType],
		required: requiredElements[resourceType],
		choices:  choiceElements[resourceType],
	}
	var keepArr [64]bool
	keep := keepArr[:0]
	if len(fields) > len(keepArr) {
		keep = make([]bool, 0, len(fields))
	}
	removed := false
	metaAt, idAt, typeAt := -1, -1, -1
	for i, f := range fields {
		k := f.key(body)
		kept := s.keeps(k)
		keep = append(keep, kept)
		if !kept {
			removed = true
			continue
		}
		switch string(k) {
		case "meta":
			metaAt = i
		case "id":
			idAt = i
		case "resourceType":
			typeAt = i
		}
	}

	const newMeta = `"meta":{"tag":[` + subsettedTag + `]}`
	insertAfter := -1 // index of the member a new meta follows
	start := len(dst)
	dst = append(dst, '{')
	first := true
	if removed && metaAt < 0 {
		insertAfter = idAt
		if insertAfter < 0 {
			insertAfter = typeAt
		}
		if insertAfter < 0 {
			dst = append(dst, newMeta...)
			first = false
		}
	}
	for i, f := range fields {
		if !keep[i] {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, body[f.ks:f.ke]...)
		dst = append(dst, ':')
		if i == metaAt && removed {
			if dst, err = appendTaggedMeta(dst, body[f.vs:f.ve]); err != nil {
				return dst[:start], false, err
			}
		} else {
			dst = append(dst, body[f.vs:f.ve]...)
		}
		if i == insertAfter {
			dst = append(dst, ',')
			dst = append(dst, newMeta...)
		}
	}
	return append(dst, '}'), removed, nil
}

// selector decides which top-level keys of one resource type are kept.
type selector struct {
	all                            bool
	bare, typed, required, choices []string
}

func (s *selector) keeps(key []byte) bool {
	if s.all {
		return true
	}
	name := key
	if len(name) > 1 && name[0] == '_' { // primitive extension companion
		name = name[1:]
	}
	switch string(name) {
	case "resourceType", "id", "meta":
		return true
	}
	for _, a := range s.bare {
		if s.asked(name, a) {
			return true
		}
	}
	for _, a := range s.typed {
		if s.asked(name, a) {
			return true
		}
	}
	for _, r := range s.required {
		if base, ok := strings.CutSuffix(r, "[x]"); ok {
			if isChoiceKey(name, base) {
				return true
			}
		} else if string(name) == r {
			return true
		}
	}
	return false
}

// asked reports whether key name is covered by the asked element a.
func (s *selector) asked(name []byte, a string) bool {
	if string(name) == a {
		return true
	}
	if !isChoiceKey(name, a) {
		return false
	}
	for _, c := range s.choices {
		if c == a {
			return true
		}
	}
	return false
}

// isChoiceKey reports whether name is base followed by a type suffix
// (valueQuantity for value).
func isChoiceKey(name []byte, base string) bool {
	return len(name) > len(base) && string(name[:len(base)]) == base &&
		name[len(base)] >= 'A' && name[len(base)] <= 'Z'
}

// appendTaggedMeta appends meta (a JSON object or null) with the SUBSETTED
// Coding added to its tag array.
func appendTaggedMeta(dst, meta []byte) ([]byte, error) {
	if bytes.Equal(meta, []byte("null")) {
		return append(dst, `{"tag":[`+subsettedTag+`]}`...), nil
	}
	fields, err := topLevel(meta)
	if err != nil {
		return dst, fmt.Errorf("meta: %w", err)
	}
	dst = append(dst, '{')
	haveTag := false
	for i, f := range fields {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, meta[f.ks:f.ke]...)
		dst = append(dst, ':')
		v := meta[f.vs:f.ve]
		if string(f.key(meta)) != "tag" {
			dst = append(dst, v...)
			continue
		}
		haveTag = true
		switch {
		case bytes.Equal(v, []byte("null")):
			dst = append(dst, `[`+subsettedTag+`]`...)
		case len(v) >= 2 && v[0] == '[':
			if hasSubsetted(v) {
				dst = append(dst, v...)
				break
			}
			inner := bytes.TrimSpace(v[1 : len(v)-1])
			dst = append(dst, '[')
			if len(inner) > 0 {
				dst = append(dst, inner...)
				dst = append(dst, ',')
			}
			dst = append(dst, subsettedTag...)
			dst = append(dst, ']')
		default:
			return dst, errors.New("meta.tag is not an array")
		}
	}
	if !haveTag {
		if len(fields) > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `"tag":[`+subsettedTag+`]`...)
	}
	return append(dst, '}'), nil
}

// hasSubsetted reports whether the tag array already holds the SUBSETTED
// Coding (same system and code).
func hasSubsetted(tags []byte) bool {
	if !bytes.Contains(tags, []byte(subsettedCode)) {
		return false
	}
	var list []json.RawMessage
	if json.Unmarshal(tags, &list) != nil {
		return false
	}
	for _, raw := range list {
		var c struct {
			System string `json:"system"`
			Code   string `json:"code"`
		}
		if json.Unmarshal(raw, &c) == nil && c.System == subsettedSystem && c.Code == subsettedCode {
			return true
		}
	}
	return false
}
