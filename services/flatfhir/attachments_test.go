package flatfhir_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// attachmentContent is what each Binary of the attachment tests holds.
var attachmentContent = map[string]struct {
	patient, contentType string
	data                 []byte
}{
	"rep1":  {"ap1", "application/pdf", []byte("%PDF-1.4 report of ap1")},
	"rep2":  {"ap2", "text/plain", []byte("note of ap2")},
	"photo": {"ap1", "image/png", []byte{0x89, 'P', 'N', 'G', 0, 1, 2}},
	"scan":  {"ap1", "application/dicom", bytes.Repeat([]byte{0, 7, 42, 255}, 20_000)}, // over the inline bound
}

// attachmentNDJSON is two patients, their Binaries, and resources whose
// attachments name the Binaries relatively, with a version, or on another
// server.
func attachmentNDJSON(base string) []byte {
	var b bytes.Buffer
	for _, p := range []string{"ap1", "ap2"} {
		photo := ""
		if p == "ap1" {
			photo = `,"photo":[{"contentType":"image/png","url":"Binary/photo"}]`
		}
		fmt.Fprintf(&b, `{"resourceType":"Patient","id":%q%s}`+"\n", p, photo)
	}
	for id, c := range attachmentContent {
		fmt.Fprintf(&b, `{"resourceType":"Binary","id":%q,"contentType":%q,"securityContext":{"reference":"Patient/%s"},"data":%q}`+"\n",
			id, c.contentType, c.patient, base64.StdEncoding.EncodeToString(c.data))
	}
	fmt.Fprintf(&b, `{"resourceType":"DocumentReference","id":"doc1","status":"current","subject":{"reference":"Patient/ap1"},"content":[{"attachment":{"contentType":"application/pdf","url":"Binary/rep1"}},{"attachment":{"url":"https://elsewhere.example/fhir/Binary/rep1"}}]}`+"\n")
	fmt.Fprintf(&b, `{"resourceType":"DocumentReference","id":"doc2","status":"current","subject":{"reference":"Patient/ap2"},"content":[{"attachment":{"contentType":"text/plain","url":"Binary/rep2/_history/1"}}]}`+"\n")
	fmt.Fprintf(&b, `{"resourceType":"DiagnosticReport","id":"dr1","status":"final","code":{"text":"scan"},"subject":{"reference":"Patient/ap1"},"presentedForm":[{"contentType":"application/dicom","url":%q}]}`+"\n", base+"/Binary/scan")
	return b.Bytes()
}

// attachmentURLs returns the url of every Attachment in an exported line:
// DocumentReference.content.attachment, DiagnosticReport.presentedForm,
// Patient.photo and any …Attachment choice.
func attachmentURLs(t *testing.T, line []byte) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(line, &v); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(v any, att bool)
	walk = func(v any, att bool) {
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				walk(e, att)
			}
		case map[string]any:
			if u, ok := x["url"].(string); ok && att {
				out = append(out, u)
			}
			for k, e := range x {
				walk(e, k == "attachment" || k == "presentedForm" || k == "photo" || strings.HasSuffix(k, "Attachment"))
			}
		}
	}
	walk(v, false)
	return out
}

// checkAttachments downloads every attachment URL of the export's output
// with the headers and checks it returns the Binary's bytes and type; it
// returns the URLs by Binary id and how many attachments there were.
func checkAttachments(t *testing.T, m manifest, base string, headers ...string) map[string]string {
	t.Helper()
	byBinary := map[string]string{}
	for _, o := range m.Output {
		resp, body := do(t, "GET", o.URL, nil, headers...)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("download %s: %d %s", o.URL, resp.StatusCode, body)
		}
		for _, line := range splitLines(t, bytes.NewReader(body)) {
			for _, u := range attachmentURLs(t, line) {
				if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
					t.Errorf("%s/%s: attachment url %q is not absolute", o.Type, idOf(t, line), u)
					continue
				}
				if !strings.HasPrefix(u, base+"/") {
					continue // another server's, left as it was
				}
				id := u[strings.LastIndex(u, "/")+1:]
				want, ok := attachmentContent[id]
				if !ok {
					t.Errorf("attachment url %q names no Binary of the test", u)
					continue
				}
				resp, got := do(t, "GET", u, nil, headers...)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want.data) || resp.Header.Get("Content-Type") != want.contentType {
					t.Errorf("GET %s: %d %q, %d bytes; want %q, %d bytes", u, resp.StatusCode, resp.Header.Get("Content-Type"), len(got), want.contentType, len(want.data))
				}
				byBinary[id] = u
			}
		}
	}
	return byBinary
}

