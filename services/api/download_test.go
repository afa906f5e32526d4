package api

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// TestAPIServesFilesStoredPlainOrCompressed: a file stored gzip-compressed
// (as writers store them) and one stored plain (as before, or the
// planner's) each come out as the same NDJSON to every kind of request:
// plain, gzip-accepting (the compressed one as stored, byte for byte),
// byte ranges over the NDJSON's bytes, and HEAD.
func TestAPIServesFilesStoredPlainOrCompressed(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t, func(c *Config) { c.Auth = false })
	var lines strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&lines, `{"resourceType":"Patient","id":"p%d","active":true}`+"\n", i)
	}
	ndjson := lines.String()
	jobs := streamsJobs(t, bus)
	job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "forms", SubmittedAt: time.Now(), BaseURL: base},
		Status: streams.JobComplete, TransactionTime: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	if err := jobs.Create(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	files, err := bus.js.ObjectStore(t.Context(), streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := files.PutString(t.Context(), streams.ObjectName("forms", "plain.ndjson"), ndjson); err != nil {
		t.Fatal(err)
	}
	var packed bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&packed, gzip.BestSpeed)
	_, _ = zw.Write([]byte(ndjson))
	_ = zw.Close()
	meta := jetstream.ObjectMeta{Name: streams.ObjectName("forms", "packed.ndjson"), Headers: nats.Header{
		streams.HeaderContentEncoding: []string{"gzip"},
		streams.HeaderIdentityLength:  []string{strconv.Itoa(len(ndjson))},
	}}
	if _, err := files.Put(t.Context(), meta, bytes.NewReader(packed.Bytes())); err != nil {
		t.Fatal(err)
	}
	// A raw client: no transparent decompression.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	get := func(method, url string, headers ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, url, nil)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	for _, name := range []string{"plain.ndjson", "packed.ndjson"} {
		url := base + "/files/forms/" + name
		t.Run(name, func(t *testing.T) {
			resp, b := get("GET", url)
			if resp.StatusCode != 200 || string(b) != ndjson || resp.Header.Get("Content-Encoding") != "" || resp.ContentLength != int64(len(ndjson)) {
				t.Errorf("plain GET: %d, %d bytes (Content-Length %d, Content-Encoding %q), want the %d NDJSON bytes",
					resp.StatusCode, len(b), resp.ContentLength, resp.Header.Get("Content-Encoding"), len(ndjson))
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/fhir+ndjson" {
				t.Errorf("Content-Type %q", ct)
			}
			resp, b = get("GET", url, "Accept-Encoding", "gzip")
			if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
				t.Fatalf("gzip GET: %d, Content-Encoding %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
			}
			if name == "packed.ndjson" && !bytes.Equal(b, packed.Bytes()) {
				t.Errorf("a file stored compressed was not sent as stored (%d bytes, stored %d)", len(b), packed.Len())
			}
			zr, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(zr); err != nil || string(got) != ndjson {
				t.Errorf("gzip GET decompresses to %d bytes (%v), want the NDJSON", len(got), err)
			}
			for rng, want := range map[string]string{
				"bytes=3-20":   ndjson[3:21],
				"bytes=-17":    ndjson[len(ndjson)-17:],
				"bytes=40000-": ndjson[40000:],
			} {
				resp, b := get("GET", url, "Range", rng, "Accept-Encoding", "gzip")
				if resp.StatusCode != 206 || string(b) != want || resp.Header.Get("Content-Encoding") != "" ||
					!strings.HasSuffix(resp.Header.Get("Content-Range"), "/"+strconv.Itoa(len(ndjson))) {
					t.Errorf("Range %s: %d %q %q (%d bytes), want the NDJSON's %d bytes", rng, resp.StatusCode,
						resp.Header.Get("Content-Range"), resp.Header.Get("Content-Encoding"), len(b), len(want))
				}
			}
			if resp, _ := get("GET", url, "Range", "bytes=9999999-"); resp.StatusCode != 416 || resp.Header.Get("Content-Range") != "bytes */"+strconv.Itoa(len(ndjson)) {
				t.Errorf("unsatisfiable range: %d %q", resp.StatusCode, resp.Header.Get("Content-Range"))
			}
			if resp, b := get("HEAD", url); resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(ndjson)) {
				t.Errorf("HEAD: %d, %d body bytes, Content-Length %d", resp.StatusCode, len(b), resp.ContentLength)
			}
		})
	}
}
