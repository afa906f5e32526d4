package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// attachmentPaths lists, per R4 (4.0.1) resource type, the elements of
// type Attachment that are not choice elements, as dot paths of JSON names
// from the resource root. Choice elements whose Attachment form is chosen
// (valueAttachment, contentAttachment, sourceAttachment, ...) need no
// table: their JSON name says the type, wherever they are (extensions
// included).
var attachmentPaths = map[string][]string{
	"ClaimResponse":                {"form"},
	"DeviceDefinition":             {"physicalCharacteristics.image"},
	"DiagnosticReport":             {"presentedForm"},
	"DocumentReference":            {"content.attachment"},
	"ExplanationOfBenefit":         {"form"},
	"HealthcareService":            {"photo"},
	"Library":                      {"content"},
	"Media":                        {"content"},
	"MedicinalProductManufactured": {"physicalCharacteristics.image"},
	"MedicinalProductPackaged":     {"packageItem.physicalCharacteristics.image"},
	"Patient":                      {"photo"},
	"Person":                       {"photo"},
	"Practitioner":                 {"photo"},
	"RelatedPerson":                {"photo"},
}

// attNode is one step of the attachment paths of a type: the elements
// below it, and whether the values here are Attachments.
type attNode struct {
	children map[string]*attNode
	att      bool
}

func (n *attNode) child(name []byte) *attNode {
	if n == nil {
		return nil
	}
	return n.children[string(name)]
}

// attachmentRoots is attachmentPaths as trees, one per type.
var attachmentRoots = func() map[string]*attNode {
	roots := make(map[string]*attNode, len(attachmentPaths))
	for typ, paths := range attachmentPaths {
		root := &attNode{}
		for _, p := range paths {
			n := root
			for _, step := range strings.Split(p, ".") {
				c := n.children[step]
				if c == nil {
					if n.children == nil {
						n.children = map[string]*attNode{}
					}
					c = &attNode{}
					n.children[step] = c
				}
				n = c
			}
			n.att = true
		}
		roots[typ] = root
	}
	return roots
}()

// isAttachmentChoice reports whether a JSON member name is a choice
// element in its Attachment form (valueAttachment, contentAttachment, ...).
func isAttachmentChoice(name []byte) bool {
	const suffix = "Attachment"
	return len(name) > len(suffix) && name[0] >= 'a' && name[0] <= 'z' && string(name[len(name)-len(suffix):]) == suffix
}

// maxAttachmentDepth bounds how deep the walk descends; an Attachment
// nested deeper is left alone (no real resource comes near it).
const maxAttachmentDepth = 64

// RewriteAttachmentURLs returns body, a resource of resourceType, with
// the url of every Attachment in it replaced by what fn returns for it
// when fn says so. Everything else is kept byte for byte, and body itself
// is returned when nothing changes. body must be valid JSON.
//
// Attachments are found by where they are: the R4 elements of type
// Attachment of the resource's type (attachmentPaths), every member whose
// name is a choice element in its Attachment form (valueAttachment,
// contentAttachment, ... at any depth, extensions included), and the same
// inside contained resources (contained[]) and nested resources
// (a "resource" member, as in Bundle.entry.resource), by their own types.
// Other members named url (Extension.url, Endpoint addresses, ...) are never
// touched.
func RewriteAttachmentURLs(resourceType string, body []byte, fn func(url string) (string, bool)) ([]byte, error) {
	w := attWalk{body: body, fn: fn}
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	if _, err := w.object(i, attachmentRoots[resourceType], false, 0); err != nil {
		return nil, err
	}
	if w.out == nil {
		return body, nil
	}
	return append(w.out, body[w.copied:]...), nil
}

// attWalk is one rewrite: body[:copied] is in out already (out is nil
// until something changes).
type attWalk struct {
	body   []byte
	out    []byte
	copied int
	fn     func(string) (string, bool)
}

var errMalformed = errors.New("malformed JSON")

// array walks the array whose '[' is at body[i], each element with elem,
// and returns the index after the ']'.
func (w *attWalk) array(i int, elem func(i int) (int, error)) (int, error) {
	i = skipSpace(w.body, i+1)
	if i < len(w.body) && w.body[i] == ']' {
		return i + 1, nil
	}
	for {
		end, err := elem(i)
		if err != nil {
			return 0, err
		}
		i = skipSpace(w.body, end)
		if i >= len(w.body) {
			return 0, errMalformed
		}
		switch w.body[i] {
		case ',':
			i = skipSpace(w.body, i+1)
		case ']':
			return i + 1, nil
		default:
			return 0, errMalformed
		}
	}
}

