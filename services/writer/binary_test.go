package writer

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestWriterBinaryOfAPatientBecomesDocumentReference(t *testing.T) {
	cases := []struct {
		name, body string
		ok         bool
		want       string
	}{
		{"patient binary", `{"resourceType":"Binary","id":"b1","meta":{"versionId":"7"},"contentType":"application/pdf","securityContext":{"reference":"Patient/p1"},"data":"JVBERi0="}`, true,
			`{"resourceType":"DocumentReference","id":"bin-b1","meta":{"versionId":"7"},"status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"application/pdf","data":"JVBERi0="}}]}`},
		{"binary of no one", `{"resourceType":"Binary","id":"b2","contentType":"text/plain","data":"aGk="}`, false, ""},
		{"binary of an organization", `{"resourceType":"Binary","id":"b3","contentType":"text/plain","securityContext":{"reference":"Organization/o"}}`, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc, ok, err := binaryAsDocumentReference([]byte(c.body), &attachments{})
			if err != nil || ok != c.ok || string(doc) != c.want {
				t.Errorf("got %s, %v, %v; want %s, %v", doc, ok, err, c.want, c.ok)
			}
			if ok && !json.Valid(doc) {
				t.Error("invalid JSON")
			}
		})
	}
	long := strings.Repeat("x", 64)
	if id := binaryDocID(long); len(id) > 64 || !strings.HasPrefix(id, "bin-") {
		t.Errorf("id for a 64-character Binary id: %q", id)
	}
	if _, _, err := binaryAsDocumentReference([]byte(`not json`), &attachments{}); err == nil {
		t.Error("malformed Binary accepted")
	}
}

func TestWriterBinaryDocumentReferencePointsAtTheAttachmentURL(t *testing.T) {
	a := newAttachments("https://fhir.example/r4", "https://fhir.example/r4/files/j1/attachments/")
	small := "JVBERi0="
	large := strings.Repeat("QUJD", maxInlineData/4+1) // one quantum over the bound
	cases := []struct {
		name, body, want string
	}{
		{"small content stays inline and gets a url",
			`{"resourceType":"Binary","id":"b1","contentType":"application/pdf","securityContext":{"reference":"Patient/p1"},"data":"` + small + `"}`,
			`{"resourceType":"DocumentReference","id":"bin-b1","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"application/pdf","data":"` + small + `","url":"https://fhir.example/r4/files/j1/attachments/Binary/b1"}}]}`},
		{"content at the bound stays inline",
			`{"resourceType":"Binary","id":"b2","contentType":"text/plain","securityContext":{"reference":"Patient/p1"},"data":"` + large[:maxInlineData] + `"}`,
			`{"resourceType":"DocumentReference","id":"bin-b2","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"text/plain","data":"` + large[:maxInlineData] + `","url":"https://fhir.example/r4/files/j1/attachments/Binary/b2"}}]}`},
		{"larger content only behind the url",
			`{"resourceType":"Binary","id":"b3","contentType":"image/png","securityContext":{"reference":"Patient/p1"},"data":"` + large + `"}`,
			`{"resourceType":"DocumentReference","id":"bin-b3","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"image/png","url":"https://fhir.example/r4/files/j1/attachments/Binary/b3"}}]}`},
		{"no data: no url that would not dereference",
			`{"resourceType":"Binary","id":"b4","contentType":"image/png","securityContext":{"reference":"Patient/p1"}}`,
			`{"resourceType":"DocumentReference","id":"bin-b4","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"image/png"}}]}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc, ok, err := binaryAsDocumentReference([]byte(c.body), a)
			if err != nil || !ok || string(doc) != c.want {
				t.Errorf("got %.300s, %v, %v\nwant %.300s", doc, ok, err, c.want)
			}
		})
	}
	// Without an attachment base (a job recorded before base URLs were),
	// large content stays inline as before.
	doc, _, _ := binaryAsDocumentReference([]byte(`{"resourceType":"Binary","id":"b3","securityContext":{"reference":"Patient/p1"},"data":"`+large+`"}`), &attachments{})
	if !strings.Contains(string(doc), large) || strings.Contains(string(doc), `"url"`) {
		t.Errorf("without an attachment base: %.200s", doc)
	}
}