func TestE2EAttachmentURLsAreAbsoluteAndServed(t *testing.T) {
	base := startEngine(t)
	if resp, body := do(t, "POST", base+"/$ingest", bytes.NewReader(attachmentNDJSON(base)), "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusOK {
		t.Fatalf("ingest: %d %s", resp.StatusCode, body)
	}

	m, _, _ := await(t, kickoff(t, base+"/$export"))
	urls := checkAttachments(t, m, base)
	// Every Binary is named: rep1 by doc1 and its DocumentReference, rep2
	// through a versioned reference, photo by the Patient, scan absolutely
	// on this server's base and by its DocumentReference.
	for id := range attachmentContent {
		if urls[id] == "" {
			t.Errorf("no attachment url names Binary/%s", id)
		}
	}
	// Another server's url is left as it was.
	found := false
	for _, o := range m.Output {
		if o.Type != "DocumentReference" {
			continue
		}
		_, body := do(t, "GET", o.URL, nil)
		found = found || bytes.Contains(body, []byte(`"url":"https://elsewhere.example/fhir/Binary/rep1"`))
		for _, line := range splitLines(t, bytes.NewReader(body)) {
			if idOf(t, line) == "bin-scan" && bytes.Contains(line, []byte(`"data"`)) {
				t.Errorf("the large Binary is inlined: %.200s", line)
			}
		}
	}
	if !found {
		t.Error("another server's attachment url was changed")
	}

	// At Patient level, the attachments of the export's patients are
	// served and another patient's Binary is not.
	resp, body := post(t, base+"/Patient/$export", map[string]any{"name": "patient", "valueReference": map[string]string{"reference": "Patient/ap1"}})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("Patient kick-off: %d %s", resp.StatusCode, body)
	}
	pm, _, _ := await(t, resp.Header.Get("Content-Location"))
	purls := checkAttachments(t, pm, base)
	if purls["rep1"] == "" || purls["photo"] == "" || purls["rep2"] != "" {
		t.Errorf("Patient-level attachments %v, want rep1 and photo, not rep2", purls)
	}
	other := strings.Replace(purls["rep1"], "/Binary/rep1", "/Binary/rep2", 1)
	if resp, body := do(t, "GET", other, nil); resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "OperationOutcome") {
		t.Errorf("another patient's Binary at Patient level: %d %s", resp.StatusCode, body)
	}
	// The system export's URL for that Binary still works: it is its own.
	if resp, _ := do(t, "GET", urls["rep2"], nil); resp.StatusCode != http.StatusOK {
		t.Errorf("system-level attachment: %d", resp.StatusCode)
	}
	// Cancelled (released) exports' attachments are gone with their files.
	if resp, body := do(t, "DELETE", base+"/jobs/"+jobOf(urls["rep2"]), nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
	}
	if resp, _ := do(t, "GET", urls["rep2"], nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("attachment of a released export: %d", resp.StatusCode)
	}
}

// jobOf is the job id in an attachment URL .../files/<job>/attachments/...
func jobOf(u string) string {
	_, rest, _ := strings.Cut(u, "/files/")
	job, _, _ := strings.Cut(rest, "/")
	return job
}

