package compartment

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrMalformed is wrapped by every error PatientIDs returns.
var ErrMalformed = errors.New("compartment: malformed resource")

// node is one step of the compiled path trie of a resource type.
type node struct {
	name     string
	children []*node // steps below this one
	ref      bool    // the value here is a Reference (or an array of them)
}

func (n *node) child(name string) *node {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

// childBytes is child for a raw (unescaped) JSON key; the string conversion
// in the comparison does not allocate.
func (n *node) childBytes(name []byte) *node {
	for _, c := range n.children {
		if c.name == string(name) {
			return c
		}
	}
	return nil
}

// typeInfo is the compiled form of one resource type.
type typeInfo struct {
	name string
	self bool  // Patient: the resource's own id
	root *node // paths, for every other type
}

var (
	typeInfos = compile(patientLinks)
	typeNames = sortedNames(typeInfos)
)

func compile(links map[string][]link) map[string]*typeInfo {
	m := make(map[string]*typeInfo, len(links)+1)
	m["Patient"] = &typeInfo{name: "Patient", self: true, root: &node{}}
	for typ, ls := range links {
		if typ == "Group" || typ == "Patient" {
			panic("compartment: " + typ + " must not be in the path table")
		}
		ti := &typeInfo{name: typ, root: &node{}}
		for _, l := range ls {
			n := ti.root
			for step := range strings.SplitSeq(l.Path, ".") {
				if step == "" || n.ref {
					panic("compartment: bad path " + typ + "." + l.Path)
				}
				c := n.child(step)
				if c == nil {
					c = &node{name: step}
					n.children = append(n.children, c)
				}
				n = c
			}
			if len(n.children) > 0 {
				panic("compartment: bad path " + typ + "." + l.Path)
			}
			n.ref = true
		}
		m[typ] = ti
	}
	return m
}

func sortedNames(m map[string]*typeInfo) []string {
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// InCompartment reports whether resources of this type can be in a Patient compartment
// (the R4 CompartmentDefinition/patient types, minus Group; Patient included).
func InCompartment(resourceType string) bool {
	_, ok := typeInfos[resourceType]
	return ok
}

// Types returns the compartment resource types, sorted (Patient included, Group excluded).
// The caller owns the returned slice.
func Types() []string {
	return slices.Clone(typeNames)
}

// PatientIDs returns the sorted, de-duplicated ids of the patients whose compartment
// holds the resource. body is the resource JSON. It returns nil for types outside
// the compartment. A malformed body is an error (never a panic).
//
// For types outside the compartment the body is not examined. For a type in
// the compartment the whole body is validated as JSON; the result is nil if
// no Patient reference is found (or, for a Patient, if it has no id). Errors
// wrap ErrMalformed.
//
// Binary is the one type outside the compartment with patients: the patient
// its securityContext names. The Bulk Data IG exports such a Binary as a
// DocumentReference of that patient, so Patient and Group exports include
// it (InCompartment and Types still follow R4 and leave Binary out).
func PatientIDs(resourceType string, body []byte) ([]string, error) {
	if resourceType == "Binary" {
		return binaryPatient(body)
	}
	ti, ok := typeInfos[resourceType]
	if !ok {
		return nil, nil
	}
	s := scanner{data: body}
	var ids []string
	if err := s.resource(ti, &ids); err != nil {
		return nil, err
	}
	switch len(ids) {
	case 0:
		return nil, nil
	case 1:
		return ids, nil
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// ReferencedPatientID parses one FHIR reference string and returns the Patient id it names, if any.
//
// It accepts "Patient/<id>", "http(s)://host/.../Patient/<id>", either with
// an optional "/_history/<vid>" suffix. It rejects URNs, contained ("#x"),
// conditional and other-type references, and ids that are not valid FHIR ids.
func ReferencedPatientID(ref string) (string, bool) {
	return patientRef(ref, false)
}

// patientRef is ReferencedPatientID plus the Reference.type element: a bare
// id counts when typePatient (type names Patient).
func patientRef(ref string, typePatient bool) (string, bool) {
	if ref == "" || ref[0] == '#' {
		return "", false
	}
	rest, abs := ref, false
	if r, ok := strings.CutPrefix(ref, "https://"); ok {
		rest, abs = r, true
	} else if r, ok := strings.CutPrefix(ref, "http://"); ok {
		rest, abs = r, true
	} else if strings.IndexByte(ref, ':') >= 0 {
		return "", false // urn:uuid:, urn:oid:, other schemes
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		// A bare id: only with type Patient, and never as an absolute URL.
		if !abs && typePatient && validID(rest) {
			return rest, true
		}
		return "", false
	}
	if i := strings.LastIndex(rest, "/_history/"); i >= 0 {
		if !validID(rest[i+len("/_history/"):]) {
			return "", false
		}
		rest = rest[:i]
	}
	j := strings.LastIndexByte(rest, '/')
	if j < 0 {
		return "", false
	}
	id, head := rest[j+1:], rest[:j]
	k := strings.LastIndexByte(head, '/')
	if abs != (k >= 0) {
		// Relative references are exactly Type/id; absolute ones need a
		// host before Type/id.
		return "", false
	}
	if head[k+1:] != "Patient" || !validID(id) {
		return "", false
	}
	return id, true
}

const patientTypeURL = "http://hl7.org/fhir/StructureDefinition/Patient"

// isPatientType reports whether a Reference.type value names Patient.
func isPatientType(typ string) bool {
	return typ == "Patient" || typ == patientTypeURL
}

// validID reports whether id matches the FHIR id type: [A-Za-z0-9\-\.]{1,64}.
func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// binaryPatient is the patient a Binary's securityContext names, if any.
func binaryPatient(body []byte) ([]string, error) {
	var b struct {
		SecurityContext *struct {
			Reference string `json:"reference"`
		} `json:"securityContext"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if b.SecurityContext == nil {
		return nil, nil
	}
	if id, ok := ReferencedPatientID(b.SecurityContext.Reference); ok {
		return []string{id}, nil
	}
	return nil, nil
}
