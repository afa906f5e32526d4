package compartment

import (
	"encoding/json"
	"fmt"
)

// maxDepth bounds nesting, as encoding/json does.
const maxDepth = 10000

// scanner is a validating, allocation-free JSON walker. It accepts exactly
// the documents encoding/json accepts (json.Valid): RFC 8259 syntax, any
// bytes >= 0x20 inside strings, nesting up to maxDepth.
type scanner struct {
	data []byte
	pos  int
}

func (s *scanner) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s at offset %d", ErrMalformed, fmt.Sprintf(format, args...), s.pos)
}

func (s *scanner) syntax(what string) error {
	if s.pos >= len(s.data) {
		return s.errorf("unexpected end of JSON input, want %s", what)
	}
	return s.errorf("invalid character %q, want %s", s.data[s.pos], what)
}

// ws skips whitespace and returns the next byte (0 at end of input).
func (s *scanner) ws() byte {
	for s.pos < len(s.data) {
		switch c := s.data[s.pos]; c {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return c
		}
	}
	return 0
}

// str scans a string at s.pos and returns its raw content (between the
// quotes) and whether it holds escape sequences.
func (s *scanner) str() (raw []byte, escaped bool, err error) {
	if s.pos >= len(s.data) || s.data[s.pos] != '"' {
		return nil, false, s.syntax("string")
	}
	d := s.data
	start := s.pos + 1
	for i := start; i < len(d); {
		c := d[i]
		switch {
		case c == '"':
			s.pos = i + 1
			return d[start:i], escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(d) {
				s.pos = len(d)
				return nil, false, s.syntax("escape sequence")
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := i + 2; k < i+6; k++ {
					if k >= len(d) || !isHex(d[k]) {
						s.pos = min(k, len(d))
						return nil, false, s.syntax("hex digit in \\u escape")
					}
				}
				i += 6
			default:
				s.pos = i + 1
				return nil, false, s.syntax("escape character")
			}
		case c < 0x20:
			s.pos = i
			return nil, false, s.syntax("string character")
		default:
			i++
		}
	}
	s.pos = len(d)
	return nil, false, s.syntax("closing quote")
}

// text scans a string and returns its decoded value. Only escaped strings
// take the slow path through encoding/json.
func (s *scanner) text() (string, error) {
	start := s.pos
	raw, escaped, err := s.str()
	if err != nil {
		return "", err
	}
	if !escaped {
		return string(raw), nil
	}
	return s.decode(start)
}

// decode decodes the string token that starts at start and ends at s.pos.
func (s *scanner) decode(start int) (string, error) {
	var v string
	if err := json.Unmarshal(s.data[start:s.pos], &v); err != nil {
		return "", s.errorf("bad string: %v", err)
	}
	return v, nil
}

// key scans an object key; for escaped keys the decoded form is returned
// as the second result and raw is nil.
func (s *scanner) key() (raw []byte, decoded string, err error) {
	start := s.pos
	raw, escaped, err := s.str()
	if err != nil || !escaped {
		return raw, "", err
	}
	decoded, err = s.decode(start)
	return nil, decoded, err
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (s *scanner) number() error {
	d, i := s.data, s.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && '1' <= d[i] && d[i] <= '9':
		for i++; i < len(d) && isDigit(d[i]); i++ {
		}
	default:
		s.pos = i
		return s.syntax("digit")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || !isDigit(d[i]) {
			s.pos = i
			return s.syntax("digit after decimal point")
		}
		for ; i < len(d) && isDigit(d[i]); i++ {
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			s.pos = i
			return s.syntax("digit in exponent")
		}
		for ; i < len(d) && isDigit(d[i]); i++ {
		}
	}
	s.pos = i
	return nil
}

func (s *scanner) literal(lit string) error {
	for i := 0; i < len(lit); i++ {
		if s.pos >= len(s.data) || s.data[s.pos] != lit[i] {
			return s.syntax("literal " + lit)
		}
		s.pos++
	}
	return nil
}

// openObject consumes '{' after optional whitespace. depth is the depth of
// the object being opened.
func (s *scanner) openObject(depth int) error {
	if s.ws() != '{' {
		return s.syntax("'{'")
	}
	if depth > maxDepth {
		return s.errorf("exceeded max depth %d", maxDepth)
	}
	s.pos++
	return nil
}

// nextKey advances to the next member of an object opened by openObject:
// it consumes the separator, the key and the colon. ok is false (and the
// closing brace consumed) at the end of the object. first must be true for
// the first call on an object.
func (s *scanner) nextKey(first bool) (raw []byte, decoded string, ok bool, err error) {
	c := s.ws()
	if first {
		if c == '}' {
			s.pos++
			return nil, "", false, nil
		}
	} else {
		switch c {
		case '}':
			s.pos++
			return nil, "", false, nil
		case ',':
			s.pos++
			s.ws()
		default:
			return nil, "", false, s.syntax("',' or '}'")
		}
	}
	raw, decoded, err = s.key()
	if err != nil {
		return nil, "", false, err
	}
	if s.ws() != ':' {
		return nil, "", false, s.syntax("':'")
	}
	s.pos++
	return raw, decoded, true, nil
}

// nextElem advances to the next element of an array whose '[' has been
// consumed. ok is false (and ']' consumed) at the end of the array.
func (s *scanner) nextElem(first bool) (ok bool, err error) {
	c := s.ws()
	if c == ']' && first {
		s.pos++
		return false, nil
	}
	if !first {
		switch c {
		case ']':
			s.pos++
			return false, nil
		case ',':
			s.pos++
		default:
			return false, s.syntax("',' or ']'")
		}
	}
	return true, nil
}

