package typefilter

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// Filter is a parsed _typeFilter.
type Filter struct {
	types map[string]*typeFilter
}

// typeFilter holds the subqueries of one resource type; a resource passes
// if it matches any of them.
type typeFilter struct {
	subs []subquery
	// keys are the top-level JSON members any condition reads; a path's
	// first step is an index into keys.
	keys []string
}

// subquery is one "Type?query"; a resource matches it if it matches every
// condition.
type subquery struct {
	text  string
	conds []cond
}

// Values of cond.missing.
const (
	missingNone  = iota // no :missing modifier
	missingTrue         // :missing=true
	missingFalse        // :missing=false
)

// cond is one search parameter occurrence "name[:modifier]=v1,v2,...": the
// values are ORed.
type cond struct {
	name     string // as written, with the modifier
	spec     spec
	paths    []path
	modifier string
	missing  int
	tokens   []tokenAlt
	refs     []refAlt
	dates    []dateCond
	strs     []string // folded, except for :exact
}

// path is a parsed spec path: top-level member keys[key], then rest.
type path struct {
	text string
	key  int
	rest []string
}

// tokenAlt is a token search value: [system|]code.
type tokenAlt struct {
	hasSystem bool   // a "|" was given
	system    string // "" with hasSystem: "|code", no system
	code      string // "": any code of system ("system|")
}

// refAlt is a reference search value.
type refAlt struct {
	raw string // as given, for an exact comparison
	typ string // "" for a bare id or a URN
	id  string // "" for a URN
}

// Parse parses every _typeFilter value. It returns an error naming the
// offending subquery/parameter for: a subquery without "Type?"; an unknown
// resource type; result parameters (_include, _revinclude, _sort, _count,
// _elements, _summary, _total, _contained, _containedType) -> "not allowed in
// _typeFilter"; a search parameter not supported for that type; modifiers
// other than the supported ones (:missing for any param, :exact and
// :contains for string, :not for token); a malformed value (bad date, bad
// prefix, bad reference, empty value).
//
// Each value is one _typeFilter parameter as the HTTP layer decoded it once;
// it may hold several subqueries joined by commas. Parse(nil) is the zero
// Filter.
func Parse(values []string) (Filter, error) { return ParseAt(values, time.Now()) }

// ParseAt is Parse with the clock of the ap prefix fixed at now: every task
// of one export parses its _typeFilter at the export's transactionTime, so
// that ap means the same in all of them.
func ParseAt(values []string, now time.Time) (Filter, error) {
	var f Filter
	for _, v := range values {
		for _, q := range splitSubqueries(v) {
			typ, sq, err := parseSubquery(q, now)
			if err != nil {
				return Filter{}, err
			}
			if f.types == nil {
				f.types = make(map[string]*typeFilter)
			}
			tf := f.types[typ]
			if tf == nil {
				tf = &typeFilter{}
				f.types[typ] = tf
			}
			tf.subs = append(tf.subs, sq)
		}
	}
	for _, tf := range f.types {
		tf.index()
	}
	return f, nil
}

// index assigns the top-level keys read by the conditions of tf.
func (tf *typeFilter) index() {
	pos := map[string]int{}
	for i := range tf.subs {
		for j := range tf.subs[i].conds {
			c := &tf.subs[i].conds[j]
			for _, p := range c.spec.Paths {
				steps := strings.Split(p, ".")
				k, ok := pos[steps[0]]
				if !ok {
					k = len(tf.keys)
					pos[steps[0]] = k
					tf.keys = append(tf.keys, steps[0])
				}
				c.paths = append(c.paths, path{text: p, key: k, rest: steps[1:]})
			}
		}
	}
}

