package compartment

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// slowPatientIDs is a straightforward reference implementation of
// PatientIDs over encoding/json generic values, used to check the scanner.
func slowPatientIDs(typ string, body []byte) ([]string, error) {
	if !InCompartment(typ) {
		return nil, nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, err
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("not an object")
	}
	if rt, ok := obj["resourceType"]; ok && rt != typ {
		return nil, errors.New("resourceType mismatch")
	}
	var ids []string
	if typ == "Patient" {
		switch id := obj["id"].(type) {
		case nil:
		case string:
			if !validID(id) {
				return nil, errors.New("invalid id")
			}
			ids = append(ids, id)
		default:
			return nil, errors.New("id not a string")
		}
		return ids, nil
	}
	for _, l := range patientLinks[typ] {
		if err := slowWalk(obj, strings.Split(l.Path, "."), &ids); err != nil {
			return nil, err
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

func slowWalk(obj map[string]any, steps []string, ids *[]string) error {
	v := obj[steps[0]]
	var elems []any
	switch x := v.(type) {
	case nil:
		return nil
	case []any:
		elems = x
	default:
		elems = []any{x}
	}
	for _, e := range elems {
		switch m := e.(type) {
		case nil:
		case map[string]any:
			if len(steps) > 1 {
				if err := slowWalk(m, steps[1:], ids); err != nil {
					return err
				}
				continue
			}
			var ref, typ string
			for _, k := range []string{"reference", "type"} {
				switch s := m[k].(type) {
				case nil:
				case string:
					if k == "reference" {
						ref = s
					} else {
						typ = s
					}
				default:
					return errors.New(k + " not a string")
				}
			}
			if id, ok := patientRef(ref, isPatientType(typ)); ok {
				*ids = append(*ids, id)
			}
		default:
			return errors.New(steps[0] + " not an object")
		}
	}
	return nil
}

// hasDuplicateKeys reports whether some JSON object in data repeats a key
// (where the scanner counts every occurrence and encoding/json keeps the last).
func hasDuplicateKeys(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		keys    map[string]bool
		isObj   bool
		wantKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF || err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.isObj && top.wantKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].isObj {
					stack[len(stack)-1].wantKey = true
				}
				continue
			}
			k := tok.(string)
			if top.keys[k] {
				return true
			}
			top.keys[k] = true
			top.wantKey = false
			continue
		}
		switch d, _ := tok.(json.Delim); d {
		case '{':
			stack = append(stack, &frame{keys: map[string]bool{}, isObj: true, wantKey: true})
			continue
		case '[':
			stack = append(stack, &frame{})
			continue
		case ']':
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].isObj {
			stack[len(stack)-1].wantKey = true
		}
	}
}

var fuzzTypes = []string{"Observation", "Patient", "AuditEvent", "Appointment", "Person", "Provenance", "Coverage"}

// checkAgainstSlow compares PatientIDs with the reference implementation.
func checkAgainstSlow(t *testing.T, typ string, body []byte) {
	t.Helper()
	got, err := PatientIDs(typ, body)
	if err != nil && got != nil {
		t.Fatalf("%s %q: ids %q with error %v", typ, body, got, err)
	}
	if err != nil && !errors.Is(err, ErrMalformed) {
		t.Fatalf("%s %q: error %v does not wrap ErrMalformed", typ, body, err)
	}
	if !json.Valid(body) {
		if err == nil {
			t.Fatalf("%s %q: invalid JSON accepted, ids %q", typ, body, got)
		}
		return
	}
	want, wantErr := slowPatientIDs(typ, body)
	if (err == nil) == (wantErr == nil) && slices.Equal(got, want) {
		return
	}
	if hasDuplicateKeys(body) {
		return // documented difference: every occurrence counts
	}
	t.Fatalf("%s %q:\n PatientIDs = %q, %v\n reference  = %q, %v", typ, body, got, err, want, wantErr)
}

var fuzzSeeds = []string{
	`{"resourceType":"Observation","subject":{"reference":"Patient/A"},"performer":[{"reference":"Patient/B"}]}`,
	`{"resourceType":"Patient","id":"P1","link":[{"other":{"reference":"Patient/P2"}}]}`,
	`{"resourceType":"AuditEvent","agent":[{"who":{"reference":"Patient/B"}}],"entity":[{"what":{"reference":"Patient/A"}}]}`,
	`{"resourceType":"Appointment","participant":[{"actor":{"reference":"Patient/A"}},null,{"actor":null}]}`,
	`{"resourceType":"Person","link":[{"target":{"reference":"https://x/Patient/A/_history/1"}}]}`,
	`{"resourceType":"Provenance","target":[{"reference":"A","type":"Patient"},{"reference":"urn:uuid:1"}]}`,
	`{"resourceType":"Coverage","beneficiary":{"reference":"Patient/A"},"subscriber":{"reference":"Patient/B"}}`,
	`{"subject":{"reference":"Patient/A"},"subject":{"reference":"Patient/B"}}`,
	`{"subj\u0065ct":{"reference":"Patient\/A"}}`,
	`{"subject":"Patient/A"}`,
	`{"subject":[{"reference":"Patient/A"},[]]}`,
	`{"a":[1,-2.5e+3,true,false,null,"x\"y\\u00e9"],"b":{}}`,
	`{"resourceType":"Patient","id":null}`,
	`[]`, `{`, `{}}`, `"x"`, `-0`, `1E5`, "{\"a\":\"\xff\"}",
}

// TestCompartmentAgainstReference compares PatientIDs with the reference
// implementation on the seed corpus and on every prefix of each seed.
func TestCompartmentAgainstReference(t *testing.T) {
	for _, seed := range fuzzSeeds {
		for i := 0; i <= len(seed); i++ {
			for _, typ := range fuzzTypes {
				checkAgainstSlow(t, typ, []byte(seed[:i]))
			}
		}
	}
}

func FuzzCompartmentPatientIDs(f *testing.F) {
	for _, seed := range fuzzSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, typ := range fuzzTypes {
			checkAgainstSlow(t, typ, body)
		}
	})
}