// skip validates and skips one value. depth is the depth of the value.
func (s *scanner) skip(depth int) error {
	switch c := s.ws(); c {
	case '{':
		if err := s.openObject(depth); err != nil {
			return err
		}
		for first := true; ; first = false {
			_, _, ok, err := s.nextKey(first)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			if err := s.skip(depth + 1); err != nil {
				return err
			}
		}
	case '[':
		if depth > maxDepth {
			return s.errorf("exceeded max depth %d", maxDepth)
		}
		s.pos++
		for first := true; ; first = false {
			ok, err := s.nextElem(first)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			if err := s.skip(depth + 1); err != nil {
				return err
			}
		}
	case '"':
		_, _, err := s.str()
		return err
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		if c == '-' || isDigit(c) {
			return s.number()
		}
		return s.syntax("value")
	}
}

// resource walks a whole resource body of type ti, appending the Patient
// ids it finds to ids.
func (s *scanner) resource(ti *typeInfo, ids *[]string) error {
	if err := s.openObject(1); err != nil {
		return err
	}
	for first := true; ; first = false {
		raw, decoded, ok, err := s.nextKey(first)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		switch {
		case isKey(raw, decoded, "resourceType"):
			if s.ws() != '"' {
				return s.errorf("resourceType is not a string")
			}
			start := s.pos
			raw, escaped, err := s.str()
			if err != nil {
				return err
			}
			if escaped || string(raw) != ti.name {
				rt, err := s.decode(start)
				if err != nil {
					return err
				}
				if rt != ti.name {
					return s.errorf("resourceType %q, want %q", rt, ti.name)
				}
			}
		case ti.self && isKey(raw, decoded, "id"):
			switch s.ws() {
			case 'n':
				if err := s.literal("null"); err != nil {
					return err
				}
				*ids = (*ids)[:0]
			case '"':
				id, err := s.text()
				if err != nil {
					return err
				}
				if !validID(id) {
					return s.errorf("invalid Patient id %q", id)
				}
				*ids = append((*ids)[:0], id) // the last id wins
			default:
				return s.errorf("id is not a string")
			}
		default:
			var c *node
			if raw != nil {
				c = ti.root.childBytes(raw)
			} else {
				c = ti.root.child(decoded)
			}
			if c == nil {
				err = s.skip(2)
			} else {
				err = s.walk(c, 2, false, ids)
			}
			if err != nil {
				return err
			}
		}
	}
	if s.ws(); s.pos < len(s.data) {
		return s.syntax("end of input")
	}
	return nil
}

func isKey(raw []byte, decoded, want string) bool {
	if raw != nil {
		return string(raw) == want
	}
	return decoded == want
}

// walk visits the value at trie node n: an object (or, unless inArray, an
// array of objects) whose members lead further down the trie, or, on a
// Reference node, one or more Reference objects. JSON null counts as absent.
func (s *scanner) walk(n *node, depth int, inArray bool, ids *[]string) error {
	switch s.ws() {
	case 'n':
		return s.literal("null")
	case '[':
		if inArray {
			return s.errorf("nested array in %s", n.name)
		}
		s.pos++
		for first := true; ; first = false {
			ok, err := s.nextElem(first)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			if err := s.walk(n, depth+1, true, ids); err != nil {
				return err
			}
		}
	case '{':
		if n.ref {
			return s.reference(depth, ids)
		}
		if err := s.openObject(depth); err != nil {
			return err
		}
		for first := true; ; first = false {
			raw, decoded, ok, err := s.nextKey(first)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			var c *node
			if raw != nil {
				c = n.childBytes(raw)
			} else {
				c = n.child(decoded)
			}
			if c == nil {
				err = s.skip(depth + 1)
			} else {
				err = s.walk(c, depth+1, false, ids)
			}
			if err != nil {
				return err
			}
		}
	default:
		// Validate first so that a syntax error is reported as such.
		if err := s.skip(depth); err != nil {
			return err
		}
		return s.errorf("%s is not an object", n.name)
	}
}

// reference reads one Reference object and appends the Patient id it names.
func (s *scanner) reference(depth int, ids *[]string) error {
	if err := s.openObject(depth); err != nil {
		return err
	}
	var ref string
	var typePatient bool
	for first := true; ; first = false {
		raw, decoded, ok, err := s.nextKey(first)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		isRef := isKey(raw, decoded, "reference")
		if !isRef && !isKey(raw, decoded, "type") {
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			continue
		}
		switch s.ws() {
		case '"':
			start := s.pos
			v, escaped, err := s.str()
			if err != nil {
				return err
			}
			switch {
			case escaped:
				str, err := s.decode(start)
				if err != nil {
					return err
				}
				if isRef {
					ref = str
				} else {
					typePatient = isPatientType(str)
				}
			case isRef:
				ref = string(v)
			default:
				// No allocation for the common unescaped type.
				typePatient = string(v) == "Patient" || string(v) == patientTypeURL
			}
		case 'n':
			if err := s.literal("null"); err != nil {
				return err
			}
			if isRef {
				ref = ""
			} else {
				typePatient = false
			}
		default:
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			if isRef {
				return s.errorf("Reference.reference is not a string")
			}
			return s.errorf("Reference.type is not a string")
		}
	}
	if id, ok := patientRef(ref, typePatient); ok {
		*ids = append(*ids, id)
	}
	return nil
}
