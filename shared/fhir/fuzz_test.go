package fhir

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/sampledata"
)

// The fuzz targets of the code that reads and rewrites the resources
// clients send: what Inspect accepts must come out of every rewrite as
// valid JSON holding the same content, apart from what the rewrite changes.
// Seeds are real resources (the Synthea set, or the generator's output
// without it) and the cases in testdata/fuzz. make fuzz runs each target
// for FUZZTIME.

// addResourceSeeds adds real resources, and the edge cases every target
// shares, to f's corpus through add.
func addResourceSeeds(f *testing.F, add func(body []byte)) {
	f.Helper()
	for _, line := range sampledata.Seeds(f, 2) {
		add(line)
	}
	for _, s := range []string{
		`{"resourceType":"Patient","id":"p1"}`,
		`{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","source":"x"}}`,
		`{"resourceType":"Patient","meta":null,"id":"p1"}`,
		`{"id":"p1","resourceType":"Observation","subject":{"reference":"Patient/p1"}}`,
		`{"resourceType":"Patient","id":"p1","m\u0065ta":{"versionId":"1"}}`,
		`{"resourceType":"Patient","id":"p1","id":"p2"}`,
		` {"resourceType" : "Patient" , "id" : "p1" } `,
	} {
		add([]byte(s))
	}
}

// decode is the generic JSON value of b; ok false when b is not one.
func decode(b []byte) (map[string]any, bool) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v map[string]any
	if err := d.Decode(&v); err != nil || d.More() {
		return nil, false
	}
	return v, true
}

// duplicateMembers reports whether the resource b, or its meta, has a
// member name twice, after unescaping. Decoders keep the last (Go) or the
// first of them, and the ingester rewrites meta: a resource so written
// would read differently to different clients. (Deeper down, the client's
// content is kept byte for byte, as sent.)
func duplicateMembers(b []byte) bool {
	d := json.NewDecoder(bytes.NewReader(b))
	// walk reads one value; check says whether its members must be unique,
	// top says whether it is the resource itself.
	var walk func(check, top bool) bool
	walk = func(check, top bool) bool {
		tok, err := d.Token()
		if err != nil {
			return false
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for d.More() {
				k, _ := d.Token()
				name, _ := k.(string)
				if check && seen[name] {
					return true
				}
				seen[name] = true
				if walk(top && name == "meta", false) {
					return true
				}
			}
			_, _ = d.Token()
		case json.Delim('['):
			for d.More() {
				if walk(false, false) {
					return true
				}
			}
			_, _ = d.Token()
		}
		return false
	}
	return walk(true, true)
}

func FuzzInspectSetMeta(f *testing.F) {
	addResourceSeeds(f, func(b []byte) { f.Add(b, true) })
	f.Fuzz(func(t *testing.T, body []byte, requireID bool) {
		h, err := Inspect(body, requireID)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("a refusal without a reason")
			}
			return
		}
		in, ok := decode(body)
		if !ok {
			t.Fatalf("Inspect accepted what does not decode as one JSON object: %q", body)
		}
		if duplicateMembers(body) {
			t.Fatalf("Inspect accepted a member named twice: %q", body)
		}
		if in["resourceType"] != h.ResourceType || h.ID != "" && in["id"] != h.ID {
			t.Fatalf("Inspect read %+v, the body says resourceType %v, id %v", h, in["resourceType"], in["id"])
		}
		const version, updated = "42", "2026-12-05T10:11:12.123456Z"
		out, err := SetMeta(nil, body, version, updated)
		if err != nil {
			t.Fatalf("SetMeta failed on an accepted resource: %v\n%q", err, body)
		}
		got, ok := decode(out)
		if !ok || duplicateMembers(out) {
			t.Fatalf("SetMeta made invalid JSON or a member named twice: %q -> %q", body, out)
		}
		meta, _ := got["meta"].(map[string]any)
		if meta["versionId"] != version || meta["lastUpdated"] != updated {
			t.Fatalf("SetMeta did not stamp meta: %q", out)
		}
		// Apart from the stamp, the content is the input's.
		delete(meta, "versionId")
		delete(meta, "lastUpdated")
		inMeta, _ := in["meta"].(map[string]any)
		if inMeta == nil {
			inMeta = map[string]any{}
		}
		delete(inMeta, "versionId")
		delete(inMeta, "lastUpdated")
		in["meta"], got["meta"] = inMeta, meta
		if !reflect.DeepEqual(in, got) {
			t.Fatalf("SetMeta changed more than meta:\n in: %q\nout: %q", body, out)
		}
		if h2, err := Inspect(out, requireID); err != nil || h2 != h {
			t.Fatalf("the stamped resource inspects as %+v, %v; the input as %+v", h2, err, h)
		}
	})
}

func FuzzSetID(f *testing.F) {
	addResourceSeeds(f, func(b []byte) { f.Add(b, "new-id") })
	f.Fuzz(func(t *testing.T, body []byte, id string) {
		if _, err := Inspect(body, false); err != nil || !ValidID(id) {
			return
		}
		out, err := SetID(body, id)
		if err != nil {
			t.Fatalf("SetID failed on an accepted resource: %v", err)
		}
		in, _ := decode(body)
		got, ok := decode(out)
		if !ok || duplicateMembers(out) {
			t.Fatalf("SetID made invalid JSON or a member named twice: %q -> %q", body, out)
		}
		in["id"] = id
		if !reflect.DeepEqual(in, got) {
			t.Fatalf("SetID changed more than the id:\n in: %q\nout: %q", body, out)
		}
	})
}

func FuzzElementsApply(f *testing.F) {
	addResourceSeeds(f, func(b []byte) { f.Add("id,name", b) })
	f.Add("Patient.birthDate,Observation.code", []byte(`{"resourceType":"Observation","id":"o","status":"final","code":{}}`))
	f.Fuzz(func(t *testing.T, elements string, body []byte) {
		e, err := ParseElements(strings.Split(elements, "&"))
		if err != nil {
			return
		}
		h, err := Inspect(body, false)
		if err != nil {
			return
		}
		out, subsetted, err := e.Apply(nil, h.ResourceType, body)
		if err != nil {
			t.Fatalf("Apply failed on an accepted resource: %v", err)
		}
		in, _ := decode(body)
		got, ok := decode(out)
		if !ok {
			t.Fatalf("Apply made invalid JSON: %q -> %q", body, out)
		}
		for k, v := range got {
			if k == "meta" {
				continue
			}
			if !reflect.DeepEqual(in[k], v) {
				t.Fatalf("Apply changed member %s: %q -> %q", k, body, out)
			}
		}
		if !subsetted && !reflect.DeepEqual(in, got) {
			t.Fatalf("Apply changed the resource without saying it subsetted it: %q -> %q", body, out)
		}
		if subsetted && !strings.Contains(string(out), "SUBSETTED") {
			t.Fatalf("a subsetted resource without the SUBSETTED tag: %q", out)
		}
		if h2, err := Inspect(out, false); err != nil || h2 != h {
			t.Fatalf("the trimmed resource inspects as %+v, %v; the input as %+v", h2, err, h)
		}
	})
}

func FuzzRewriteReferences(f *testing.F) {
	addResourceSeeds(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, body []byte) {
		if !json.Valid(body) {
			return
		}
		out, err := RewriteReferences(body, func(ref string) (string, bool) { return "x/" + ref, true })
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("RewriteReferences made invalid JSON: %q -> %q", body, out)
		}
	})
}
