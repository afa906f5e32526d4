package fhir_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// toAbsolute rewrites every Binary/... url to an absolute one and records
// what it was asked.
func toAbsolute(asked *[]string) func(string) (string, bool) {
	return func(u string) (string, bool) {
		*asked = append(*asked, u)
		if rest, ok := strings.CutPrefix(u, "Binary/"); ok {
			return "https://fhir.example/files/j/attachments/Binary/" + rest, true
		}
		return "", false
	}
}

func TestFHIRRewriteAttachmentURLs(t *testing.T) {
	const abs = "https://fhir.example/files/j/attachments/Binary/"
	cases := []struct {
		name, typ, in, want string
		asked               []string
	}{
		{"document reference", "DocumentReference",
			`{"resourceType":"DocumentReference","id":"d","url":"Binary/top","content":[{"attachment":{"contentType":"application/pdf","url":"Binary/b1","extension":[{"url":"Binary/ext"}]},"format":{"code":"x"}},{"attachment":{"url":"https://other.example/doc.pdf"}}]}`,
			`{"resourceType":"DocumentReference","id":"d","url":"Binary/top","content":[{"attachment":{"contentType":"application/pdf","url":"` + abs + `b1","extension":[{"url":"Binary/ext"}]},"format":{"code":"x"}},{"attachment":{"url":"https://other.example/doc.pdf"}}]}`,
			[]string{"Binary/b1", "https://other.example/doc.pdf"}},
		{"content of a DocumentReference is not an Attachment", "DocumentReference",
			`{"resourceType":"DocumentReference","content":[{"url":"Binary/x"}]}`,
			`{"resourceType":"DocumentReference","content":[{"url":"Binary/x"}]}`, nil},
		{"diagnostic report presentedForm, with spaces", "DiagnosticReport",
			"{ \"resourceType\" : \"DiagnosticReport\" ,\n \"presentedForm\" : [ { \"url\" : \"Binary/r1\" } , {\"data\":\"aGk=\"} ] }",
			"{ \"resourceType\" : \"DiagnosticReport\" ,\n \"presentedForm\" : [ { \"url\" : \"" + abs + "r1\" } , {\"data\":\"aGk=\"} ] }",
			[]string{"Binary/r1"}},
		{"media content", "Media",
			`{"resourceType":"Media","content":{"url":"Binary/m1","title":"scan"}}`,
			`{"resourceType":"Media","content":{"url":"` + abs + `m1","title":"scan"}}`, []string{"Binary/m1"}},
		{"patient photo; extension urls untouched", "Patient",
			`{"resourceType":"Patient","extension":[{"url":"Binary/e","valueString":"x"}],"photo":[{"url":"Binary/ph"}]}`,
			`{"resourceType":"Patient","extension":[{"url":"Binary/e","valueString":"x"}],"photo":[{"url":"` + abs + `ph"}]}`, []string{"Binary/ph"}},
		{"observation valueAttachment and an extension's valueAttachment", "Observation",
			`{"resourceType":"Observation","valueAttachment":{"url":"Binary/o1"},"extension":[{"url":"http://x","extension":[{"url":"y","valueAttachment":{"url":"Binary/o2"}}]}]}`,
			`{"resourceType":"Observation","valueAttachment":{"url":"` + abs + `o1"},"extension":[{"url":"http://x","extension":[{"url":"y","valueAttachment":{"url":"` + abs + `o2"}}]}]}`,
			[]string{"Binary/o1", "Binary/o2"}},
		{"communication payload", "Communication",
			`{"resourceType":"Communication","payload":[{"contentString":"Binary/no"},{"contentAttachment":{"url":"Binary/c1"}}]}`,
			`{"resourceType":"Communication","payload":[{"contentString":"Binary/no"},{"contentAttachment":{"url":"` + abs + `c1"}}]}`, []string{"Binary/c1"}},
		{"questionnaire response answers at any depth", "QuestionnaireResponse",
			`{"resourceType":"QuestionnaireResponse","item":[{"linkId":"1","answer":[{"valueAttachment":{"url":"Binary/q1"}}],"item":[{"linkId":"1.1","answer":[{"valueAttachment":{"url":"Binary/q2"},"item":[{"answer":[{"valueAttachment":{"url":"Binary/q3"}}]}]}]}]}]}`,
			`{"resourceType":"QuestionnaireResponse","item":[{"linkId":"1","answer":[{"valueAttachment":{"url":"` + abs + `q1"}}],"item":[{"linkId":"1.1","answer":[{"valueAttachment":{"url":"` + abs + `q2"},"item":[{"answer":[{"valueAttachment":{"url":"` + abs + `q3"}}]}]}]}]}]}`,
			[]string{"Binary/q1", "Binary/q2", "Binary/q3"}},
		{"contained resources by their own type", "Composition",
			`{"resourceType":"Composition","contained":[{"id":"c","photo":[{"url":"Binary/np"}],"resourceType":"Patient"},{"resourceType":"Organization","photo":[{"url":"Binary/org"}]}],"photo":{"url":"Binary/comp"}}`,
			`{"resourceType":"Composition","contained":[{"id":"c","photo":[{"url":"` + abs + `np"}],"resourceType":"Patient"},{"resourceType":"Organization","photo":[{"url":"Binary/org"}]}],"photo":{"url":"Binary/comp"}}`,
			[]string{"Binary/np"}},
		{"bundle entry resources", "Bundle",
			`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"DocumentReference","content":[{"attachment":{"url":"Binary/be"}}]}}]}`,
			`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"DocumentReference","content":[{"attachment":{"url":"` + abs + `be"}}]}}]}`,
			[]string{"Binary/be"}},
		{"escaped member name and value", "Media",
			`{"resourceType":"Media","content":{"\u0075rl":"Binary\/m2"}}`,
			`{"resourceType":"Media","content":{"\u0075rl":"` + abs + `m2"}}`, []string{"Binary/m2"}},
		{"url that is not a string", "Media",
			`{"resourceType":"Media","content":{"url":7}}`, `{"resourceType":"Media","content":{"url":7}}`, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var asked []string
			got, err := fhir.RewriteAttachmentURLs(c.typ, []byte(c.in), toAbsolute(&asked))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("rewritten\n%s\nwant\n%s", got, c.want)
			}
			if !json.Valid(got) {
				t.Error("result is not valid JSON")
			}
			if !reflect.DeepEqual(asked, c.asked) {
				t.Errorf("asked about %q, want %q", asked, c.asked)
			}
		})
	}
}

