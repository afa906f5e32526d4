package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bundleResponse is a batch-response or transaction-response Bundle.
type bundleResponse struct {
	ResourceType string
	Type         string
	Entry        []struct {
		FullURL  string
		Resource json.RawMessage
		Response struct {
			Status, Location, Etag, LastModified string
			Outcome                              *struct {
				ResourceType string
				Issue        []struct{ Severity, Code, Diagnostics string }
			}
		}
	}
}

// postBundle posts a Bundle of type typ with entries to [base].
func postBundle(t testing.TB, base, typ string, entries ...string) (*http.Response, []byte) {
	t.Helper()
	body := `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + strings.Join(entries, ",") + `]}`
	return do(t, "POST", base, strings.NewReader(body), "Content-Type", "application/fhir+json")
}

// bundleOK posts a Bundle that must succeed and returns its response.
func bundleOK(t testing.TB, base, typ string, entries ...string) bundleResponse {
	t.Helper()
	resp, out := postBundle(t, base, typ, entries...)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/fhir+json" {
		t.Fatalf("%s: %d %s %s", typ, resp.StatusCode, resp.Header.Get("Content-Type"), out)
	}
	var b bundleResponse
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("%s response is not JSON: %v\n%s", typ, err, out)
	}
	if b.ResourceType != "Bundle" || b.Type != typ+"-response" || len(b.Entry) != len(entries) {
		t.Fatalf("%s response is a %s %s of %d entries, want a %s-response of %d:\n%s", typ, b.ResourceType, b.Type, len(b.Entry), typ, len(entries), out)
	}
	return b
}

// refused posts a Bundle that must fail whole with status and an
// OperationOutcome saying each of says.
func refused(t testing.TB, base string, status int, body string, says ...string) {
	t.Helper()
	resp, out := do(t, "POST", base, strings.NewReader(body), "Content-Type", "application/fhir+json")
	if resp.StatusCode != status || !strings.Contains(string(out), `"resourceType":"OperationOutcome"`) {
		t.Errorf("%.120s: %d %s, want %d and an OperationOutcome", body, resp.StatusCode, out, status)
	}
	for _, s := range says {
		if !strings.Contains(string(out), s) {
			t.Errorf("%.120s: outcome %s does not say %q", body, out, s)
		}
	}
}

func putEntry(typ, id, resource string) string {
	return `{"request":{"method":"PUT","url":"` + typ + `/` + id + `"},"resource":` + resource + `}`
}

func postEntry(fullURL, typ, resource string) string {
	return `{"fullUrl":"` + fullURL + `","request":{"method":"POST","url":"` + typ + `"},"resource":` + resource + `}`
}

func methodEntry(method, url string) string {
	return `{"request":{"method":"` + method + `","url":"` + url + `"}}`
}

// read GETs typ/id and returns its status and body.
func read(t testing.TB, base, key string) (int, map[string]any) {
	t.Helper()
	resp, out := do(t, "GET", base+"/"+key, nil)
	var r map[string]any
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, r
}

// exportedBodies runs a system export of types and returns every exported
// resource by "Type/id".
func exportedBodies(t *testing.T, base, types string) map[string]map[string]any {
	t.Helper()
	m, _, _ := await(t, kickoff(t, base+"/$export?_type="+types))
	got := map[string]map[string]any{}
	for _, o := range m.Output {
		_, body := do(t, "GET", o.URL, nil)
		for _, l := range splitLines(t, bytes.NewReader(body)) {
			var r map[string]any
			if err := json.Unmarshal(l, &r); err != nil {
				t.Fatal(err)
			}
			got[o.Type+"/"+r["id"].(string)] = r
		}
	}
	return got
}

func TestE2EBatchAppliesEachEntryOnItsOwn(t *testing.T) {
	base := startEngine(t)
	obs := `{"resourceType":"Observation","status":"final","code":{"text":"b"},"subject":{"reference":"Patient/b1"}}`
	b := bundleOK(t, base, "batch",
		putEntry("Patient", "b1", `{"resourceType":"Patient","id":"b1","gender":"female"}`),
		postEntry("urn:uuid:0b", "Observation", obs),
		putEntry("Patient", "b2", `{"resourceType":"Patient","id":"someone-else"}`),
		methodEntry("DELETE", "Patient/never-was"),
		methodEntry("GET", "Patient/b1"),
		methodEntry("GET", "Patient/never-was"),
		methodEntry("PATCH", "Patient/b1"),
		`{"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=x"},"resource":{"resourceType":"Patient"}}`,
		putEntry("Patiant", "b3", `{"resourceType":"Patiant","id":"b3"}`),
		putEntry("Patient", "b4", `{"resourceType":"Patient","id":"b4"}`),
	)
	for i, want := range []struct {
		status string
		write  bool   // location, etag and lastModified
		says   string // the outcome's diagnostics, for a failure
	}{
		{"201 Created", true, ""},
		{"201 Created", true, ""},
		{"400 Bad Request", false, "the body is Patient/someone-else but the URL names Patient/b2"},
		{"204 No Content", false, ""},
		{"200 OK", false, ""},
		{"404 Not Found", false, "Patient/never-was does not exist"},
		{"400 Bad Request", false, `method "PATCH" is not supported`},
		{"400 Bad Request", false, "conditional requests"},
		{"400 Bad Request", false, `"Patiant" is not an R4 resource type`},
		{"201 Created", true, ""},
	} {
		r := b.Entry[i].Response
		if r.Status != want.status {
			t.Errorf("entry %d: status %q, want %q (outcome %+v)", i, r.Status, want.status, r.Outcome)
			continue
		}
		if want.says != "" && (r.Outcome == nil || r.Outcome.ResourceType != "OperationOutcome" || len(r.Outcome.Issue) != 1 ||
			!strings.Contains(r.Outcome.Issue[0].Diagnostics, want.says)) {
			t.Errorf("entry %d: outcome %+v, want one saying %q", i, r.Outcome, want.says)
		}
		if want.write {
			vid := strings.TrimSuffix(strings.TrimPrefix(r.Etag, `W/"`), `"`)
			if vid == "" || !strings.HasPrefix(r.Location, base+"/") || !strings.HasSuffix(r.Location, "/_history/"+vid) || r.LastModified == "" {
				t.Errorf("entry %d: location %q, etag %q, lastModified %q", i, r.Location, r.Etag, r.LastModified)
			}
		}
	}
	// The read sees the write before it, with the same version.
	var p1 struct {
		ID, Gender string
		Meta       struct{ VersionID, LastUpdated string }
	}
	if err := json.Unmarshal(b.Entry[4].Resource, &p1); err != nil || p1.ID != "b1" || p1.Gender != "female" ||
		b.Entry[4].Response.Etag != b.Entry[0].Response.Etag || p1.Meta.LastUpdated != b.Entry[0].Response.LastModified {
		t.Errorf("GET entry %s (%v), etag %q, want b1 as the PUT entry stored it (%+v)", b.Entry[4].Resource, err, b.Entry[4].Response.Etag, b.Entry[0].Response)
	}
	// What succeeded is stored, what failed is not.
	obsKey := strings.Join(strings.Split(strings.TrimPrefix(b.Entry[1].Response.Location, base+"/"), "/")[:2], "/")
	for key, want := range map[string]int{"Patient/b1": 200, obsKey: 200, "Patient/b4": 200, "Patient/b2": 404, "Patient/someone-else": 404} {
		if got, _ := read(t, base, key); got != want {
			t.Errorf("GET %s: %d, want %d", key, got, want)
		}
	}

	// A second batch: an update is 200, a delete of what exists is 204
	// with the deletion's version.
	b = bundleOK(t, base, "batch",
		putEntry("Patient", "b1", `{"resourceType":"Patient","id":"b1","gender":"male"}`),
		methodEntry("DELETE", "Patient/b4"),
		`{"request":{"method":"PUT","url":"`+base+`/Patient/b5"},"resource":{"resourceType":"Patient","id":"b5"}}`,
	)
	if r := b.Entry[0].Response; r.Status != "200 OK" || r.Etag == "" {
		t.Errorf("update entry: %+v", r)
	}
	if r := b.Entry[1].Response; r.Status != "204 No Content" || r.Etag == "" || r.Etag == b.Entry[0].Response.Etag {
		t.Errorf("delete entry: %+v", r)
	}
	if r := b.Entry[2].Response; r.Status != "201 Created" {
		t.Errorf("absolute url entry: %+v", r)
	}
	if got, r := read(t, base, "Patient/b1"); got != 200 || r["gender"] != "male" {
		t.Errorf("GET Patient/b1 after the update: %d %v", got, r)
	}
	if got, _ := read(t, base, "Patient/b4"); got != 404 {
		t.Errorf("GET Patient/b4 after the delete: %d", got)
	}
}

func TestE2ETransactionIsAllOrNothing(t *testing.T) {
	base := startEngine(t)
	if got := bundleOK(t, base, "batch", putEntry("Patient", "old", `{"resourceType":"Patient","id":"old"}`)); got.Entry[0].Response.Status != "201 Created" {
		t.Fatalf("setup: %+v", got.Entry[0].Response)
	}

	// Success: ids assigned, urn:uuid references rewritten, one version.
	const urn = "urn:uuid:8f0e7c1a-0000-4000-8000-00000000000"
	b := bundleOK(t, base, "transaction",
		postEntry(urn+"1", "Patient", `{"resourceType":"Patient","name":[{"family":"Tx"}]}`),
		postEntry(urn+"2", "Observation", `{"resourceType":"Observation","status":"final","code":{"text":"tx"},`+
			`"subject":{"reference":"`+urn+`1"},"performer":[{"reference":"`+urn+`3"}]}`),
		`{"fullUrl":"`+urn+`3",`+putEntry("Practitioner", "tx-pr", `{"resourceType":"Practitioner","id":"tx-pr"}`)[1:],
		methodEntry("DELETE", "Patient/old"),
		methodEntry("DELETE", "Patient/never-was"),
	)
	statuses := []string{"201 Created", "201 Created", "201 Created", "204 No Content", "204 No Content"}
	keys := make([]string, 3)
	for i, e := range b.Entry {
		r := e.Response
		if r.Status != statuses[i] {
			t.Errorf("entry %d: status %q, want %q", i, r.Status, statuses[i])
		}
		if i < 4 && (r.Etag == "" || r.Etag != b.Entry[0].Response.Etag) {
			t.Errorf("entry %d: etag %q, want the transaction's one version %q", i, r.Etag, b.Entry[0].Response.Etag)
		}
		if i < 3 {
			if r.LastModified == "" || r.LastModified != b.Entry[0].Response.LastModified || !strings.HasPrefix(r.Location, base+"/") {
				t.Errorf("entry %d: lastModified %q location %q", i, r.LastModified, r.Location)
			}
			keys[i] = strings.TrimPrefix(e.FullURL, base+"/")
		}
	}
	if r := b.Entry[4].Response; r.Etag != "" {
		t.Errorf("deleting what never existed changed something: %+v", r)
	}
	_, patient := read(t, base, keys[0])
	_, observation := read(t, base, keys[1])
	if patient == nil || observation == nil || !strings.HasPrefix(keys[0], "Patient/") || keys[2] != "Practitioner/tx-pr" {
		t.Fatalf("created %v: patient %v, observation %v", keys, patient, observation)
	}
	subject, _ := observation["subject"].(map[string]any)
	performer, _ := observation["performer"].([]any)
	if subject["reference"] != keys[0] || len(performer) != 1 || performer[0].(map[string]any)["reference"] != "Practitioner/tx-pr" {
		t.Errorf("observation references %v %v, want %s and Practitioner/tx-pr", subject, performer, keys[0])
	}
	if got, _ := read(t, base, "Patient/old"); got != 404 {
		t.Errorf("GET Patient/old after the transaction deleted it: %d", got)
	}

	// Refusals change nothing.
	good := putEntry("Patient", "good-1", `{"resourceType":"Patient","id":"good-1"}`)
	tx := func(entries ...string) string {
		return `{"resourceType":"Bundle","type":"transaction","entry":[` + strings.Join(entries, ",") + `]}`
	}
	refused(t, base, 400, tx(good, putEntry("Patient", "bad", `{"resourceType":"Patient","id":"other"}`)),
		"entry 1 (PUT Patient/bad)", "the body is Patient/other but the URL names Patient/bad", "nothing from this transaction was applied")
	refused(t, base, 400, tx(good, putEntry("Patient", "x", `{"id":"x"}`)), "entry 1", "resourceType is missing")
	refused(t, base, 400, tx(good, postEntry("urn:uuid:1", "Observation", `{"resourceType":"Observation","subject":{"reference":"urn:uuid:2"}}`)),
		"entry 1 (POST Observation)", `names no entry's fullUrl`)
	refused(t, base, 400, tx(good, methodEntry("DELETE", "Patient/good-1")), "entries 0 and 1 both change Patient/good-1")
	refused(t, base, 400, tx(good, good), "entries 0 and 1 both change Patient/good-1")
	refused(t, base, 400, tx(good, methodEntry("GET", "Patient/old")), "entry 1 (GET Patient/old)", "batch Bundles only")
	refused(t, base, 400, tx(good, `{"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=a|b"},"resource":{"resourceType":"Patient"}}`),
		"entry 1", "conditional requests")
	refused(t, base, 400, tx(good, methodEntry("DELETE", "Patient?identifier=a")), "entry 1", "searches and conditional URLs")
	refused(t, base, 400, `{"resourceType":"Bundle","type":"collection","entry":[`+good+`]}`, `collection`)
	refused(t, base, 400, `{"resourceType":"Patient","id":"good-1"}`, "takes a Bundle of type batch or transaction")
	refused(t, base, 400, `{"resourceType":"Bundle","type":"transaction","entry":[`, "not valid JSON")
	big := `{"resourceType":"Patient","id":"big-%d","text":{"status":"generated","div":"<div>` + strings.Repeat("x", 3<<20) + `</div>"}}`
	refused(t, base, 413, tx(good, putEntry("Patient", "big-1", fmt.Sprintf(big, 1)), putEntry("Patient", "big-2", fmt.Sprintf(big, 2)), putEntry("Patient", "big-3", fmt.Sprintf(big, 3))),
		"more than")
	resp, out := do(t, "POST", base, strings.NewReader(tx(good)), "Content-Type", "text/plain")
	if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(out), "OperationOutcome") {
		t.Errorf("text/plain Bundle: %d %s", resp.StatusCode, out)
	}
	// application/json is accepted too; an empty transaction changes nothing.
	resp, out = do(t, "POST", base, strings.NewReader(tx()), "Content-Type", "application/json; charset=utf-8")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), `"type":"transaction-response"`) {
		t.Errorf("empty transaction as application/json: %d %s", resp.StatusCode, out)
	}

	for _, key := range []string{"Patient/good-1", "Patient/bad", "Patient/other", "Patient/big-1"} {
		if got, _ := read(t, base, key); got != 404 {
			t.Errorf("GET %s after refused transactions: %d, want 404", key, got)
		}
	}
	got := exportedBodies(t, base, "Patient,Observation,Practitioner")
	for _, key := range keys {
		if got[key] == nil {
			t.Errorf("export lacks %s from the transaction", key)
		}
	}
	for key := range got {
		if key == "Patient/good-1" || key == "Patient/old" || strings.HasPrefix(key, "Patient/big-") {
			t.Errorf("export holds %s", key)
		}
	}
}

