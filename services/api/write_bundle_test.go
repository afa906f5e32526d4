package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/shared/fhir"
)

func TestAPIParseBundleRefusals(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       wantErr
	}{
		{"not json", `{"resourceType":"Bundle"`, wantErr{400, fhir.CodeInvalid, []string{"not valid JSON"}}},
		{"no resourceType", `{"type":"batch"}`, wantErr{400, fhir.CodeInvalid, []string{"resourceType is missing"}}},
		{"a Patient", `{"resourceType":"Patient","id":"p"}`, wantErr{400, fhir.CodeInvalid, []string{"not a Patient"}}},
		{"a collection", `{"resourceType":"Bundle","type":"collection"}`, wantErr{400, fhir.CodeInvalid, []string{`not "collection"`}}},
		{"a batch-response", `{"resourceType":"Bundle","type":"batch-response"}`, wantErr{400, fhir.CodeInvalid, []string{`not "batch-response"`}}},
		{"entry not a list", `{"resourceType":"Bundle","type":"batch","entry":{}}`, wantErr{400, fhir.CodeInvalid, []string{"not a valid Bundle"}}},
		{"too many entries", `{"resourceType":"Bundle","type":"batch","entry":[` + strings.Repeat(`{},`, maxBundleEntries) + `{}]}`,
			wantErr{413, fhir.CodeTooCostly, []string{"at most 10000 entries"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseBundle([]byte(c.body))
			checkProblem(t, err, c.want)
		})
	}
	b, err := parseBundle([]byte(`{"resourceType":"Bundle","type":"transaction"}`))
	if err != nil || b.Type != "transaction" || len(b.Entry) != 0 {
		t.Errorf("an empty transaction: %+v, %v", b, err)
	}
}

// entry builds a Bundle entry from its JSON.
func entry(t *testing.T, js string) entryIn {
	t.Helper()
	var e entryIn
	if err := json.Unmarshal([]byte(js), &e); err != nil {
		t.Fatalf("test entry %s: %v", js, err)
	}
	return e
}

