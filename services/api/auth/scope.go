package auth

import (
	"fmt"
	"slices"
	"strings"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// Perm is a set of SMART v2 permissions.
type Perm uint8

// The SMART v2 permissions, in the order their letters must appear.
const (
	PermCreate Perm = 1 << iota
	PermRead
	PermUpdate
	PermDelete
	PermSearch

	permAll = PermCreate | PermRead | PermUpdate | PermDelete | PermSearch
	// PermExport is what a bulk export of a type needs: search (it is a
	// query over the whole population) and read (it returns the resources).
	PermExport = PermRead | PermSearch
)

const permLetters = "cruds"

// letters spells p in SMART v2 order, e.g. "rs".
func (p Perm) letters() string {
	var b strings.Builder
	for i := range len(permLetters) {
		if p&(1<<i) != 0 {
			b.WriteByte(permLetters[i])
		}
	}
	return b.String()
}

// Scope is one system-level SMART scope: a resource type (or "*") and the
// permissions on it. V1 remembers that it was written in v1 syntax
// (.read, .write, .*), so that a grant answers in the client's syntax.
type Scope struct {
	Type  string
	Perms Perm
	V1    bool
}

// ParseScope reads system/<Type|*>.<suffix>. v1 suffixes are read (= rs),
// write (= cud) and * (= cruds); v2 suffixes are a non-empty subset of
// c, r, u, d, s in that order. Anything else (patient/ and user/ scopes,
// launch context, granular ?param= scopes) is not a scope this server
// grants, and ok is false.
func ParseScope(s string) (Scope, bool) {
	rest, ok := strings.CutPrefix(s, "system/")
	if !ok {
		return Scope{}, false
	}
	typ, suffix, ok := strings.Cut(rest, ".")
	if !ok || (typ != "*" && !fhir.IsResourceType(typ)) {
		return Scope{}, false
	}
	switch suffix {
	case "read":
		return Scope{Type: typ, Perms: PermRead | PermSearch, V1: true}, true
	case "write":
		return Scope{Type: typ, Perms: PermCreate | PermUpdate | PermDelete, V1: true}, true
	case "*":
		return Scope{Type: typ, Perms: permAll, V1: true}, true
	}
	if suffix == "" {
		return Scope{}, false
	}
	var p Perm
	next := 0 // letters must appear in cruds order, each at most once
	for i := range len(suffix) {
		at := strings.IndexByte(permLetters[next:], suffix[i])
		if at < 0 {
			return Scope{}, false
		}
		p |= 1 << (next + at)
		next += at + 1
	}
	return Scope{Type: typ, Perms: p}, true
}

// String writes the scope in v1 syntax when it was v1 and v1 can say it,
// otherwise in v2 syntax.
func (s Scope) String() string {
	suffix := s.Perms.letters()
	if s.V1 {
		switch s.Perms {
		case PermRead | PermSearch:
			suffix = "read"
		case PermCreate | PermUpdate | PermDelete:
			suffix = "write"
		case permAll:
			suffix = "*"
		}
	}
	return "system/" + s.Type + "." + suffix
}

// covers reports whether s holds everything o holds.
func (s Scope) covers(o Scope) bool {
	return (s.Type == "*" || s.Type == o.Type) && s.Perms&o.Perms == o.Perms
}

// Scopes is a set of granted scopes.
type Scopes []Scope

// ParseScopes reads a space-separated scope string. It returns the system
// scopes it understood and, separately, every other word.
func ParseScopes(s string) (Scopes, []string) {
	var out Scopes
	var other []string
	for _, w := range strings.Fields(s) {
		if sc, ok := ParseScope(w); ok {
			out = append(out, sc)
		} else {
			other = append(other, w)
		}
	}
	return out, other
}

// String is the space-separated scope string.
func (ss Scopes) String() string {
	words := make([]string, len(ss))
	for i, s := range ss {
		words[i] = s.String()
	}
	return strings.Join(words, " ")
}

// Allows reports whether the scopes together grant need on typ; a
// permission may come from a typ scope or a wildcard one.
func (ss Scopes) Allows(typ string, need Perm) bool {
	var have Perm
	for _, s := range ss {
		if s.Type == "*" || s.Type == typ {
			have |= s.Perms
		}
	}
	return have&need == need
}

// AllowsAll reports whether wildcard scopes grant need on every type.
func (ss Scopes) AllowsAll(need Perm) bool {
	var have Perm
	for _, s := range ss {
		if s.Type == "*" {
			have |= s.Perms
		}
	}
	return have&need == need
}

// Types lists, sorted, the types the scopes grant need on, when they do
// not grant it on every type (all is then true and types nil).
func (ss Scopes) Types(need Perm) (types []string, all bool) {
	if ss.AllowsAll(need) {
		return nil, true
	}
	for _, s := range ss {
		if s.Type != "*" && !slices.Contains(types, s.Type) && ss.Allows(s.Type, need) {
			types = append(types, s.Type)
		}
	}
	slices.Sort(types)
	return types, false
}

// Grant mediates requested scopes against the registered ones: each
// requested scope is narrowed to what some registered scope allows (type
// and permissions both), in the syntax the client used; scopes another
// granted scope already covers are dropped.
func Grant(requested, registered Scopes) Scopes {
	var out Scopes
	add := func(g Scope) {
		for _, have := range out {
			if have.covers(g) {
				return
			}
		}
		out = slices.DeleteFunc(out, func(have Scope) bool { return g.covers(have) })
		out = append(out, g)
	}
	for _, r := range requested {
		for _, g := range registered {
			typ := r.Type
			switch {
			case r.Type == "*":
				typ = g.Type
			case g.Type != "*" && g.Type != r.Type:
				continue
			}
			if p := r.Perms & g.Perms; p != 0 {
				add(Scope{Type: typ, Perms: p, V1: r.V1})
			}
		}
	}
	return out
}

// validateScopes checks a registration's scope string: every word a
// system scope this server understands.
func validateScopes(s string) (Scopes, error) {
	scopes, other := ParseScopes(s)
	if len(other) > 0 {
		return nil, fmt.Errorf("scope %q is not a system/<Type|*>.<read|write|*|cruds subset> scope", other[0])
	}
	if len(scopes) == 0 {
		return nil, fmt.Errorf("a client needs at least one scope")
	}
	return scopes, nil
}
