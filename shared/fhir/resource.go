package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// ValidID reports whether s is a legal R4 id.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// field is one top-level member of a JSON object: b[ks:ke] is the quoted
// key, b[vs:ve] the raw value.
type field struct{ ks, ke, vs, ve int }

// topLevel splits a JSON object into its members without decoding values.
// b must be valid JSON (check with json.Valid first when it comes from
// outside).
func topLevel(b []byte) ([]field, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	i = skipSpace(b, i+1)
	var out []field
	if i < len(b) && b[i] == '}' {
		return out, nil
	}
	for i < len(b) {
		if b[i] != '"' {
			return nil, errors.New("malformed JSON object")
		}
		ks := i
		i = skipString(b, i)
		ke := i
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != ':' {
			return nil, errors.New("malformed JSON object")
		}
		i = skipSpace(b, i+1)
		vs := i
		i = skipValue(b, i)
		out = append(out, field{ks, ke, vs, i})
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return out, nil
		}
		return nil, errors.New("malformed JSON object")
	}
	return nil, errors.New("truncated JSON object")
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	default:
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\n' && b[i] != '\t' && b[i] != '\r' {
			i++
		}
		return i
	}
}

func (f field) key(b []byte) []byte { return b[f.ks+1 : f.ke-1] }

// Header is what every resource must carry.
type Header struct {
	ResourceType string
	ID           string
}

// Inspect checks that body is a JSON object with a known resourceType and a
// legal id, and returns them. It says precisely what is wrong otherwise.
// requireID false accepts a resource without id (a create).
func Inspect(body []byte, requireID bool) (Header, error) {
	if !json.Valid(body) {
		return Header{}, errors.New("not valid JSON")
	}
	fields, err := topLevel(body)
	if err != nil {
		return Header{}, err
	}
	if err := checkMembers(body, fields, ""); err != nil {
		return Header{}, err
	}
	var h Header
	var haveType, haveID bool
	for _, f := range fields {
		switch string(f.key(body)) {
		case "meta":
			// The ingester rewrites meta: it must be an object whose
			// members it reads as every client will (or null).
			meta := body[f.vs:f.ve]
			if bytes.Equal(meta, []byte("null")) {
				continue
			}
			mf, err := topLevel(meta)
			if err != nil {
				return Header{}, errors.New("meta is not a JSON object")
			}
			if err := checkMembers(meta, mf, "meta: "); err != nil {
				return Header{}, err
			}
		case "resourceType":
			if err := json.Unmarshal(body[f.vs:f.ve], &h.ResourceType); err != nil {
				return Header{}, errors.New("resourceType is not a string")
			}
			haveType = true
		case "id":
			if err := json.Unmarshal(body[f.vs:f.ve], &h.ID); err != nil {
				return Header{}, errors.New("id is not a string")
			}
			haveID = true
		}
	}
	switch {
	case !haveType:
		return Header{}, errors.New("resourceType is missing")
	case !IsResourceType(h.ResourceType):
		return Header{}, fmt.Errorf("resourceType %q is not an R4 resource type", h.ResourceType)
	case !haveID && requireID:
		return Header{}, errors.New("id is missing")
	case haveID && !ValidID(h.ID):
		return Header{}, fmt.Errorf("id %q is not a valid FHIR id ([A-Za-z0-9-.]{1,64})", h.ID)
	}
	return h, nil
}

// checkMembers refuses the member names that a rewrite, which compares
// names as written, and a client, which unescapes them, could read
// differently: a name written with escapes (FHIR element names are plain
// ASCII, so none needs one), and a name that appears twice (decoders keep
// either the first or the last).
func checkMembers(b []byte, fields []field, where string) error {
	for i, f := range fields {
		k := f.key(b)
		if bytes.IndexByte(k, '\\') >= 0 {
			return fmt.Errorf("%smember name %s is written with escapes; FHIR element names need none", where, b[f.ks:f.ke])
		}
		for _, g := range fields[:i] {
			if bytes.Equal(g.key(b), k) {
				return fmt.Errorf("%smember %q appears twice", where, k)
			}
		}
	}
	return nil
}

