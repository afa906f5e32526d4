package flatfhir_test

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// The kinds of body a strict client accepts, by media type.
const (
	bodyEmpty    = "empty"                   // no body, no Content-Type
	bodyFHIR     = "application/fhir+json"   // a FHIR resource (an OperationOutcome on errors)
	bodyJSON     = "application/json"        // manifest, discovery, OAuth, admin
	bodyNDJSON   = "application/fhir+ndjson" // export files
	bodyInFlight = "in-progress"             // 202 with headers only
)

// checkWire asserts what a strict client assumes of a response: the status
// it expects, and a body that is empty (without Content-Type) or that
// parses as the media type the response names. Errors carry an
// OperationOutcome naming the problem (OAuth errors their error code).
func checkWire(t *testing.T, name string, resp *http.Response, body []byte, status int, kind string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("%s: status %d, want %d (%s)", name, resp.StatusCode, status, body)
		return
	}
	ct := resp.Header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Errorf("%s: Content-Encoding gzip, but the body is not gzip: %v", name, err)
			return
		}
		if body, err = io.ReadAll(zr); err != nil {
			t.Errorf("%s: gzip body: %v", name, err)
			return
		}
	}
	switch kind {
	case bodyEmpty, bodyInFlight:
		if len(body) != 0 || ct != "" {
			t.Errorf("%s: body %q with Content-Type %q, want none", name, body, ct)
		}
		if resp.Request.Method != http.MethodHead && resp.StatusCode != http.StatusNoContent && resp.Header.Get("Content-Length") != "0" {
			t.Errorf("%s: Content-Length %q, want 0", name, resp.Header.Get("Content-Length"))
		}
		if kind == bodyInFlight {
			secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil || secs < 1 || !strings.Contains(resp.Header.Get("X-Progress"), "%") {
				t.Errorf("%s: in progress with Retry-After %q and X-Progress %q", name, resp.Header.Get("Retry-After"), resp.Header.Get("X-Progress"))
			}
		}
	case bodyFHIR, bodyJSON:
		if mt != kind {
			t.Errorf("%s: Content-Type %q, want %s", name, ct, kind)
		}
		var obj map[string]any
		if err := json.Unmarshal(body, &obj); err != nil {
			t.Errorf("%s: the body is not a JSON object: %v: %q", name, err, body)
			return
		}
		switch {
		case kind == bodyFHIR && resp.StatusCode >= 400:
			issues, _ := obj["issue"].([]any)
			first, _ := func() (map[string]any, bool) {
				if len(issues) == 0 {
					return nil, false
				}
				m, ok := issues[0].(map[string]any)
				return m, ok
			}()
			if obj["resourceType"] != "OperationOutcome" || first == nil || first["diagnostics"] == "" || first["code"] == "" {
				t.Errorf("%s: error body is not an OperationOutcome naming the problem: %s", name, body)
			}
		case kind == bodyFHIR:
			if _, ok := obj["resourceType"].(string); !ok {
				t.Errorf("%s: FHIR body without resourceType: %s", name, body)
			}
		case resp.StatusCode >= 400:
			if obj["error"] == nil && obj["resourceType"] != "OperationOutcome" {
				t.Errorf("%s: JSON error body names no error: %s", name, body)
			}
		}
	case bodyNDJSON:
		if mt != kind {
			t.Errorf("%s: Content-Type %q, want %s", name, ct, kind)
		}
		if resp.Request.Method == http.MethodHead {
			break
		}
		for i, line := range bytes.Split(bytes.TrimRight(body, "\n"), []byte("\n")) {
			if resp.StatusCode == http.StatusPartialContent && i == 0 {
				continue // a range may start mid-line
			}
			if !json.Valid(line) && resp.StatusCode == http.StatusOK {
				t.Errorf("%s: line %d is not JSON: %q", name, i+1, line)
			}
		}
	default: // an attachment: the Binary's own type
		if mt != kind || len(body) == 0 {
			t.Errorf("%s: Content-Type %q with %d bytes, want %s", name, ct, len(body), kind)
		}
	}
}

// rawClient does not add Accept-Encoding, so gzip bodies stay as sent.
var rawClient = &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: time.Minute}

func sendRaw(t *testing.T, method, u string, body string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	return doWith(t, rawClient, method, u, r, headers...)
}

