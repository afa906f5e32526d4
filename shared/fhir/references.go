package fhir

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// RewriteReferences returns body with the value of every "reference"
// member, at any depth (Reference.reference), replaced by what fn returns
// for it when fn says so. Everything else is kept byte for byte. body must
// be valid JSON.
func RewriteReferences(body []byte, fn func(ref string) (string, bool)) ([]byte, error) {
	var out []byte
	copied := 0  // body[:copied] is in out already
	ref := false // the next value is that of a "reference" member
	for i := 0; i < len(body); {
		c := body[i]
		if c != '"' {
			if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
				ref = false
			}
			i++
			continue
		}
		end := skipString(body, i)
		if j := skipSpace(body, end); j < len(body) && body[j] == ':' {
			ref = bytes.Equal(body[i:end], []byte(`"reference"`))
			i = j + 1
			continue
		}
		if ref {
			ref = false
			var s string
			if err := json.Unmarshal(body[i:end], &s); err != nil {
				return nil, fmt.Errorf("reference at byte %d: %w", i, err)
			}
			if to, ok := fn(s); ok {
				quoted, _ := json.Marshal(to) // a string always marshals
				if out == nil {
					out = make([]byte, 0, len(body)+64)
				}
				out = append(append(out, body[copied:i]...), quoted...)
				copied = end
			}
		}
		i = end
	}
	if out == nil {
		return body, nil
	}
	return append(out, body[copied:]...), nil
}
