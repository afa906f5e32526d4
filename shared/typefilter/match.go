package typefilter

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// Match reports whether the resource (valid JSON of resourceType typ) passes
// the filter. A type without subqueries always matches; its body is not
// read. A malformed body is an error: one that is not a JSON object, whose
// resourceType is not typ, or that has the wrong JSON shape (or an invalid
// date) on an element the evaluation reads. Match is safe for concurrent use.
func (f Filter) Match(typ string, body []byte) (bool, error) {
	tf := f.types[typ]
	if tf == nil {
		return true, nil
	}
	d, err := newDoc(typ, tf.keys, body)
	if err != nil {
		return false, err
	}
	for i := range tf.subs {
		ok, err := tf.subs[i].match(d)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// match reports whether d matches every condition of q.
func (q *subquery) match(d *doc) (bool, error) {
	for i := range q.conds {
		ok, err := q.conds[i].match(d)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// match evaluates one condition: any of its values matches any element
// value (negated for :not); or, for :missing, whether there is a value.
func (c *cond) match(d *doc) (bool, error) {
	var test func(v any, where string) (bool, error)
	switch {
	case c.missing != missingNone:
		test = c.present
	case c.spec.Kind == kindToken:
		test = c.token
	case c.spec.Kind == kindReference:
		test = c.reference
	case c.spec.Kind == kindDate:
		test = c.date
	default:
		test = c.string
	}
	found := false
	for _, p := range c.paths {
		v, err := d.top(p.key)
		if err != nil {
			return false, err
		}
		found, err = walk(v, p.rest, p.text, test)
		if err != nil {
			return false, d.malformed(err)
		}
		if found {
			break
		}
	}
	switch {
	case c.missing == missingTrue:
		return !found, nil
	case c.modifier == "not":
		return !found, nil
	}
	return found, nil
}

// walk calls test on every non-null value at rest below v, flattening
// arrays, until test reports true.
func walk(v any, rest []string, where string, test func(any, string) (bool, error)) (bool, error) {
	switch x := v.(type) {
	case nil:
		return false, nil
	case []any:
		for _, e := range x {
			if ok, err := walk(e, rest, where, test); err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	}
	if len(rest) == 0 {
		return test(v, where)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return false, fmt.Errorf("%s: want an object on the way, got %s", where, jsonKind(v))
	}
	return walk(m[rest[0]], rest[1:], where, test)
}

// present counts a value for :missing; for a reference parameter restricted
// to a target type, only references to that type count.
func (c *cond) present(v any, where string) (bool, error) {
	if c.spec.Kind != kindReference || c.spec.Target == "" {
		return true, nil
	}
	typ, _, _, err := readRef(v, where)
	return typ == c.spec.Target, err
}

// token matches a code, boolean, Coding, CodeableConcept or Identifier.
func (c *cond) token(v any, where string) (bool, error) {
	switch x := v.(type) {
	case string:
		for _, t := range c.tokens {
			if (t.code == "" || t.code == x) &&
				(!t.hasSystem || t.system == "" && t.code != "" || t.system == c.spec.System && c.spec.System != "") {
				return true, nil
			}
		}
		return false, nil
	case bool:
		s := "false"
		if x {
			s = "true"
		}
		for _, t := range c.tokens {
			if t.code == s && (!t.hasSystem || t.system == "") {
				return true, nil
			}
		}
		return false, nil
	case map[string]any:
		if codings, ok := x["coding"]; ok && codings != nil {
			list, ok := codings.([]any)
			if !ok {
				return false, fmt.Errorf("%s.coding: want an array, got %s", where, jsonKind(codings))
			}
			for _, e := range list {
				if e == nil {
					continue
				}
				cd, ok := e.(map[string]any)
				if !ok {
					return false, fmt.Errorf("%s.coding: want objects, got %s", where, jsonKind(e))
				}
				if ok, err := c.systemCode(cd, "code", where); err != nil || ok {
					return ok, err
				}
			}
			return false, nil
		}
		if _, ok := x["value"]; ok {
			return c.systemCode(x, "value", where) // Identifier
		}
		return c.systemCode(x, "code", where) // Coding
	}
	return false, fmt.Errorf("%s: want a code, boolean, Coding, CodeableConcept or Identifier, got %s", where, jsonKind(v))
}

// systemCode matches the system and the code (or value) member of m.
func (c *cond) systemCode(m map[string]any, codeKey, where string) (bool, error) {
	system, err := strMember(m, "system", where)
	if err != nil {
		return false, err
	}
	code, err := strMember(m, codeKey, where)
	if err != nil {
		return false, err
	}
	for _, t := range c.tokens {
		if (t.code == "" || t.code == code) && (!t.hasSystem || t.system == system) {
			return true, nil
		}
	}
	return false, nil
}

// reference matches a Reference.
func (c *cond) reference(v any, where string) (bool, error) {
	typ, id, raw, err := readRef(v, where)
	if err != nil {
		return false, err
	}
	if c.spec.Target != "" && typ != c.spec.Target {
		return false, nil
	}
	for _, r := range c.refs {
		if raw != "" && r.raw == raw || id != "" && r.id == id && (r.typ == "" || r.typ == typ) {
			return true, nil
		}
	}
	return false, nil
}

// readRef reads a Reference: the type and id it points at ("" when
// unknown) and its literal reference. The type comes from the literal
// ("Type/id", "Type/id/_history/v", or an absolute URL ending so), or from
// Reference.type for a bare id or a URN; a contained ("#x") reference has no
// id.
func readRef(v any, where string) (typ, id, raw string, err error) {
	m, ok := v.(map[string]any)
	if !ok {
		return "", "", "", fmt.Errorf("%s: want a Reference object, got %s", where, jsonKind(v))
	}
	if raw, err = strMember(m, "reference", where); err != nil {
		return "", "", "", err
	}
	tf, err := strMember(m, "type", where)
	if err != nil {
		return "", "", "", err
	}
	if i := strings.LastIndexByte(tf, '/'); i >= 0 {
		tf = tf[i+1:] // http://hl7.org/fhir/StructureDefinition/Patient
	}
	if !fhir.IsResourceType(tf) {
		tf = ""
	}
	s := raw
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	switch {
	case s == "" || s[0] == '#' || strings.HasPrefix(s, "urn:") || strings.ContainsAny(s, "?"):
		return tf, "", raw, nil
	}
	j := strings.LastIndexByte(s, '/')
	if j < 0 {
		return tf, s, raw, nil
	}
	rest := s[:j]
	typ = rest[strings.LastIndexByte(rest, '/')+1:]
	if !fhir.IsResourceType(typ) {
		return "", "", raw, nil
	}
	return typ, s[j+1:], raw, nil
}

// date matches a date, dateTime, instant or Period.
func (c *cond) date(v any, where string) (bool, error) {
	var t span
	switch x := v.(type) {
	case string:
		s, err := parseDate(x)
		if err != nil {
			return false, fmt.Errorf("%s: %v", where, err)
		}
		t = s
	case map[string]any: // Period
		start, err := strMember(x, "start", where)
		if err != nil {
			return false, err
		}
		end, err := strMember(x, "end", where)
		if err != nil {
			return false, err
		}
		if start == "" && end == "" {
			return false, nil
		}
		t = span{lo: negInf, hi: posInf}
		if start != "" {
			s, err := parseDate(start)
			if err != nil {
				return false, fmt.Errorf("%s.start: %v", where, err)
			}
			t.lo = s.lo
		}
		if end != "" {
			s, err := parseDate(end)
			if err != nil {
				return false, fmt.Errorf("%s.end: %v", where, err)
			}
			t.hi = s.hi
		}
	default:
		return false, fmt.Errorf("%s: want a date string or a Period, got %s", where, jsonKind(v))
	}
	for _, dc := range c.dates {
		if dc.match(t) {
			return true, nil
		}
	}
	return false, nil
}

// string matches a string: starts-with after folding by default, equality
// for :exact, substring after folding for :contains.
func (c *cond) string(v any, where string) (bool, error) {
	x, ok := v.(string)
	if !ok {
		return false, fmt.Errorf("%s: want a string, got %s", where, jsonKind(v))
	}
	if c.modifier == "exact" {
		for _, s := range c.strs {
			if x == s {
				return true, nil
			}
		}
		return false, nil
	}
	x = fold(x)
	for _, s := range c.strs {
		if c.modifier == "contains" && strings.Contains(x, s) || strings.HasPrefix(x, s) {
			return true, nil
		}
	}
	return false, nil
}

// strMember reads an optional string member of m.
func strMember(m map[string]any, key, where string) (string, error) {
	switch x := m[key].(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	default:
		return "", fmt.Errorf("%s.%s: want a string, got %s", where, key, jsonKind(x))
	}
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// doc is a resource body being matched: the raw top-level members a filter
// reads, decoded on first use.
type doc struct {
	typ     string
	raw     [][]byte
	val     []any
	decoded []bool
}

// newDoc validates body and finds the members keys in it.
func newDoc(typ string, keys []string, body []byte) (*doc, error) {
	d := &doc{typ: typ}
	if !json.Valid(body) {
		return nil, d.malformed(fmt.Errorf("not valid JSON"))
	}
	n := len(keys)
	d.raw = make([][]byte, n)
	d.val = make([]any, n)
	d.decoded = make([]bool, n)
	var rt []byte
	err := scanTop(body, func(key, val []byte) {
		if string(key) == "resourceType" {
			rt = val
			return
		}
		for i, k := range keys {
			if string(key) == k {
				d.raw[i] = val
			}
		}
	})
	if err != nil {
		return nil, d.malformed(err)
	}
	var got string
	if rt == nil {
		return nil, d.malformed(fmt.Errorf("no resourceType"))
	}
	if json.Unmarshal(rt, &got) != nil || got != typ {
		return nil, d.malformed(fmt.Errorf("resourceType is %s, want %q", rt, typ))
	}
	return d, nil
}

// top returns the decoded top-level member i, nil if absent.
func (d *doc) top(i int) (any, error) {
	if !d.decoded[i] {
		d.decoded[i] = true
		if d.raw[i] != nil {
			if err := json.Unmarshal(d.raw[i], &d.val[i]); err != nil {
				return nil, d.malformed(err)
			}
		}
	}
	return d.val[i], nil
}

func (d *doc) malformed(err error) error {
	return fmt.Errorf("typefilter: malformed %s resource: %w", d.typ, err)
}

// scanTop calls fn with every key (unescaped) and raw value of the JSON
// object b, which must be valid JSON.
func scanTop(b []byte, fn func(key, val []byte)) error {
	return fhir.EachMember(b, fn)
}