// TestE2EEveryResponseIsEmptyOrTypedJSON walks every route the API serves,
// through every status it can answer with, and checks each response as a
// strict client parses it (the SMART bulk-data-client parses any 202 body
// as JSON; Inferno checks media types).
func TestE2EEveryResponseIsEmptyOrTypedJSON(t *testing.T) {
	base, cfg := startAuthorizedEngine(t)
	// A second API on its own bus, with no planner: its exports stay in
	// progress, so the in-progress answers can be walked without racing.
	idle := cfg
	idle.Role, idle.NATSURL, idle.Auth, idle.DataDir, idle.PollRate = flatfhir.RoleAPI, testenv.NATS(t), false, t.TempDir(), 1
	idleBase, stopIdle := runEngine(t, idle, flatfhir.Tuning{})
	t.Cleanup(stopIdle)

	admin := []string{"Authorization", "Bearer " + e2eAdminToken}
	fhirJSON := "application/fhir+json"
	check := func(name string, status int, kind, method, u, body string, headers ...string) (*http.Response, []byte) {
		t.Helper()
		resp, b := sendRaw(t, method, u, body, headers...)
		checkWire(t, name, resp, b, status, kind)
		return resp, b
	}

	// Discovery and the authorization server.
	check("metadata", 200, bodyFHIR, "GET", base+"/metadata", "")
	check("smart-configuration", 200, bodyJSON, "GET", base+"/.well-known/smart-configuration", "")
	check("authorize (not offered)", 400, bodyJSON, "GET", base+"/auth/authorize?response_type=code", "")
	check("token without a grant", 400, bodyJSON, "POST", base+"/auth/token", "x=1", "Content-Type", "application/x-www-form-urlencoded")
	check("token with a bad assertion", 400, bodyJSON, "POST", base+"/auth/token",
		"grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=x.y.z",
		"Content-Type", "application/x-www-form-urlencoded")

	// Operator endpoints.
	check("admin without a credential", 401, bodyFHIR, "GET", base+"/admin/clients", "")
	dir := t.TempDir()
	cli(t, "clients", "keygen", "--out", filepath.Join(dir, "demo"), "--alg", "ES384")
	set, err := os.ReadFile(filepath.Join(dir, "demo.jwks.json"))
	if err != nil {
		t.Fatal(err)
	}
	reg, _ := json.Marshal(map[string]any{"jwks": json.RawMessage(set), "scope": "system/*.cruds"})
	check("register a client", 200, bodyJSON, "PUT", base+"/admin/clients/demo", string(reg), append(admin, "Content-Type", "application/json")...)
	check("register with a bad body", 400, bodyFHIR, "PUT", base+"/admin/clients/bad", "{", append(admin, "Content-Type", "application/json")...)
	check("list clients", 200, bodyJSON, "GET", base+"/admin/clients", "", admin...)
	check("read a client", 200, bodyJSON, "GET", base+"/admin/clients/demo", "", admin...)
	check("read an unknown client", 404, bodyFHIR, "GET", base+"/admin/clients/nobody", "", admin...)
	check("remove an unknown client", 404, bodyFHIR, "DELETE", base+"/admin/clients/nobody", "", admin...)
	check("rotate keys", 200, bodyJSON, "POST", base+"/admin/keys/rotate", "", admin...)
	tok := strings.TrimSpace(cli(t, "token", "--client", "demo", "--key", filepath.Join(dir, "demo.key.pem"), "--scope", "system/*.cruds", "--url", base, "--raw"))
	bearer := []string{"Authorization", "Bearer " + tok}
	withBearer := func(h ...string) []string { return append(append([]string{}, bearer...), h...) }

	// Loads and writes.
	ndjson := `{"resourceType":"Patient","id":"p1"}` + "\n" +
		`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}` + "\n" +
		`{"resourceType":"Group","id":"g1","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p1"}}]}` + "\n" +
		fmt.Sprintf(`{"resourceType":"Binary","id":"b1","contentType":"text/plain","securityContext":{"reference":"Patient/p1"},"data":%q}`, base64.StdEncoding.EncodeToString([]byte("a note"))) + "\n" +
		`{"resourceType":"DocumentReference","id":"d1","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"text/plain","url":"Binary/b1"}}]}` + "\n"
	check("ingest without a credential", 401, bodyFHIR, "POST", base+"/$ingest", ndjson, "Content-Type", "application/fhir+ndjson")
	check("ingest of another media type", 415, bodyFHIR, "POST", base+"/$ingest", ndjson, append(admin, "Content-Type", "text/csv")...)
	check("ingest of a bad line", 400, bodyFHIR, "POST", base+"/$ingest", "{not json\n", append(admin, "Content-Type", "application/fhir+ndjson")...)
	check("ingest", 200, bodyFHIR, "POST", base+"/$ingest", ndjson, append(admin, "Content-Type", "application/fhir+ndjson")...)
	check("create", 201, bodyFHIR, "POST", base+"/Patient", `{"resourceType":"Patient"}`, withBearer("Content-Type", fhirJSON)...)
	check("create of the wrong type", 400, bodyFHIR, "POST", base+"/Observation", `{"resourceType":"Patient"}`, withBearer("Content-Type", fhirJSON)...)
	check("update that creates", 201, bodyFHIR, "PUT", base+"/Patient/p2", `{"resourceType":"Patient","id":"p2"}`, withBearer("Content-Type", fhirJSON)...)
	check("update", 200, bodyFHIR, "PUT", base+"/Patient/p2", `{"resourceType":"Patient","id":"p2","active":true}`, withBearer("Content-Type", fhirJSON)...)
	check("update that is not JSON", 400, bodyFHIR, "PUT", base+"/Patient/p2", `not json`, withBearer("Content-Type", fhirJSON)...)
	check("read", 200, bodyFHIR, "GET", base+"/Patient/p1", "", bearer...)
	check("read without a token", 401, bodyFHIR, "GET", base+"/Patient/p1", "")
	check("read of a missing resource", 404, bodyFHIR, "GET", base+"/Patient/nobody", "", bearer...)
	check("read of an unknown type", 404, bodyFHIR, "GET", base+"/Patiant/p1", "", bearer...)
	check("delete", 204, bodyEmpty, "DELETE", base+"/Patient/p2", "", bearer...)
	check("delete of a missing resource", 204, bodyEmpty, "DELETE", base+"/Patient/nobody", "", bearer...)
	check("batch", 200, bodyFHIR, "POST", base+"/", `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/p1"}}]}`, withBearer("Content-Type", fhirJSON)...)
	check("bundle of another media type", 415, bodyFHIR, "POST", base+"/", `{}`, withBearer("Content-Type", "text/plain")...)
	check("bundle that is not a Bundle", 400, bodyFHIR, "POST", base+"/", `{"resourceType":"Patient"}`, withBearer("Content-Type", fhirJSON)...)
	check("group search", 200, bodyFHIR, "GET", base+"/Group?_id=g1", "", bearer...)
	check("group search by an unsupported parameter", 400, bodyFHIR, "GET", base+"/Group?member=x", "", bearer...)
	check("unknown route", 404, bodyFHIR, "GET", base+"/a/b/c/d", "", bearer...)
	check("unsupported method", 405, bodyFHIR, "PATCH", base+"/Patient/p1", "{}", withBearer("Content-Type", fhirJSON)...)

	// Kick-offs at every level, GET and POST.
	kick := []string{"Accept", fhirJSON, "Prefer", "respond-async"}
	params := `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient,Observation,DocumentReference"}]}`
	var statusURLs []string
	for _, lvl := range []string{"/$export", "/Patient/$export", "/Group/g1/$export"} {
		resp, _ := check("GET kick-off "+lvl, 202, bodyFHIR, "GET", base+lvl+"?_type=Patient,Observation,DocumentReference", "", withBearer(kick...)...)
		statusURLs = append(statusURLs, resp.Header.Get("Content-Location"))
		resp, _ = check("POST kick-off "+lvl, 202, bodyFHIR, "POST", base+lvl, params, withBearer(append(kick, "Content-Type", fhirJSON)...)...)
		statusURLs = append(statusURLs, resp.Header.Get("Content-Location"))
		check("kick-off without a token "+lvl, 401, bodyFHIR, "GET", base+lvl, "", kick...)
		check("kick-off with a bad parameter "+lvl, 400, bodyFHIR, "GET", base+lvl+"?_since=yesterday", "", withBearer(kick...)...)
	}
	check("kick-off of an unknown group", 404, bodyFHIR, "GET", base+"/Group/nope/$export", "", withBearer(kick...)...)
	check("kick-off with an unsupported Accept", 400, bodyFHIR, "GET", base+"/$export", "", withBearer("Accept", "text/html", "Prefer", "respond-async")...)

	// Finished exports: manifest, files, attachments, release.
	var m struct {
		Output []struct{ Type, URL string }
	}
	for i, status := range statusURLs {
		var body []byte
		testenv.Eventually(t, 3*time.Minute, "export "+status, func() bool {
			var resp *http.Response
			resp, body = sendRaw(t, "GET", status, "", withBearer("Accept", "application/json")...)
			switch resp.StatusCode {
			case 202:
				checkWire(t, "in-progress status", resp, body, 202, bodyInFlight)
			case 429:
				checkWire(t, "throttled status", resp, body, 429, bodyFHIR)
			default:
				checkWire(t, "complete status", resp, body, 200, bodyJSON)
				return true
			}
			return false
		})
		if i == 0 {
			if err := json.Unmarshal(body, &m); err != nil || len(m.Output) == 0 {
				t.Fatalf("manifest: %v %s", err, body)
			}
		}
	}
	file := m.Output[0].URL
	check("file", 200, bodyNDJSON, "GET", file, "", bearer...)
	check("file, gzip", 200, bodyNDJSON, "GET", file, "", withBearer("Accept-Encoding", "gzip")...)
	check("file, head", 200, bodyNDJSON, "HEAD", file, "", bearer...)
	check("file, a range", 206, bodyNDJSON, "GET", file, "", withBearer("Range", "bytes=3-20")...)
	check("file, an unsatisfiable range", 416, bodyFHIR, "GET", file, "", withBearer("Range", "bytes=99999999-")...)
	check("file without a token", 401, bodyFHIR, "GET", file, "")
	check("missing file", 404, bodyFHIR, "GET", file+"x.ndjson", "", bearer...)
	var attachment string
	for _, o := range m.Output {
		if o.Type == "DocumentReference" {
			_, b := sendRaw(t, "GET", o.URL, "", bearer...)
			var doc struct {
				Content []struct{ Attachment struct{ URL string } }
			}
			_ = json.Unmarshal(bytes.SplitN(b, []byte("\n"), 2)[0], &doc)
			if len(doc.Content) > 0 {
				attachment = doc.Content[0].Attachment.URL
			}
		}
	}
	if attachment == "" {
		t.Fatal("the export's DocumentReference names no attachment URL")
	}
	check("attachment", 200, "text/plain", "GET", attachment, "", bearer...)
	check("missing attachment", 404, bodyFHIR, "GET", attachment+"x", "", bearer...)
	check("status of an unknown export", 404, bodyFHIR, "GET", base+"/jobs/nope", "", bearer...)
	check("release", 202, bodyFHIR, "DELETE", statusURLs[0], "", bearer...)
	check("status once released", 404, bodyFHIR, "GET", statusURLs[0], "", bearer...)
	check("release of an unknown export", 404, bodyFHIR, "DELETE", base+"/jobs/nope", "", bearer...)

	// Exports in progress, on the API without a planner.
	resp, _ := check("kick-off (stays in progress)", 202, bodyFHIR, "GET", idleBase+"/$export?_type=Patient", "", kick...)
	running := resp.Header.Get("Content-Location")
	check("in progress", 202, bodyInFlight, "GET", running, "", "Accept", "application/json")
	check("the same export again while it runs", 429, bodyFHIR, "GET", idleBase+"/$export?_type=Patient", "", kick...)
	// Polls beyond the rate limit are refused with Retry-After.
	var wg sync.WaitGroup
	var mu sync.Mutex
	throttled := 0
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, b := sendRaw(t, "GET", running, "", "Accept", "application/json")
			if resp.StatusCode == 429 {
				checkWire(t, "polled too often", resp, b, 429, bodyFHIR)
				if resp.Header.Get("Retry-After") == "" {
					t.Errorf("429 without Retry-After")
				}
				mu.Lock()
				throttled++
				mu.Unlock()
			} else {
				checkWire(t, "in progress, concurrently", resp, b, 202, bodyInFlight)
			}
		}()
	}
	wg.Wait()
	if throttled == 0 {
		t.Error("30 concurrent polls of one export were all answered: no rate limit")
	}
	check("cancel", 202, bodyFHIR, "DELETE", running, "", "Accept", "application/json")
	check("status once cancelled", 404, bodyFHIR, "GET", running, "", "Accept", "application/json")
}