// Types returns the resource types that have at least one subquery, sorted.
func (f Filter) Types() []string {
	out := make([]string, 0, len(f.types))
	for t := range f.types {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// IsZero reports whether no filter was given.
func (f Filter) IsZero() bool { return len(f.types) == 0 }

// splitSubqueries splits one _typeFilter value into its subqueries: only at
// a comma followed by "Type?" (an upper-case letter, more letters, "?"), so
// that a comma inside a parameter value ("code=a,b") stays in the value.
func splitSubqueries(v string) []string {
	var out []string
	start := 0
	for i := 0; i < len(v); i++ {
		if v[i] == ',' && startsWithType(v[i+1:]) {
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

// startsWithType reports whether s begins with [A-Z][A-Za-z]+\?.
func startsWithType(s string) bool {
	if len(s) == 0 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	j := 1
	for j < len(s) && (s[j] >= 'A' && s[j] <= 'Z' || s[j] >= 'a' && s[j] <= 'z') {
		j++
	}
	return j >= 2 && j < len(s) && s[j] == '?'
}

// parseSubquery parses "Type?query".
func parseSubquery(q string, now time.Time) (string, subquery, error) {
	i := strings.IndexByte(q, '?')
	if i <= 0 {
		return "", subquery{}, fmt.Errorf(`_typeFilter %q: want "ResourceType?search-parameters"`, q)
	}
	typ := q[:i]
	if !fhir.IsResourceType(typ) {
		return "", subquery{}, fmt.Errorf("_typeFilter %q: unknown resource type %q", q, typ)
	}
	vals, err := url.ParseQuery(q[i+1:])
	if err != nil {
		return "", subquery{}, fmt.Errorf("_typeFilter %q: malformed query: %v", q, err)
	}
	names := make([]string, 0, len(vals))
	for name := range vals {
		names = append(names, name)
	}
	sort.Strings(names)
	sq := subquery{text: q}
	for _, name := range names {
		for _, v := range vals[name] {
			c, err := parseCond(typ, name, v, now)
			if err != nil {
				return "", subquery{}, fmt.Errorf("_typeFilter %q: parameter %q: %v", q, name, err)
			}
			sq.conds = append(sq.conds, c)
		}
	}
	return typ, sq, nil
}

// parseCond parses one parameter occurrence of a subquery on typ.
func parseCond(typ, name, value string, now time.Time) (cond, error) {
	base, mod, _ := strings.Cut(name, ":")
	if resultParams[base] {
		return cond{}, fmt.Errorf("%s is not allowed in _typeFilter", base)
	}
	s, ok := lookup(typ, base)
	if !ok {
		return cond{}, fmt.Errorf("search parameter %q is not supported for %s", base, typ)
	}
	c := cond{name: name, spec: s, modifier: mod}
	switch {
	case mod == "":
	case mod == "missing":
		switch value {
		case "true":
			c.missing = missingTrue
		case "false":
			c.missing = missingFalse
		default:
			return cond{}, fmt.Errorf(":missing takes true or false, not %q", value)
		}
		return c, nil
	case (mod == "exact" || mod == "contains") && s.Kind == kindString:
	case mod == "not" && s.Kind == kindToken:
	default:
		return cond{}, fmt.Errorf("modifier :%s is not supported on %s parameter %q (supported: :missing; :exact and :contains on string; :not on token)", mod, s.Kind, base)
	}
	if value == "" {
		return cond{}, fmt.Errorf("empty value")
	}
	for _, alt := range splitEscaped(value, ',') {
		if alt == "" {
			return cond{}, fmt.Errorf("empty value in %q", value)
		}
		var err error
		switch s.Kind {
		case kindToken:
			var t tokenAlt
			t, err = parseToken(alt)
			c.tokens = append(c.tokens, t)
		case kindReference:
			var r refAlt
			r, err = parseRef(alt, s.Target)
			c.refs = append(c.refs, r)
		case kindDate:
			var d dateCond
			d, err = parseDateValue(unescape(alt), now)
			c.dates = append(c.dates, d)
		case kindString:
			v := unescape(alt)
			if mod != "exact" {
				v = fold(v)
			}
			c.strs = append(c.strs, v)
		}
		if err != nil {
			return cond{}, err
		}
	}
	return c, nil
}

// parseToken parses "[system]|[code]" or "code".
func parseToken(v string) (tokenAlt, error) {
	parts := splitEscaped(v, '|')
	switch len(parts) {
	case 1:
		return tokenAlt{code: unescape(v)}, nil
	case 2:
		t := tokenAlt{hasSystem: true, system: unescape(parts[0]), code: unescape(parts[1])}
		if t.system == "" && t.code == "" {
			return tokenAlt{}, fmt.Errorf("token %q has neither system nor code", v)
		}
		return t, nil
	}
	return tokenAlt{}, fmt.Errorf("token %q has more than one unescaped '|'", v)
}

// parseRef parses a reference search value: "Type/id", a bare "id", an
// absolute URL ending in "Type/id", or a URN (compared as is). A
// "/_history/version" suffix is ignored. target, if set, is the only type
// the parameter can refer to.
func parseRef(v, target string) (refAlt, error) {
	v = unescape(v)
	r := refAlt{raw: v}
	if strings.HasPrefix(v, "urn:") {
		return r, nil
	}
	s := v
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	absolute := strings.Contains(s, "://")
	j := strings.LastIndexByte(s, '/')
	if j < 0 {
		if absolute {
			return refAlt{}, fmt.Errorf("reference %q does not end in Type/id", v)
		}
		r.id = s
	} else {
		r.id = s[j+1:]
		rest := s[:j]
		if absolute || strings.Contains(rest, "/") {
			if !absolute {
				return refAlt{}, fmt.Errorf("reference %q is not Type/id, id or an absolute URL", v)
			}
			rest = rest[strings.LastIndexByte(rest, '/')+1:]
		}
		r.typ = rest
	}
	if !fhir.ValidID(r.id) {
		return refAlt{}, fmt.Errorf("reference %q: %q is not a valid id", v, r.id)
	}
	if r.typ != "" && !fhir.IsResourceType(r.typ) {
		return refAlt{}, fmt.Errorf("reference %q: unknown resource type %q", v, r.typ)
	}
	if target != "" && r.typ != "" && r.typ != target {
		return refAlt{}, fmt.Errorf("reference %q: this parameter only refers to %s", v, target)
	}
	return r, nil
}

// splitEscaped splits s at every sep not escaped by a backslash (R4 search
// escaping: "\,", "\|", "\$", "\\"). The parts keep their escapes.
func splitEscaped(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// unescape removes the R4 search escapes "\,", "\|", "\$" and "\\"; any
// other backslash is kept.
func unescape(s string) string {
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.IndexByte(`,|$\`, s[i+1]) >= 0 {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
