package writer

import (
	"strings"
	"testing"
)

func TestWriterAttachmentURLTargets(t *testing.T) {
	a := newAttachments("https://fhir.example/r4", "https://fhir.example/r4/files/j1/attachments/")
	const want = "https://fhir.example/r4/files/j1/attachments/Binary/b-1.x"
	cases := []struct {
		url string
		ok  bool
	}{
		{"Binary/b-1.x", true},
		{"Binary/b-1.x/_history/3", true},
		{"https://fhir.example/r4/Binary/b-1.x", true},
		{"https://fhir.example/r4/Binary/b-1.x/_history/12", true},
		{"https://other.example/r4/Binary/b-1.x", false},                     // another server
		{"https://fhir.example/r4x/Binary/b-1.x", false},                     // not the base, a prefix of it
		{"http://fhir.example/r4/Binary/b-1.x", false},                       // another scheme is another base
		{"https://fhir.example/r4/files/j1/attachments/Binary/b-1.x", true},  // already one (a converted Binary's): kept, and named
		{"https://fhir.example/r4/files/j2/attachments/Binary/b-1.x", false}, // another export's
		{"Binary/", false},
		{"Binary/b_1", false},
		{"Binary/b1/_history/", false},
		{"Binary/b1/extra", false},
		{"Binary/" + strings.Repeat("x", 65), false},
		{"binary/b1", false},
		{"DocumentReference/d1", false},
		{"urn:uuid:0b9b2e3e-1c9c-4a52-9a35-6c3e4f1b9d2a", false},
		{"#contained", false},
		{"", false},
	}
	for _, c := range cases {
		got, ok := a.target(c.url)
		if ok != c.ok || ok && got != want {
			t.Errorf("%q: %q, %v; want ok %v", c.url, got, ok, c.ok)
		}
	}
}

func TestWriterAttachmentRewrite(t *testing.T) {
	a := newAttachments("https://fhir.example/r4/", "https://fhir.example/r4/files/j1/attachments/")
	const abs = "https://fhir.example/r4/files/j1/attachments/Binary/"
	in := `{"resourceType":"DocumentReference","id":"d","content":[` +
		`{"attachment":{"contentType":"application/pdf","url":"Binary/b1"}},` +
		`{"attachment":{"url":"Binary/b2/_history/4"}},` +
		`{"attachment":{"url":"https://fhir.example/r4/Binary/b3"}},` +
		`{"attachment":{"url":"https://elsewhere.example/Binary/b4"}}]}`
	want := `{"resourceType":"DocumentReference","id":"d","content":[` +
		`{"attachment":{"contentType":"application/pdf","url":"` + abs + `b1"}},` +
		`{"attachment":{"url":"` + abs + `b2"}},` +
		`{"attachment":{"url":"` + abs + `b3"}},` +
		`{"attachment":{"url":"https://elsewhere.example/Binary/b4"}}]}`
	got, err := a.rewrite("DocumentReference", []byte(in))
	if err != nil || string(got) != want {
		t.Errorf("got %s, %v\nwant %s", got, err, want)
	}
	// Bodies that name no Binary pass as they are, not even parsed: a
	// malformed one is no error.
	for _, body := range []string{
		`{"resourceType":"Observation","status":"final","valueAttachment":{"url":"https://x.example/a.pdf"}}`,
		`not json at all`,
	} {
		if got, err := a.rewrite("Observation", []byte(body)); err != nil || string(got) != body {
			t.Errorf("%s: %s, %v", body, got, err)
		}
	}
	// Without an attachment base nothing is rewritten.
	if got, _ := (&attachments{}).rewrite("DocumentReference", []byte(in)); string(got) != in {
		t.Errorf("rewritten without a base: %s", got)
	}
}

func BenchmarkWriterAttachmentRewriteNoBinary(b *testing.B) {
	a := newAttachments("https://fhir.example/r4", "https://fhir.example/r4/files/j1/attachments/")
	body := []byte(`{"resourceType":"Observation","id":"o","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8302-2"}]},` +
		`"subject":{"reference":"Patient/p"},"valueQuantity":{"value":180,"unit":"cm"},"extension":[{"url":"http://x","valueString":"y"}]}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.rewrite("Observation", body); err != nil {
			b.Fatal(err)
		}
	}
}