func TestE2EAttachmentURLsUnderAuthorization(t *testing.T) {
	base, _ := startAuthorizedEngine(t)
	if resp, body := do(t, "POST", base+"/$ingest", bytes.NewReader(attachmentNDJSON(base)), "Content-Type", "application/fhir+ndjson",
		"Authorization", "Bearer "+e2eAdminToken); resp.StatusCode != http.StatusOK {
		t.Fatalf("ingest: %d %s", resp.StatusCode, body)
	}
	dir := t.TempDir()
	for _, id := range []string{"owner", "stranger"} {
		cli(t, "clients", "keygen", "--out", filepath.Join(dir, id))
		set, err := os.ReadFile(filepath.Join(dir, id+".jwks.json"))
		if err != nil {
			t.Fatal(err)
		}
		reg, _ := json.Marshal(map[string]any{"jwks": json.RawMessage(set), "scope": "system/*.rs"})
		if resp, body := do(t, "PUT", base+"/admin/clients/"+id, bytes.NewReader(reg), "Authorization", "Bearer "+e2eAdminToken, "Content-Type", "application/json"); resp.StatusCode != http.StatusOK {
			t.Fatalf("register %s: %d %s", id, resp.StatusCode, body)
		}
	}
	token := func(client string) string {
		return strings.TrimSpace(cli(t, "token", "--client", client, "--key", filepath.Join(dir, client+".key.pem"), "--scope", "system/*.rs", "--url", base, "--raw"))
	}
	tok := token("owner")
	resp, body := do(t, "GET", base+"/$export?_type=DocumentReference,Patient", nil, "Accept", "application/fhir+json", "Prefer", "respond-async", "Authorization", "Bearer "+tok)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: %d %s", resp.StatusCode, body)
	}
	m := awaitAuthorized(t, resp.Header.Get("Content-Location"), tok)
	// The owner's token alone fetches every attachment.
	urls := checkAttachments(t, m, base, "Authorization", "Bearer "+token("owner"))
	// Every Binary here belongs to a patient, so each goes out as a
	// DocumentReference naming it (scan too, though no DiagnosticReport is
	// exported).
	if len(urls) != 4 || urls["rep1"] == "" || urls["rep2"] == "" || urls["photo"] == "" || urls["scan"] == "" {
		t.Fatalf("attachment urls %v, want rep1, rep2, photo and scan", urls)
	}
	u := urls["rep1"]
	if resp, _ := do(t, "GET", u, nil); resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("attachment without a token: %d", resp.StatusCode)
	}
	if resp, body := do(t, "GET", u, nil, "Authorization", "Bearer "+token("stranger")); resp.StatusCode != http.StatusNotFound {
		t.Errorf("attachment by another client: %d %s", resp.StatusCode, body)
	}
}

// A system-level export serves only the Binaries its output names: with
// _type=Patient the Patient's photo, not a report a DocumentReference
// (not exported) points at; with _type=DocumentReference that report, and
// not a Binary of no patient that nothing exported names.
func TestE2ESystemAttachmentsOnlyWhatTheOutputNames(t *testing.T) {
	base := startEngine(t)
	data := append(attachmentNDJSON(base), []byte(`{"resourceType":"Binary","id":"free","contentType":"text/plain","data":"aGk="}`+"\n")...)
	if resp, body := do(t, "POST", base+"/$ingest", bytes.NewReader(data), "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusOK {
		t.Fatalf("ingest: %d %s", resp.StatusCode, body)
	}
	byHand := func(status, binary string) string {
		job := status[strings.LastIndex(status, "/")+1:]
		return base + "/files/" + job + "/attachments/Binary/" + binary
	}
	noIndexListed := func(m manifest) {
		t.Helper()
		for _, o := range m.Output {
			if !strings.HasSuffix(o.URL, ".ndjson") {
				t.Errorf("manifest lists %s", o.URL)
			}
		}
	}

	patients := kickoff(t, base+"/$export?_type=Patient")
	pm, _, _ := await(t, patients)
	noIndexListed(pm)
	if urls := checkAttachments(t, pm, base); len(urls) != 1 || urls["photo"] == "" {
		t.Errorf("Patient export attachment urls %v, want photo only", urls)
	}
	for _, id := range []string{"rep1", "rep2", "scan"} {
		if resp, body := do(t, "GET", byHand(patients, id), nil); resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "OperationOutcome") {
			t.Errorf("Binary/%s through a Patient-only export: %d %s", id, resp.StatusCode, body)
		}
	}

	docs := kickoff(t, base+"/$export?_type=DocumentReference")
	dm, _, _ := await(t, docs)
	noIndexListed(dm)
	resp, body := do(t, "GET", byHand(docs, "rep1"), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, attachmentContent["rep1"].data) {
		t.Errorf("Binary/rep1 through a DocumentReference export: %d %q", resp.StatusCode, body)
	}
	// A Binary of no patient is not converted, and nothing exported names it.
	if resp, body := do(t, "GET", byHand(docs, "free"), nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("Binary/free through a DocumentReference export: %d %s", resp.StatusCode, body)
	}
}
