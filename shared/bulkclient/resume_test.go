package bulkclient

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDownloadToFileResumes: a download interrupted midway (a part file
// holding one whole line and half of the next) continues with a Range
// request from its last whole line; the file equals the server's, and a
// server that ignores Range has the file downloaded again whole.
func TestDownloadToFileResumes(t *testing.T) {
	content := `{"resourceType":"Patient","id":"a"}` + "\n" + `{"resourceType":"Patient","id":"b"}` + "\n" + `{"resourceType":"Patient","id":"c"}` + "\n"
	for _, tc := range []struct {
		name        string
		honourRange bool
	}{{"server honours Range", true}, {"server ignores Range", false}} {
		t.Run(tc.name, func(t *testing.T) {
			var ranges atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/fhir+ndjson")
				if r.Header.Get("Range") != "" {
					ranges.Add(1)
					if !tc.honourRange {
						r.Header.Del("Range")
					}
				}
				http.ServeContent(w, r, "f.ndjson", time.Time{}, strings.NewReader(content))
			}))
			defer srv.Close()
			dir := t.TempDir()
			path := filepath.Join(dir, "Patient-1.ndjson")
			cut := strings.Index(content, `"id":"b"`)
			if err := os.WriteFile(path+".part", []byte(content[:cut]), 0o644); err != nil {
				t.Fatal(err)
			}
			count := 3
			var written int64
			c := &Client{}
			n, resumed, err := c.DownloadToFile(t.Context(), File{Type: "Patient", URL: srv.URL + "/f", Count: &count}, false, path, func(b int64) { written += b })
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, []byte(content)) || n != 3 {
				t.Fatalf("the file: %d lines %q (%v), want the server's 3", n, got, err)
			}
			if ranges.Load() != 1 || resumed != tc.honourRange {
				t.Errorf("%d Range requests, resumed %v; want 1, %v", ranges.Load(), resumed, tc.honourRange)
			}
			if tc.honourRange && written != int64(len(content)-strings.Index(content, `{"resourceType":"Patient","id":"b"}`)) {
				t.Errorf("%d bytes fetched again, want only the two lines after the first", written)
			}
			if _, err := os.Stat(path + ".part"); !os.IsNotExist(err) {
				t.Errorf("the part stayed: %v", err)
			}
			// Done once, a file is not fetched again.
			before := ranges.Load()
			if n, _, err := c.DownloadToFile(t.Context(), File{Type: "Patient", URL: srv.URL + "/f", Count: &count}, false, path, nil); err != nil || n != 3 || ranges.Load() != before {
				t.Errorf("a second call: %d lines, %v", n, err)
			}
		})
	}
}

// TestDownloadToFileChecksTheCount: a file with fewer lines than the
// manifest says stays a part, and the call fails naming both counts.
func TestDownloadToFileChecksTheCount(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"a"}` + "\n"))
	}))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "Patient-1.ndjson")
	count := 2
	_, _, err := (&Client{}).DownloadToFile(t.Context(), File{Type: "Patient", URL: srv.URL, Count: &count}, false, path, nil)
	if err == nil || !strings.Contains(err.Error(), "1 lines, the manifest says 2") {
		t.Errorf("error %v, want one naming both counts", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a short file was kept as done: %v", err)
	}
}