// TestE2EExportsNeverSeeHalfATransaction: transactions that each create a
// Patient and an Observation about it stream in while exports run; every
// export holds both of a pair or neither.
func TestE2EExportsNeverSeeHalfATransaction(t *testing.T) {
	base := startEngine(t)
	var stop atomic.Bool
	var pairs atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan string, 2)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 60 * time.Second}
			for i := 0; !stop.Load(); i++ {
				pair := fmt.Sprintf("pair-%d-%d", w, i)
				body := `{"resourceType":"Bundle","type":"transaction","entry":[` +
					postEntry("urn:uuid:"+pair+"-p", "Patient", `{"resourceType":"Patient","identifier":[{"value":"`+pair+`"}]}`) + "," +
					postEntry("urn:uuid:"+pair+"-o", "Observation", `{"resourceType":"Observation","status":"final","code":{"text":"`+pair+`"},`+
						`"subject":{"reference":"urn:uuid:`+pair+`-p"}}`) + `]}`
				resp, err := client.Post(base, "application/fhir+json", strings.NewReader(body))
				if err != nil {
					errs <- err.Error()
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Sprintf("transaction %s: %d", pair, resp.StatusCode)
					return
				}
				pairs.Add(1)
			}
		}()
	}
	finish := func() {
		stop.Store(true)
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	}
	defer func() {
		if !stop.Load() {
			finish()
		}
	}()

	deadline := time.Now().Add(2 * time.Minute)
	lastSeen := 0
	for round := 0; round < 4 || lastSeen == 0; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("no export saw a transaction within 2 minutes (%d committed)", pairs.Load())
		}
		got := exportedBodies(t, base, "Patient,Observation")
		patients, subjects := map[string]bool{}, map[string]bool{}
		for key, r := range got {
			switch {
			case strings.HasPrefix(key, "Patient/"):
				patients[key] = true
			case strings.HasPrefix(key, "Observation/"):
				subjects[r["subject"].(map[string]any)["reference"].(string)] = true
			}
		}
		for p := range patients {
			if !subjects[p] {
				t.Errorf("export %d holds %s without its Observation", round, p)
			}
		}
		for s := range subjects {
			if !patients[s] {
				t.Errorf("export %d holds the Observation of %s without it", round, s)
			}
		}
		if len(patients) < lastSeen {
			t.Errorf("export %d holds %d pairs, fewer than the %d before it", round, len(patients), lastSeen)
		}
		if t.Failed() {
			break
		}
		lastSeen = len(patients)
		t.Logf("export %d: %d whole pairs (%d committed so far)", round, lastSeen, pairs.Load())
	}
	finish()
}
