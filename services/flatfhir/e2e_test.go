package flatfhir_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/bulkclient"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/sampledata"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// startEngine runs every service in-process on real NATS and ClickHouse
// with small tasks and files, so that splitting and rollover happen.
func startEngine(t testing.TB) string {
	t.Helper()
	return startEngineWith(t, nil)
}

// startEngineWith lets a test adjust the tuning first.
func startEngineWith(t testing.TB, adjust func(*flatfhir.Tuning)) string {
	t.Helper()
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 2, Replicas: 1, PollRate: 2,
	}
	pc := planner.DefaultConfig()
	pc.TaskRows, pc.MaxFileResources = 4000, 1500
	wc := writer.DefaultConfig()
	wc.CheckEvery = 200 * time.Millisecond
	tune := flatfhir.Tuning{Planner: pc, Writer: wc, Ingester: ingester.DefaultConfig()}
	if adjust != nil {
		adjust(&tune)
	}
	base, stop := runEngine(t, cfg, tune)
	t.Cleanup(stop)
	return base
}

// runEngine starts the engine and returns its base URL and a stop that
// shuts it down and checks it stopped cleanly.
func runEngine(t testing.TB, cfg flatfhir.Config, tune flatfhir.Tuning) (base string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e, err := flatfhir.Start(ctx, cfg, tune, testenv.Logger(t))
	if err != nil {
		cancel()
		t.Fatalf("start engine: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	return "http://" + e.APIAddr(), func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine stopped with: %v", err)
		}
	}
}

func do(t testing.TB, method, url string, body io.Reader, headers ...string) (*http.Response, []byte) {
	t.Helper()
	return doWith(t, &http.Client{Timeout: 60 * time.Second}, method, url, body, headers...)
}

// doWith sends a request with client and reads the whole answer; headers
// are name, value pairs (added, so a name may repeat).
func doWith(t testing.TB, client *http.Client, method, url string, body io.Reader, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// ingestSample ingests the sample data tests run on (the Synthea set
// where it is found, else generated patients) and returns the input
// resources by "Type/id".
func ingestSample(t *testing.T, base string) map[string]map[string]any {
	t.Helper()
	return ingestSet(t, base, sampledata.Any(t))
}

// ingestSet posts every file of set in one gzip request (a multi-member
// gzip body) and returns the input resources by "Type/id".
func ingestSet(t *testing.T, base string, set sampledata.Set) map[string]map[string]any {
	t.Helper()
	files := set.Files(t)
	var body bytes.Buffer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		body.Write(b)
	}
	resp, out := do(t, "POST", base+"/$ingest", bytes.NewReader(body.Bytes()),
		"Content-Type", "application/fhir+ndjson", "Content-Encoding", "gzip")
	if resp.StatusCode != 200 {
		t.Fatalf("ingest: %d %s", resp.StatusCode, out)
	}
	want := map[string]map[string]any{}
	for _, f := range files {
		for _, line := range gunzipLines(t, f) {
			var r map[string]any
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatal(err)
			}
			want[r["resourceType"].(string)+"/"+r["id"].(string)] = r
		}
	}
	if !strings.Contains(string(out), fmt.Sprintf("accepted %d resources", len(want))) {
		t.Fatalf("ingest outcome %s does not report %d resources", out, len(want))
	}
	return want
}

// manifest is a complete export's manifest as the strict client reads it.
type manifest = bulkclient.Manifest

// kickoff starts an export and returns its status URL.
func kickoff(t *testing.T, url string) string {
	t.Helper()
	resp, body := do(t, "GET", url, nil, "Accept", "application/fhir+json", "Prefer", "respond-async")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off %s: %d %s", url, resp.StatusCode, body)
	}
	loc := resp.Header.Get("Content-Location")
	if !strings.HasPrefix(loc, "http://") {
		t.Fatalf("Content-Location %q is not absolute", loc)
	}
	return loc
}

// await polls the status URL as a strict client does (every body parsed,
// Retry-After honoured), until the manifest arrives; it returns the
// manifest and the complete-status answer as read once more.
func await(t *testing.T, status string, headers ...string) (manifest, *http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c := &bulkclient.Client{}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Authorization" {
			tok := strings.TrimPrefix(headers[i+1], "Bearer ")
			c.Token = func(context.Context) (string, error) { return tok, nil }
		}
	}
	var last string
	c.OnProgress = func(p bulkclient.Progress) { last = p.XProgress }
	m, _, err := c.Await(ctx, status)
	if err != nil {
		t.Fatalf("await %s: %v (last X-Progress %q)", status, err, last)
	}
	resp, body := do(t, "GET", status, nil, append([]string{"Accept", "application/json"}, headers...)...)
	return m, resp, body
}

