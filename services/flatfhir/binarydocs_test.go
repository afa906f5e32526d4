package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestE2EPatientBinariesGoOutAsDocumentReferences: a Binary whose
// securityContext names a patient goes out as that patient's
// DocumentReference bin-<id> (Bulk Data IG) at Patient level, and at system
// level when _type asks for DocumentReference without Binary; a Binary of
// no patient does not. Its deletion, in a _since export, names the
// DocumentReference the client received.
func TestE2EPatientBinariesGoOutAsDocumentReferences(t *testing.T) {
	base := startEngine(t)
	data := append(attachmentNDJSON(base), []byte(`{"resourceType":"Binary","id":"free","contentType":"text/plain","data":"aGk="}`+"\n")...)
	if resp, body := do(t, "POST", base+"/$ingest", bytes.NewReader(data), "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusOK {
		t.Fatalf("ingest: %d %s", resp.StatusCode, body)
	}
	docsOf := func(patient string) []string {
		var ids []string
		for id, c := range attachmentContent {
			if patient == "" || c.patient == patient {
				ids = append(ids, "DocumentReference/bin-"+id)
			}
		}
		return ids
	}

	// Patient level, patient ap1: ap1's Binaries, as DocumentReferences.
	resp, body := post(t, base+"/Patient/$export", map[string]any{"name": "patient", "valueReference": map[string]string{"reference": "Patient/ap1"}})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("Patient kick-off: %d %s", resp.StatusCode, body)
	}
	pm, _, _ := await(t, resp.Header.Get("Content-Location"))
	got := exported(t, pm)
	for _, key := range docsOf("ap1") {
		if got[key] != 1 {
			t.Errorf("Patient level: %s exported %d times, want once", key, got[key])
		}
	}
	for key := range got {
		if strings.HasPrefix(key, "Binary/") || key == "DocumentReference/bin-rep2" {
			t.Errorf("Patient level for ap1 exported %s", key)
		}
	}
	sincePatient := pm.TransactionTime

	// System level with _type=DocumentReference: every patient's Binary,
	// as a DocumentReference, and no Binary of no patient.
	sm, _, _ := await(t, kickoff(t, base+"/$export?_type=DocumentReference"))
	got = exported(t, sm)
	for _, key := range append(docsOf(""), "DocumentReference/doc1", "DocumentReference/doc2") {
		if got[key] != 1 {
			t.Errorf("_type=DocumentReference: %s exported %d times, want once", key, got[key])
		}
	}
	for _, o := range sm.Output {
		if o.Type != "DocumentReference" {
			t.Errorf("_type=DocumentReference listed a %s file", o.Type)
		}
	}
	if got["DocumentReference/bin-free"] != 0 {
		t.Error("a Binary of no patient went out as a DocumentReference")
	}

	// A deleted Binary of ap1 is a deleted DocumentReference in ap1's feed.
	if resp, body := do(t, "DELETE", base+"/Binary/photo", nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE Binary/photo: %d %s", resp.StatusCode, body)
	}
	resp, body = post(t, base+"/Patient/$export", map[string]any{"name": "_since", "valueInstant": sincePatient},
		map[string]any{"name": "patient", "valueReference": map[string]string{"reference": "Patient/ap1"}})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("Patient _since kick-off: %d %s", resp.StatusCode, body)
	}
	_, _, raw := await(t, resp.Header.Get("Content-Location"))
	var m struct {
		Output, Deleted []struct{ Type, URL string }
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var deleted []string
	for _, d := range m.Deleted {
		_, body := do(t, "GET", d.URL, nil)
		for _, l := range splitLines(t, bytes.NewReader(body)) {
			var b struct {
				Entry []struct{ Request struct{ URL string } }
			}
			_ = json.Unmarshal(l, &b)
			for _, e := range b.Entry {
				deleted = append(deleted, e.Request.URL)
			}
		}
	}
	if strings.Join(deleted, ",") != "DocumentReference/bin-photo" || len(m.Output) != 0 {
		t.Errorf("_since after deleting Binary/photo: deleted %v and %d output files, want [DocumentReference/bin-photo] and none", deleted, len(m.Output))
	}
}