func TestAPIParseEntry(t *testing.T) {
	const base = "http://fhir.test/r4"
	p1 := `{"resourceType":"Patient","id":"p1"}`
	for _, c := range []struct {
		name, entry string
		want        wantErr
	}{
		{"no request", `{"resource":` + p1 + `}`, wantErr{400, fhir.CodeInvalid, []string{"no request"}}},
		{"patch", `{"request":{"method":"PATCH","url":"Patient/p1"}}`, wantErr{400, fhir.CodeNotSupported, []string{`"PATCH"`}}},
		{"ifNoneExist", `{"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=x"},"resource":` + p1 + `}`, wantErr{400, fhir.CodeNotSupported, []string{"conditional"}}},
		{"ifMatch", `{"request":{"method":"PUT","url":"Patient/p1","ifMatch":"W/\"1\""},"resource":` + p1 + `}`, wantErr{400, fhir.CodeNotSupported, []string{"conditional"}}},
		{"conditional url", `{"request":{"method":"DELETE","url":"Patient?identifier=x"}}`, wantErr{400, fhir.CodeNotSupported, []string{"searches and conditional URLs"}}},
		{"search", `{"request":{"method":"GET","url":"Patient?name=x"}}`, wantErr{400, fhir.CodeNotSupported, []string{"searches"}}},
		{"history", `{"request":{"method":"GET","url":"Patient/p1/_history/2"}}`, wantErr{400, fhir.CodeNotSupported, []string{"GET takes Type/id"}}},
		{"post with id in url", `{"request":{"method":"POST","url":"Patient/p1"},"resource":` + p1 + `}`, wantErr{400, fhir.CodeNotSupported, []string{"POST takes Type"}}},
		{"unknown type", `{"request":{"method":"DELETE","url":"Patiant/p1"}}`, wantErr{400, fhir.CodeInvalid, []string{`"Patiant" is not an R4 resource type`}}},
		{"bad id", `{"request":{"method":"DELETE","url":"Patient/a_b"}}`, wantErr{400, fhir.CodeInvalid, []string{`"a_b" is not a valid FHIR id`}}},
		{"put without resource", `{"request":{"method":"PUT","url":"Patient/p1"}}`, wantErr{400, fhir.CodeInvalid, []string{"has no resource"}}},
		{"put id mismatch", `{"request":{"method":"PUT","url":"Patient/p2"},"resource":` + p1 + `}`, wantErr{400, fhir.CodeInvalid, []string{"the body is Patient/p1 but the URL names Patient/p2"}}},
		{"put no resourceType", `{"request":{"method":"PUT","url":"Patient/p1"},"resource":{"id":"p1"}}`, wantErr{400, fhir.CodeInvalid, []string{"resourceType is missing"}}},
		{"post type mismatch", `{"request":{"method":"POST","url":"Observation"},"resource":` + p1 + `}`, wantErr{400, fhir.CodeInvalid, []string{"the body is a Patient but the URL names Observation"}}},
		{"resource too large", `{"request":{"method":"PUT","url":"Patient/p1"},"resource":{"resourceType":"Patient","id":"p1","text":"` + strings.Repeat("x", 200) + `"}}`, wantErr{413, fhir.CodeTooCostly, []string{"larger than 100 bytes"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseEntry(entry(t, c.entry), base, 100)
			checkProblem(t, err, c.want)
		})
	}

	// What parses, and how.
	op, err := parseEntry(entry(t, `{"request":{"method":"PUT","url":"`+base+`/Patient/p1"},"resource":`+p1+`}`), base, 1000)
	if err != nil || op.method != "PUT" || op.key() != "Patient/p1" || string(op.body) != p1 {
		t.Errorf("absolute PUT url: %+v, %v", op, err)
	}
	op, err = parseEntry(entry(t, `{"fullUrl":"urn:uuid:1","request":{"method":"POST","url":"Patient"},"resource":{"resourceType":"Patient","id":"ignored"}}`), base, 1000)
	if err != nil || op.typ != "Patient" || op.id == "" || op.id == "ignored" || !strings.Contains(string(op.body), `"id":"`+op.id+`"`) || op.fullURL != "urn:uuid:1" {
		t.Errorf("POST: %+v %s, %v", op, op.body, err)
	}
	for _, m := range []string{"GET", "DELETE"} {
		op, err = parseEntry(entry(t, `{"request":{"method":"`+m+`","url":"Observation/o.1"}}`), base, 1000)
		if err != nil || op.method != m || op.key() != "Observation/o.1" || op.body != nil {
			t.Errorf("%s: %+v, %v", m, op, err)
		}
	}
}

func TestAPIResolveReferences(t *testing.T) {
	ops := []*entryOp{
		{method: "POST", typ: "Patient", id: "new1", fullURL: "urn:uuid:aaa", body: []byte(`{"resourceType":"Patient","id":"new1","link":[{"other":{"reference":"urn:uuid:bbb"}}]}`)},
		{method: "PUT", typ: "Observation", id: "o1", fullURL: "urn:uuid:bbb", body: []byte(`{"resourceType":"Observation","id":"o1","subject":{"reference":"urn:uuid:aaa"},"performer":[{"reference":"Practitioner/x"}]}`)},
		{method: "DELETE", typ: "Patient", id: "old", fullURL: "http://elsewhere/Patient/old"},
	}
	if err := resolveReferences(ops); err != nil {
		t.Fatal(err)
	}
	if want := `{"resourceType":"Patient","id":"new1","link":[{"other":{"reference":"Observation/o1"}}]}`; string(ops[0].body) != want {
		t.Errorf("POST body %s, want %s", ops[0].body, want)
	}
	if want := `{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/new1"},"performer":[{"reference":"Practitioner/x"}]}`; string(ops[1].body) != want {
		t.Errorf("PUT body %s, want %s", ops[1].body, want)
	}
	dangling := []*entryOp{{method: "POST", typ: "Observation", id: "n", body: []byte(`{"resourceType":"Observation","subject":{"reference":"urn:uuid:nowhere"}}`)}}
	checkProblem(t, resolveReferences(dangling), wantErr{400, fhir.CodeInvalid, []string{"entry 0 (POST Observation)", `"urn:uuid:nowhere" names no entry's fullUrl`, "nothing from this transaction was applied"}})
}

func TestAPIEntryErrorNamesTheEntry(t *testing.T) {
	op := &entryOp{method: "PUT", typ: "Patient", id: "p1"}
	checkProblem(t, entryError(3, op, tooLarge("too big")), wantErr{413, fhir.CodeTooCostly, []string{"entry 3 (PUT Patient/p1): too big; nothing from this transaction was applied"}})
	checkProblem(t, entryError(0, nil, badRequest("no request")), wantErr{400, fhir.CodeInvalid, []string{"entry 0: no request;"}})
}

func TestAPIFailedEntryCarriesAnOutcome(t *testing.T) {
	e := failed(notFound("Patient/x does not exist"))
	if e.Response.Status != "404 Not Found" {
		t.Errorf("status %q", e.Response.Status)
	}
	var oo fhir.OperationOutcome
	if err := json.Unmarshal(e.Response.Outcome, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) != 1 ||
		oo.Issue[0].Code != fhir.CodeNotFound || oo.Issue[0].Diagnostics != "Patient/x does not exist" {
		t.Errorf("outcome %s: %v", e.Response.Outcome, err)
	}
	if got := statusLine(fiber.StatusCreated); got != "201 Created" {
		t.Errorf("status line %q", got)
	}
}

func TestAPICapabilityStatementDeclaresBatchAndTransaction(t *testing.T) {
	var cs struct {
		Rest []struct {
			Interaction []struct{ Code string }
		}
	}
	if err := json.Unmarshal(capabilityStatement, &cs); err != nil || len(cs.Rest) != 1 {
		t.Fatalf("capability statement: %v", err)
	}
	got := map[string]bool{}
	for _, i := range cs.Rest[0].Interaction {
		got[i.Code] = true
	}
	if !got["batch"] || !got["transaction"] {
		t.Errorf("rest.interaction %v lacks batch or transaction", cs.Rest[0].Interaction)
	}
}

func TestAuthBundleEntriesFollowScopes(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	c := newTestClient(t, "bundler", "ES384", 0)
	register(t, base, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/Patient.cruds system/Observation.rs"})
	tok := c.token(t, base, "system/Patient.cruds system/Observation.rs").AccessToken
	bundle := func(typ string, entries ...string) string {
		return `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + strings.Join(entries, ",") + `]}`
	}
	post := func(token, body string) (*http.Response, []byte) {
		h := []string{"Content-Type", "application/fhir+json"}
		if token != "" {
			h = append(h, "Authorization", "Bearer "+token)
		}
		return send(t, "POST", base+"/", strings.NewReader(body), h...)
	}
	putObs := `{"request":{"method":"PUT","url":"Observation/o1"},"resource":{"resourceType":"Observation","id":"o1"}}`
	putPat := `{"request":{"method":"PUT","url":"Patient/p1"},"resource":{"resourceType":"Patient","id":"p1"}}`

	// A batch: entries the token does not cover fail with 403, the others
	// go ahead (here: reads, so that no ingester is needed).
	resp, body := post(tok, bundle("batch",
		putObs,
		`{"request":{"method":"DELETE","url":"Observation/o1"}}`,
		`{"request":{"method":"POST","url":"Observation"},"resource":{"resourceType":"Observation"}}`,
		`{"request":{"method":"GET","url":"Encounter/e1"}}`,
		`{"request":{"method":"GET","url":"Observation/o1"}}`,
	))
	var b bundleOut
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &b) != nil || len(b.Entry) != 5 {
		t.Fatalf("batch: %d %s", resp.StatusCode, body)
	}
	for i, want := range []string{"403 Forbidden", "403 Forbidden", "403 Forbidden", "403 Forbidden", "404 Not Found"} {
		if got := b.Entry[i].Response.Status; got != want {
			t.Errorf("batch entry %d: %q, want %q", i, got, want)
		}
	}
	if !strings.Contains(string(b.Entry[0].Response.Outcome), "do not grant update on Observation") {
		t.Errorf("batch entry 0 outcome %s", b.Entry[0].Response.Outcome)
	}

	// A transaction fails whole, naming the entry.
	resp, body = post(tok, bundle("transaction", putPat, putObs))
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "insufficient_scope") ||
		!strings.Contains(string(body), "entry 1 (PUT Observation/o1): the access token's scopes do not grant update on Observation") {
		t.Errorf("transaction beyond the scopes: %d %q %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	// The operator credential loads data with $ingest, not with Bundles;
	// no credential at all is a 401.
	if resp, body := post(testAdminToken, bundle("transaction", putPat)); resp.StatusCode != http.StatusForbidden {
		t.Errorf("transaction with the operator credential: %d %s", resp.StatusCode, body)
	}
	if resp, body := post("", bundle("transaction", putPat)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("transaction without a token: %d %s", resp.StatusCode, body)
	}
}

func TestAPIReadBodyStopsAtTheLimit(t *testing.T) {
	for _, stream := range []bool{true, false} {
		app := fiber.New(fiber.Config{StreamRequestBody: stream, BodyLimit: 1 << 20})
		app.Post("/", func(c *fiber.Ctx) error {
			body, err := readBody(c, 100)
			if err != nil {
				checkProblem(t, err, wantErr{413, fhir.CodeTooCostly, []string{"larger than 100 bytes"}})
				return c.SendStatus(413)
			}
			return c.Send(body)
		})
		sizes := map[int]int{100: 200, 101: 413, 200 << 10: 413}
		if stream {
			sizes[4<<20] = 413 // beyond Fiber's BodyLimit: streamed, read only up to the limit
		}
		for size, want := range sizes {
			resp, err := app.Test(httptestRequest(strings.Repeat("x", size)), -1)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != want {
				t.Errorf("stream %v, %d bytes: %d, want %d", stream, size, resp.StatusCode, want)
			}
		}
	}
}

func httptestRequest(body string) *http.Request {
	req, _ := http.NewRequest("POST", "/", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	return req
}
