package flatfhir_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/sampledata"
)

// The fuzz targets of the engine's HTTP surface: each sends what a hostile
// or broken client could to a whole engine on real NATS and ClickHouse, and
// checks the answer is what a strict client can parse: a 2xx, or a 4xx with
// an OperationOutcome naming the problem, never a 5xx, never a hang (the
// client's timeout), and the engine still answers afterwards. What the
// engine accepts must be stored as sent, apart from meta. make fuzz runs
// each target for FUZZTIME; go test runs their seeds.

// fuzzClient bounds every request, so that a hang is a failure.
var fuzzClient = &http.Client{Timeout: 30 * time.Second}

// send sends one request; ok false when the client itself cannot send it
// (a URL or header no HTTP client would put on the wire).
func send(t *testing.T, method, u string, body []byte, headers ...string) (*http.Response, []byte, bool) {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return nil, nil, false
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] != "" {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	resp, err := fuzzClient.Do(req)
	if err != nil {
		return nil, nil, false
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, u, err)
	}
	return resp, b.Bytes(), true
}

// checkAnswer checks what every answer must be: no 5xx, and any body JSON
// of a FHIR media type (a kick-off's 202 may carry an OperationOutcome); a
// 4xx is an OperationOutcome that says what is wrong.
func checkAnswer(t *testing.T, what string, resp *http.Response, body []byte) {
	t.Helper()
	if resp.StatusCode >= 500 {
		t.Fatalf("%s: %d %s", what, resp.StatusCode, body)
	}
	if len(body) == 0 {
		if resp.StatusCode >= 400 {
			t.Fatalf("%s: %d without an OperationOutcome", what, resp.StatusCode)
		}
		return
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != "application/fhir+json" && mt != "application/json" || !json.Valid(body) {
		t.Fatalf("%s: %d answered %q: %.300s", what, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if resp.StatusCode >= 400 {
		var oo struct {
			ResourceType string
			Issue        []struct{ Severity, Code, Diagnostics string }
		}
		if err := json.Unmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" ||
			len(oo.Issue) == 0 || oo.Issue[0].Diagnostics == "" {
			t.Fatalf("%s: %d without an OperationOutcome naming the problem: %.300s", what, resp.StatusCode, body)
		}
	}
}

// stillAnswers checks the engine answers after a client's failed send.
func stillAnswers(t *testing.T, base string) {
	t.Helper()
	resp, body, ok := send(t, http.MethodGet, base+"/metadata", nil)
	if !ok || resp.StatusCode != http.StatusOK {
		t.Fatalf("the engine no longer answers /metadata: %v %s", resp, body)
	}
}

// exchange sends a fuzzed request to the engine at base and checks the
// answer (checkAnswer). ok is false when no HTTP client could send it; the
// engine must then still answer others.
func exchange(t *testing.T, base, method, u string, body []byte, headers ...string) (*http.Response, []byte, bool) {
	t.Helper()
	resp, answer, ok := send(t, method, u, body, headers...)
	if !ok {
		stillAnswers(t, base)
		return nil, nil, false
	}
	checkAnswer(t, method+" "+u, resp, answer)
	return resp, answer, true
}

// levels are the kick-off paths a fuzzed level picks from.
var levels = []string{"/$export", "/Patient/$export", "/Group/g1/$export", "/Group/%2e%2e/$export", "/Group/$export"}

func FuzzKickoff(f *testing.F) {
	base := startEngine(f)
	for _, q := range []string{
		"", "_type=Patient,Observation", "_since=2026-01-02T03:04:05.123Z", "_since=2026-01-02T03:04:05+02:00",
		"_outputFormat=application/fhir%2Bndjson", "_typeFilter=Observation%3Fstatus%3Dfinal%26category%3Dlaboratory",
		"_typeFilter=MedicationRequest%3Fauthoredon%3Dge2020-01-01", "_elements=id,Patient.birthDate",
		"includeAssociatedData=LatestProvenanceResources", "patient=Patient/p1", "_type=Nope",
		"_since=yesterday", "_since=a&_since=b", "_typeFilter=Observation%3Fcode%3Ahttp%3A%2F%2Floinc.org%7C1234-5",
	} {
		for i := range levels {
			f.Add(uint8(i), q, "respond-async")
		}
	}
	f.Add(uint8(0), "_type=Patient", "respond-async, handling=lenient")
	f.Fuzz(func(t *testing.T, level uint8, query, prefer string) {
		u := base + levels[int(level)%len(levels)] + "?" + query
		if resp, _, ok := exchange(t, base, http.MethodGet, u, nil, "Accept", "application/fhir+json", "Prefer", prefer); ok {
			cancelAccepted(t, resp)
		}
	})
}

func FuzzKickoffParameters(f *testing.F) {
	base := startEngine(f)
	for _, p := range []string{
		`{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"}]}`,
		`{"resourceType":"Parameters","parameter":[{"name":"_since","valueInstant":"2026-01-02T03:04:05Z"},{"name":"_outputFormat","valueString":"ndjson"}]}`,
		`{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/p1"}}]}`,
		`{"resourceType":"Parameters","parameter":[{"name":"_typeFilter","valueString":"Observation?status=final"}]}`,
		`{"resourceType":"Parameters"}`, `{"resourceType":"Patient"}`, `[]`, `{"resourceType":"Parameters","parameter":[{}]}`,
	} {
		f.Add(uint8(1), []byte(p))
	}
	f.Fuzz(func(t *testing.T, level uint8, params []byte) {
		u := base + levels[int(level)%len(levels)]
		resp, _, ok := exchange(t, base, http.MethodPost, u, params,
			"Accept", "application/fhir+json", "Prefer", "respond-async", "Content-Type", "application/fhir+json")
		if ok {
			cancelAccepted(t, resp)
		}
	})
}

// cancelAccepted cancels an export the fuzzer started, so that the
// engine's per-client limits do not fill up with them.
func cancelAccepted(t *testing.T, resp *http.Response) {
	t.Helper()
	if resp.StatusCode != http.StatusAccepted {
		return
	}
	loc := resp.Header.Get("Content-Location")
	if loc == "" {
		t.Fatal("a kick-off answered 202 without Content-Location")
	}
	r, b, ok := send(t, http.MethodDelete, loc, nil)
	if !ok || r.StatusCode != http.StatusAccepted && r.StatusCode != http.StatusNotFound {
		t.Fatalf("DELETE %s: %v %s", loc, r, b)
	}
}

func FuzzIngest(f *testing.F) {
	base := startEngine(f)
	seeds := sampledata.Seeds(f, 1)
	f.Add(bytes.Join(seeds, []byte("\n")), false)
	f.Add(bytes.Join(seeds[:3], []byte("\r\n")), true)
	f.Add([]byte(`{"resourceType":"Patient","id":"p1"}`+"\n\n"+`{"resourceType":"Patient","id":"p2"}`), false)
	f.Add([]byte(`{"resourceType":"Patient","id":"../p1"}`), false)
	f.Add([]byte(`{"resourceType":"Patient"}`), false)
	f.Add([]byte("\x1f\x8b\x08\x00garbage"), false)
	f.Fuzz(func(t *testing.T, body []byte, gz bool) {
		headers := []string{"Content-Type", "application/fhir+ndjson"}
		if gz {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			_, _ = zw.Write(body)
			_ = zw.Close()
			body = b.Bytes()
			headers = append(headers, "Content-Encoding", "gzip")
		}
		exchange(t, base, http.MethodPost, base+"/$ingest", body, headers...)
	})
}

func FuzzBundle(f *testing.F) {
	base := startEngine(f)
	for _, b := range []string{
		`{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"Patient","id":"b1"},"request":{"method":"PUT","url":"Patient/b1"}}]}`,
		`{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:0b5f6c9e-1111-4c1e-9f00-000000000001","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},` +
			`{"resource":{"resourceType":"Observation","status":"final","code":{},"subject":{"reference":"urn:uuid:0b5f6c9e-1111-4c1e-9f00-000000000001"}},"request":{"method":"POST","url":"Observation"}}]}`,
		`{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"DELETE","url":"Patient/b1"}},{"request":{"method":"GET","url":"Patient/b1"}}]}`,
		`{"resourceType":"Bundle","type":"collection"}`, `{"resourceType":"Bundle","type":"batch","entry":[{}]}`,
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, bundle []byte) {
		exchange(t, base, http.MethodPost, base+"/", bundle, "Content-Type", "application/fhir+json", "Accept", "application/fhir+json")
	})
}

// FuzzWrite writes one resource with PUT and, when the engine takes it,
// reads it back: the content must be the input's, apart from meta.
func FuzzWrite(f *testing.F) {
	base := startEngine(f)
	for _, line := range sampledata.Seeds(f, 1) {
		f.Add(line)
	}
	f.Add([]byte(`{"resourceType":"Patient","id":"w1","name":[{"family":"\u00e9\ud83d\ude00"}],"meta":{"versionId":"9","tag":[{"code":"x"}]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		h, err := fhir.Inspect(body, true)
		path := "/Patient/fuzz"
		if err == nil {
			path = "/" + url.PathEscape(h.ResourceType) + "/" + url.PathEscape(h.ID)
		}
		resp, _, ok := exchange(t, base, http.MethodPut, base+path, body, "Content-Type", "application/fhir+json", "Accept", "application/fhir+json")
		if !ok || resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
			return
		}
		r, stored, ok := send(t, http.MethodGet, base+path, nil, "Accept", "application/fhir+json")
		if !ok || r.StatusCode != http.StatusOK {
			t.Fatalf("GET %s after a %d PUT: %v %s", path, resp.StatusCode, r, stored)
		}
		want, got := withoutMeta(t, body), withoutMeta(t, stored)
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("%s stored differs from what was PUT:\n put: %s\nread: %s", path, body, stored)
		}
	})
}

// withoutMeta is the JSON object b without meta.
func withoutMeta(t *testing.T, b []byte) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v map[string]any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	delete(v, "meta")
	return v
}
