package flatfhir_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
)

// TestE2EFilesStoredCompressed: with writers storing files gzip-compressed
// (FLATFHIR_FILE_COMPRESSION=gzip, the default), an export reads the same
// to every client: plain, gzip-accepting (the stored bytes) and by byte
// ranges.
func TestE2EFilesStoredCompressed(t *testing.T) {
	base := startEngineWith(t, func(tu *flatfhir.Tuning) { tu.Writer.CompressFiles = true })
	want := ingestSample(t, base)
	m, _, _ := await(t, kickoff(t, base+"/$export"))
	// No transparent decompression: the test sees what the server sends.
	raw := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableCompression: true}}
	do := func(t *testing.T, method, url string, body io.Reader, headers ...string) (*http.Response, []byte) {
		t.Helper()
		return doWith(t, raw, method, url, body, headers...)
	}
	got := 0
	for _, o := range m.Output {
		resp, plain := do(t, "GET", o.URL, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || resp.ContentLength != int64(len(plain)) {
			t.Fatalf("%s: %d, Content-Encoding %q, Content-Length %d for %d bytes", o.URL, resp.StatusCode, resp.Header.Get("Content-Encoding"), resp.ContentLength, len(plain))
		}
		lines := splitLines(t, bytes.NewReader(plain))
		if len(lines) != *o.Count {
			t.Errorf("%s: %d lines, manifest count %d", o.URL, len(lines), *o.Count)
		}
		got += len(lines)
		resp, packed := do(t, "GET", o.URL, nil, "Accept-Encoding", "gzip")
		if resp.Header.Get("Content-Encoding") != "gzip" || len(packed) >= len(plain) && len(plain) > 4096 {
			t.Errorf("%s: gzip download %q of %d bytes for %d plain", o.URL, resp.Header.Get("Content-Encoding"), len(packed), len(plain))
		}
		zr, err := gzipReader(bytes.NewReader(packed))
		if err != nil {
			t.Fatal(err)
		}
		if unpacked, err := io.ReadAll(zr); err != nil || !bytes.Equal(unpacked, plain) {
			t.Errorf("%s: the gzip download decompresses to %d bytes (%v), the plain one has %d", o.URL, len(unpacked), err, len(plain))
		}
		if n := len(plain); n > 30 {
			resp, part := do(t, "GET", o.URL, nil, "Range", "bytes=10-29", "Accept-Encoding", "gzip")
			if resp.StatusCode != 206 || string(part) != string(plain[10:30]) || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 10-29/%d", n) {
				t.Errorf("%s: Range 10-29: %d %q %q", o.URL, resp.StatusCode, resp.Header.Get("Content-Range"), part)
			}
		}
	}
	if got != len(want) {
		t.Errorf("exported %d resources, ingested %d", got, len(want))
	}
	if !strings.HasPrefix(m.TransactionTime, "20") {
		t.Errorf("transactionTime %q", m.TransactionTime)
	}
}