func TestFHIRRewriteAttachmentURLsKeepsUntouchedBodies(t *testing.T) {
	var asked []string
	for _, body := range []string{
		`{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"extension":[{"url":"Binary/x"}]}`,
		`{"resourceType":"DocumentReference","content":[{"attachment":{"contentType":"text/plain","data":"aGk="}}]}`,
		`{"resourceType":"Patient","photo":[{"url":"https://elsewhere.example/Binary/1"}]}`,
		`{}`,
	} {
		in := []byte(body)
		got, err := fhir.RewriteAttachmentURLs("Patient", in, toAbsolute(&asked))
		if err != nil || len(got) != len(in) || &got[0] != &in[0] {
			t.Errorf("%s: copied, changed or failed (%v): %s", body, err, got)
		}
	}
}

func TestFHIRRewriteAttachmentURLsRefusesMalformedBodiesWithoutPanicking(t *testing.T) {
	valid := `{"resourceType":"DocumentReference","contained":[{"resourceType":"Patient","photo":[{"url":"Binary/p"}]}],"content":[{"attachment":{"url":"Binary/b1","title":"a\"b"}}],"x":[1,true,null,{"valueAttachment":{"url":"Binary/v"}}]}`
	fn := func(u string) (string, bool) { return "X" + u, true }
	for i := range len(valid) {
		// Every prefix is malformed; none may panic, and none may come back
		// as if it were whole.
		got, err := fhir.RewriteAttachmentURLs("DocumentReference", []byte(valid[:i]), fn)
		if err == nil && json.Valid(got) && i > 0 {
			t.Errorf("prefix %q accepted as %s", valid[:i], got)
		}
	}
	for _, bad := range []string{``, `[]`, `"x"`, `{"content":[{"attachment":{"url":"Binary/x"}]}`, `{"content" "x"}`, `{"content":[{"attachment":{"url":"\x"}}]}`} {
		if _, err := fhir.RewriteAttachmentURLs("DocumentReference", []byte(bad), fn); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	// Nesting far beyond any resource is walked no deeper than the bound.
	deep := `{"resourceType":"Observation","a":` + strings.Repeat(`{"valueAttachment":`, 10000) + `{"url":"Binary/deep"}` + strings.Repeat(`}`, 10000) + `}`
	if _, err := fhir.RewriteAttachmentURLs("Observation", []byte(deep), fn); err != nil {
		t.Errorf("deep body: %v", err)
	}
}

func BenchmarkFHIRRewriteAttachmentURLs(b *testing.B) {
	body := []byte(`{"resourceType":"DocumentReference","id":"d","status":"current","subject":{"reference":"Patient/p"},` +
		`"content":[{"attachment":{"contentType":"application/pdf","url":"Binary/b1","title":"note"}}],"extension":[{"url":"http://x","valueString":"y"}]}`)
	fn := func(u string) (string, bool) { return "https://fhir.example/files/j/attachments/" + u, true }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := fhir.RewriteAttachmentURLs("DocumentReference", body, fn); err != nil {
			b.Fatal(err)
		}
	}
}
