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
			doc, ok, err := binaryAsDocumentReference([]byte(c.body))
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
	if _, _, err := binaryAsDocumentReference([]byte(`not json`)); err == nil {
		t.Error("malformed Binary accepted")
	}
}
