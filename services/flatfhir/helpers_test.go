package flatfhir_test

import (
	"compress/gzip"
	"encoding/json"
	"io"
	"testing"
)

func gzipReader(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }

func idOf(t testing.TB, line []byte) string {
	t.Helper()
	var r struct{ ID string }
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatal(err)
	}
	return r.ID
}