// SetMeta returns body with meta.versionId and meta.lastUpdated set,
// keeping every other member (and every other meta member) as it was, in
// its order. A resource without meta gets one after its id. body must be a
// valid JSON object.
func SetMeta(dst, body []byte, versionID, lastUpdated string) ([]byte, error) {
	fields, err := topLevel(body)
	if err != nil {
		return nil, err
	}
	stamp := func(dst []byte, meta []byte) ([]byte, error) {
		dst = append(dst, `"meta":{"versionId":`...)
		dst = strconv.AppendQuote(dst, versionID)
		dst = append(dst, `,"lastUpdated":`...)
		dst = strconv.AppendQuote(dst, lastUpdated)
		if meta != nil {
			mf, err := topLevel(meta)
			if err != nil {
				return nil, fmt.Errorf("meta: %w", err)
			}
			for _, f := range mf {
				k := f.key(meta)
				if bytes.Equal(k, []byte("versionId")) || bytes.Equal(k, []byte("lastUpdated")) {
					continue
				}
				dst = append(dst, ',')
				dst = append(dst, meta[f.ks:f.ke]...)
				dst = append(dst, ':')
				dst = append(dst, meta[f.vs:f.ve]...)
			}
		}
		return append(dst, '}'), nil
	}
	hasMeta := false
	for _, f := range fields {
		if string(f.key(body)) == "meta" {
			hasMeta = true
		}
	}
	dst = append(dst, '{')
	wrote := false
	for i, f := range fields {
		k := string(f.key(body))
		if wrote || i > 0 {
			dst = append(dst, ',')
		}
		wrote = true
		if k == "meta" {
			meta := body[f.vs:f.ve]
			if bytes.Equal(meta, []byte("null")) {
				meta = nil
			}
			if dst, err = stamp(dst, meta); err != nil {
				return nil, err
			}
			continue
		}
		dst = append(dst, body[f.ks:f.ke]...)
		dst = append(dst, ':')
		dst = append(dst, body[f.vs:f.ve]...)
		if !hasMeta && k == "id" {
			dst = append(dst, ',')
			if dst, err = stamp(dst, nil); err != nil {
				return nil, err
			}
			hasMeta = true
		}
	}
	if !hasMeta {
		if wrote {
			dst = append(dst, ',')
		}
		if dst, err = stamp(dst, nil); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// EachMember calls fn with the key (unescaped) and raw value of every
// top-level member of the JSON object b, in order. b must be valid JSON.
func EachMember(b []byte, fn func(key, value []byte)) error {
	fields, err := topLevel(b)
	if err != nil {
		return err
	}
	for _, f := range fields {
		key := f.key(b)
		if bytes.IndexByte(key, '\\') >= 0 {
			var s string
			if err := json.Unmarshal(b[f.ks:f.ke], &s); err != nil {
				return fmt.Errorf("member name: %w", err)
			}
			key = []byte(s)
		}
		fn(key, b[f.vs:f.ve])
	}
	return nil
}

// SetID returns body with its top-level id set to id (replaced, or added
// after resourceType), every other member kept as it was. body must be a
// valid JSON object.
func SetID(body []byte, id string) ([]byte, error) {
	fields, err := topLevel(body)
	if err != nil {
		return nil, err
	}
	quoted := strconv.AppendQuote(nil, id)
	out := make([]byte, 0, len(body)+len(quoted)+8)
	out = append(out, '{')
	wrote, placed := false, false
	member := func(k, v []byte) {
		if wrote {
			out = append(out, ',')
		}
		wrote = true
		out = append(out, k...)
		out = append(out, ':')
		out = append(out, v...)
	}
	for _, f := range fields {
		k := string(f.key(body))
		switch {
		case k == "id":
			member(body[f.ks:f.ke], quoted)
			placed = true
		default:
			member(body[f.ks:f.ke], body[f.vs:f.ve])
			if k == "resourceType" && !placed && !hasMember(body, fields, "id") {
				member([]byte(`"id"`), quoted)
				placed = true
			}
		}
	}
	if !placed {
		member([]byte(`"id"`), quoted)
	}
	return append(out, '}'), nil
}

func hasMember(b []byte, fields []field, name string) bool {
	for _, f := range fields {
		if string(f.key(b)) == name {
			return true
		}
	}
	return false
}