// value walks the value at body[i] and returns the index after it. n is
// the attachment-path node of the value's element (nil: on no path), att
// whether the value is an Attachment (or an array of them).
func (w *attWalk) value(i int, n *attNode, att bool, depth int) (int, error) {
	if i >= len(w.body) {
		return 0, errMalformed
	}
	switch w.body[i] {
	case '{':
		if depth >= maxAttachmentDepth || (n == nil && !att && !w.mayHoldAttachment(i)) {
			return w.skip(i)
		}
		return w.object(i, n, att, depth)
	case '[':
		if depth >= maxAttachmentDepth {
			return w.skip(i)
		}
		return w.array(i, func(i int) (int, error) { return w.value(i, n, att, depth+1) })
	default:
		return w.skip(i)
	}
}

// mayHoldAttachment is a cheap look at the object at body[i]: an object
// off the attachment paths can hold an Attachment only through a choice
// element (…Attachment) or a nested resource.
func (w *attWalk) mayHoldAttachment(i int) bool {
	end, err := w.skip(i)
	if err != nil {
		return true // object reports the error
	}
	obj := w.body[i:end]
	return bytes.Contains(obj, []byte(`Attachment"`)) || bytes.Contains(obj, []byte(`"resourceType"`)) ||
		bytes.IndexByte(obj, '\\') >= 0
}

func (w *attWalk) skip(i int) (int, error) {
	end := skipValue(w.body, i)
	if end <= i || end > len(w.body) {
		return 0, errMalformed
	}
	return end, nil
}

// object walks the object at body[i] == '{'.
func (w *attWalk) object(i int, n *attNode, att bool, depth int) (int, error) {
	b := w.body
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, errMalformed
		}
		ks := i
		ke := skipString(b, i)
		if ke > len(b) || ke-ks < 2 || b[ke-1] != '"' {
			return 0, errMalformed
		}
		key := b[ks+1 : ke-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var s string
			if err := json.Unmarshal(b[ks:ke], &s); err != nil {
				return 0, fmt.Errorf("member name at byte %d: %w", ks, err)
			}
			key = []byte(s)
		}
		i = skipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return 0, errMalformed
		}
		v := skipSpace(b, i+1)
		var end int
		var err error
		switch {
		case att && string(key) == "url" && v < len(b) && b[v] == '"':
			end, err = w.url(v)
		case string(key) == "contained" || string(key) == "resource":
			end, err = w.resources(v, depth+1)
		default:
			c := n.child(key)
			end, err = w.value(v, c, (c != nil && c.att) || isAttachmentChoice(key), depth+1)
		}
		if err != nil {
			return 0, err
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return 0, errMalformed
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return i + 1, nil
		default:
			return 0, errMalformed
		}
	}
}

// resources walks a contained[] array or a nested resource: each object
// by the attachment paths of its own resourceType.
func (w *attWalk) resources(i int, depth int) (int, error) {
	if i >= len(w.body) || depth >= maxAttachmentDepth {
		return w.skip(i)
	}
	switch w.body[i] {
	case '{':
		end, err := w.skip(i)
		if err != nil {
			return 0, err
		}
		var typ string
		_ = EachMember(w.body[i:end], func(key, value []byte) {
			if string(key) == "resourceType" {
				_ = json.Unmarshal(value, &typ)
			}
		})
		return w.object(i, attachmentRoots[typ], false, depth)
	case '[':
		return w.array(i, func(i int) (int, error) { return w.resources(i, depth+1) })
	default:
		return w.skip(i)
	}
}

// url offers the string at body[i] (an Attachment.url) to fn.
func (w *attWalk) url(i int) (int, error) {
	end := skipString(w.body, i)
	if end > len(w.body) || w.body[end-1] != '"' || end-i < 2 {
		return 0, errMalformed
	}
	raw := w.body[i:end]
	var s string
	if bytes.IndexByte(raw, '\\') >= 0 {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("attachment url at byte %d: %w", i, err)
		}
	} else {
		s = string(raw[1 : len(raw)-1])
	}
	to, ok := w.fn(s)
	if !ok || to == s {
		return end, nil
	}
	quoted, _ := json.Marshal(to) // a string always marshals
	if w.out == nil {
		w.out = make([]byte, 0, len(w.body)+64)
	}
	w.out = append(append(w.out, w.body[w.copied:i]...), quoted...)
	w.copied = end
	return end, nil
}