// typeCounts counts the input resources of each of types.
func typeCounts(input map[string]map[string]any, types ...string) map[string]int {
	out := map[string]int{}
	for key := range input {
		typ, _, _ := strings.Cut(key, "/")
		for _, want := range types {
			if typ == want {
				out[typ]++
			}
		}
	}
	return out
}

func gunzipLines(t testing.TB, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzipReader(f)
	if err != nil {
		t.Fatal(err)
	}
	return splitLines(t, zr)
}

func splitLines(t testing.TB, r io.Reader) [][]byte {
	t.Helper()
	var out [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) > 0 {
			out = append(out, append([]byte(nil), sc.Bytes()...))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestE2ESystemExportReturnsEveryResourceExactlyOnce is the round trip:
// every resource of the real Synthea set (whenever it is found) and of the
// generator's data comes back exactly once, equal to its input apart from
// meta.
func TestE2ESystemExportReturnsEveryResourceExactlyOnce(t *testing.T) {
	t.Run("synthea", func(t *testing.T) { roundTrip(t, sampledata.Synthea(t)) })
	t.Run("generated", func(t *testing.T) { roundTrip(t, sampledata.Generated(t, sampledata.GeneratedPatients)) })
}

func roundTrip(t *testing.T, set sampledata.Set) {
	base := startEngine(t)
	checkRoundTrip(t, base, ingestSet(t, base, set))
}

// checkRoundTrip exports everything from base and checks that the export
// returns each resource of want once, as ingested apart from meta, in
// files that roll over at 1,500 resources.
func checkRoundTrip(t *testing.T, base string, want map[string]map[string]any) {
	t.Helper()

	// Kick-off right after the ingest returned: read-your-writes.
	status := kickoff(t, base+"/$export")
	m, resp, raw := await(t, status)

	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("manifest Content-Type %q, want application/json", ct)
	}
	if _, err := http.ParseTime(resp.Header.Get("Expires")); err != nil {
		t.Errorf("Expires %q is not an HTTP date", resp.Header.Get("Expires"))
	}
	var keys map[string]json.RawMessage
	_ = json.Unmarshal(raw, &keys)
	for _, k := range []string{"transactionTime", "request", "requiresAccessToken", "output", "error"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("manifest lacks %q: %s", k, raw)
		}
	}
	tt, err := fhir.ParseInstant(m.TransactionTime)
	if err != nil {
		t.Errorf("transactionTime: %v", err)
	}
	if m.Request != base+"/$export" {
		t.Errorf("request = %q, want %q", m.Request, base+"/$export")
	}
	if len(m.Error) != 0 {
		t.Errorf("error = %s, want []", keys["error"])
	}

	got := map[string]int{}
	perType := map[string]int{}
	files := map[string]int{}
	for _, o := range m.Output {
		if o.Count == nil {
			t.Fatalf("output %s has no count", o.URL)
		}
		if !strings.HasPrefix(o.URL, base+"/") {
			t.Fatalf("output url %q is not absolute on the base", o.URL)
		}
		resp, body := do(t, "GET", o.URL, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/fhir+ndjson" {
			t.Fatalf("GET %s: %d %q", o.URL, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		lines := splitLines(t, bytes.NewReader(body))
		if len(lines) != *o.Count {
			t.Errorf("%s: count %d, file has %d lines", o.URL, *o.Count, len(lines))
		}
		files[o.Type]++
		for _, line := range lines {
			var r map[string]any
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("%s: invalid JSON line: %v", o.URL, err)
			}
			if r["resourceType"] != o.Type {
				t.Fatalf("%s of type %s holds a %v", o.URL, o.Type, r["resourceType"])
			}
			key := o.Type + "/" + r["id"].(string)
			got[key]++
			perType[o.Type]++
			meta, _ := r["meta"].(map[string]any)
			lu, err := fhir.ParseInstant(fmt.Sprint(meta["lastUpdated"]))
			if err != nil || lu.After(tt) || meta["versionId"] == nil {
				t.Fatalf("%s: meta %v not stamped at or before transactionTime %s", key, meta, m.TransactionTime)
			}
			delete(r, "meta")
			if w, ok := want[key]; !ok {
				t.Fatalf("%s exported but never ingested", key)
			} else if !reflect.DeepEqual(w, r) {
				t.Fatalf("%s differs from the input apart from meta", key)
			}
		}
	}
	for key := range want {
		if got[key] != 1 {
			t.Errorf("%s exported %d times, want once", key, got[key])
		}
	}
	if files["Observation"] < 2 {
		t.Errorf("%d Observations with 1,500 per file landed in %d files: no rollover", perType["Observation"], files["Observation"])
	}
	wantPerType := map[string]int{}
	for key := range want {
		wantPerType[strings.SplitN(key, "/", 2)[0]]++
	}
	if !reflect.DeepEqual(perType, wantPerType) {
		t.Errorf("per-type counts %v, want %v", perType, wantPerType)
	}
}

func TestE2EKickoffParameters(t *testing.T) {
	base := startEngine(t)
	input := ingestSample(t, base)
	h := []string{"Accept", "application/fhir+json", "Prefer", "respond-async"}

	t.Run("type filter exports only the listed types", func(t *testing.T) {
		m, _, _ := await(t, kickoff(t, base+"/$export?_type=Patient&_type=Practitioner,Patient"))
		counts := map[string]int{}
		for _, o := range m.Output {
			counts[o.Type] += *o.Count
		}
		if want := typeCounts(input, "Patient", "Practitioner"); !reflect.DeepEqual(counts, want) {
			t.Errorf("counts %v, want %v", counts, want)
		}
	})
	for _, f := range []string{"application%2Ffhir%2Bndjson", "application/fhir+ndjson", "application/ndjson", "ndjson"} {
		t.Run("output format "+f, func(t *testing.T) {
			kickoff(t, base+"/$export?_type=Patient&_outputFormat="+f)
		})
	}
	t.Run("since with an offset", func(t *testing.T) {
		kickoff(t, base+"/$export?_type=Patient&_since=2020-01-01T00:00:00%2B05:00")
	})
	bad := map[string]string{
		"unknown type":      "_type=Patiant",
		"unsupported param": "_foo=bar",
		"bad since":         "_since=yesterday",
		"future since":      "_since=2999-01-01T00:00:00Z",
		"twice since":       "_since=2020-01-01T00:00:00Z&_since=2021-01-01T00:00:00Z",
		"csv format":        "_outputFormat=text/csv",
	}
	for name, q := range bad {
		t.Run("refuses "+name, func(t *testing.T) {
			resp, body := do(t, "GET", base+"/$export?"+q, nil, h...)
			var oo fhir.OperationOutcome
			if resp.StatusCode != 400 || json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
				t.Errorf("%s: %d %s, want 400 OperationOutcome", q, resp.StatusCode, body)
			}
			if resp.Header.Get("Content-Type") != "application/fhir+json" {
				t.Errorf("%s: Content-Type %q", q, resp.Header.Get("Content-Type"))
			}
		})
	}
	t.Run("lenient ignores and reports", func(t *testing.T) {
		resp, body := do(t, "GET", base+"/$export?_type=Patient&_foo=bar", nil, "Accept", "application/fhir+json", "Prefer", "respond-async, handling=lenient")
		if resp.StatusCode != 202 {
			t.Fatalf("lenient kick-off: %d %s", resp.StatusCode, body)
		}
		m, _, _ := await(t, resp.Header.Get("Content-Location"))
		if len(m.Error) != 1 {
			t.Fatalf("error = %d entries, want 1 file listing the ignored parameter", len(m.Error))
		}
		item := m.Error[0]
		r, b := do(t, "GET", item.URL, nil)
		if r.StatusCode != 200 || item.Type != "OperationOutcome" || !strings.Contains(string(b), "_foo") {
			t.Errorf("error file %s: %d %s", item.URL, r.StatusCode, b)
		}
	})
	t.Run("gzip download when asked", func(t *testing.T) {
		m, _, _ := await(t, kickoff(t, base+"/$export?_type=Patient"))
		plain, want := do(t, "GET", m.Output[0].URL, nil)
		resp, body := do(t, "GET", m.Output[0].URL, nil, "Accept-Encoding", "gzip, deflate, br, identity")
		if plain.Header.Get("Content-Encoding") != "" || resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("Content-Encoding plain %q, gzip-accepting %q", plain.Header.Get("Content-Encoding"), resp.Header.Get("Content-Encoding"))
		}
		zr, err := gzipReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(got, want) || resp.Header.Get("Content-Type") != "application/fhir+ndjson" {
			t.Errorf("gzip download differs from the plain one (%d vs %d bytes, %v)", len(got), len(want), err)
		}
	})
	t.Run("byte ranges", func(t *testing.T) {
		m, _, _ := await(t, kickoff(t, base+"/$export?_type=Patient&_outputFormat=application%2Ffhir%2Bndjson&_since=2000-01-01T00:00:00Z"))
		url := m.Output[0].URL
		_, full := do(t, "GET", url, nil)
		n := len(full)
		cases := []struct {
			rng          string
			status       int
			want, crange string
		}{
			{"bytes=10-19", 206, string(full[10:20]), fmt.Sprintf("bytes 10-19/%d", n)},
			{"bytes=-5", 206, string(full[n-5:]), fmt.Sprintf("bytes %d-%d/%d", n-5, n-1, n)},
			{fmt.Sprintf("bytes=%d-", n-3), 206, string(full[n-3:]), fmt.Sprintf("bytes %d-%d/%d", n-3, n-1, n)},
			{fmt.Sprintf("bytes=%d-", n+10), 416, "", fmt.Sprintf("bytes */%d", n)},
			{"bytes=0-1,5-6", 200, string(full), ""},
		}
		for _, c := range cases {
			resp, body := do(t, "GET", url, nil, "Range", c.rng)
			if resp.StatusCode != c.status || resp.Header.Get("Content-Range") != c.crange || (c.status != 416 && string(body) != c.want) {
				t.Errorf("Range %s: %d %q (%d bytes), want %d %q", c.rng, resp.StatusCode, resp.Header.Get("Content-Range"), len(body), c.status, c.crange)
			}
		}
	})
	t.Run("the same running export is refused with 429", func(t *testing.T) {
		url := base + "/$export?_type=Observation&_outputFormat=ndjson"
		status := kickoff(t, url)
		resp, body := do(t, "GET", url, nil, h...)
		if resp.StatusCode == http.StatusAccepted {
			// The first finished in between: that is allowed; nothing to check.
			t.Skip("the first export finished before the second kick-off")
		}
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "OperationOutcome") {
			t.Fatalf("second identical kick-off: %d %q %s, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		await(t, status)
		kickoff(t, url) // once the first is done, the same request is welcome again
	})
	t.Run("polling too often gets 429", func(t *testing.T) {
		status := kickoff(t, base+"/$export?_type=Patient&_outputFormat=application/ndjson")
		throttled := false
		for i := 0; i < 60 && !throttled; i++ {
			resp, body := do(t, "GET", status, nil)
			if resp.StatusCode == http.StatusTooManyRequests {
				throttled = true
				if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "throttled") {
					t.Errorf("429 without Retry-After or throttled OperationOutcome: %v %s", resp.Header, body)
				}
			}
		}
		if !throttled {
			t.Error("60 back-to-back polls were all answered; want 429 past the burst")
		}
	})
	t.Run("delete then 404", func(t *testing.T) {
		status := kickoff(t, base+"/$export?_type=Patient")
		m, _, _ := await(t, status)
		resp, body := do(t, "DELETE", status, nil)
		if resp.StatusCode != 202 {
			t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
		}
		for _, u := range []string{status, m.Output[0].URL} {
			resp, body = do(t, "GET", u, nil)
			var oo fhir.OperationOutcome
			if resp.StatusCode != 404 || json.Unmarshal(body, &oo) != nil || len(oo.Issue) == 0 {
				t.Errorf("GET %s after DELETE: %d %s, want 404 OperationOutcome", u, resp.StatusCode, body)
			}
		}
	})
}

func TestE2EIngestRefusesBadLineAndAppliesNothing(t *testing.T) {
	base := startEngine(t)
	body := `{"resourceType":"Patient","id":"ok1"}
{"resourceType":"Patient","id":"ok2"}
{"resourceType":"Patient","id":"bad/id"}
`
	resp, out := do(t, "POST", base+"/$ingest", strings.NewReader(body), "Content-Type", "application/fhir+ndjson")
	if resp.StatusCode != 400 || !strings.Contains(string(out), "line 3") {
		t.Fatalf("bad ingest: %d %s, want 400 naming line 3", resp.StatusCode, out)
	}
	resp, out = do(t, "POST", base+"/$ingest", strings.NewReader(`{"resourceType":"Patient","id":"p9"}`), "Content-Type", "text/plain")
	if resp.StatusCode != 415 {
		t.Errorf("text/plain ingest: %d %s, want 415", resp.StatusCode, out)
	}
	m, _, _ := await(t, kickoff(t, base+"/$export"))
	if len(m.Output) != 0 {
		t.Errorf("a refused ingest applied something: %+v", m.Output)
	}
	_ = streams.OpPut
}
