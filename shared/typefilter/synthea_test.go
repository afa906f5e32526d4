package typefilter

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/sampledata"
)

// readNDJSON returns the lines of a gzipped NDJSON file; a missing file
// fails the test.
func readNDJSON(tb testing.TB, path string) [][]byte {
	tb.Helper()
	fh, err := os.Open(path)
	if err != nil {
		tb.Fatalf("sample data: %v", err)
	}
	defer fh.Close()
	zr, err := gzip.NewReader(fh)
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	var lines [][]byte
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
			lines = append(lines, bytes.Clone(line))
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	return lines
}

// sampleSets runs check on the real Synthea set (when it is found) and on
// the generator's data.
func sampleSets(t *testing.T, check func(t *testing.T, set sampledata.Set)) {
	t.Run("synthea", func(t *testing.T) { check(t, sampledata.Synthea(t)) })
	t.Run("generated", func(t *testing.T) { check(t, sampledata.Generated(t, 100)) })
}

// TestTypeFilterSampleObservationCode checks Observation?code=loinc|8302-2
// against the sample Observation files, line by line, with the expected
// result computed independently with encoding/json.
func TestTypeFilterSampleObservationCode(t *testing.T) {
	sampleSets(t, checkObservationCode)
}

func checkObservationCode(t *testing.T, set sampledata.Set) {
	lines := readNDJSON(t, set.File("Observation"))
	f := mustParse(t, "Observation?code=http://loinc.org|8302-2")
	want, got := 0, 0
	for i, line := range lines {
		var obs struct {
			Code struct {
				Coding []struct{ System, Code string }
			}
		}
		if err := json.Unmarshal(line, &obs); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		expect := false
		for _, c := range obs.Code.Coding {
			if c.System == "http://loinc.org" && c.Code == "8302-2" {
				expect = true
			}
		}
		ok, err := f.Match("Observation", line)
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if ok != expect {
			t.Errorf("line %d: Match = %v, want %v", i+1, ok, expect)
		}
		if expect {
			want++
		}
		if ok {
			got++
		}
	}
	if want == 0 || got != want {
		t.Fatalf("matched %d of %d lines, want %d (> 0)", got, len(lines), want)
	}
	t.Logf("%d of %d Observations have http://loinc.org|8302-2", got, len(lines))
}

// TestTypeFilterSampleShapes evaluates every supported parameter of every
// type in the samples with :missing=false, and with a value, on every
// resource: the real R4 shapes must never be reported as malformed.
func TestTypeFilterSampleShapes(t *testing.T) {
	sampleSets(t, checkShapes)
}

func checkShapes(t *testing.T, set sampledata.Set) {
	files := set.Files(t)
	values := map[string]string{
		kindToken: "x", kindReference: "x", kindDate: "ge2000-01-01", kindString: "x",
	}
	for _, file := range files {
		typ := strings.TrimSuffix(filepath.Base(file), ".ndjson.gz")
		params := Supported()[typ]
		if params == nil {
			t.Fatalf("%s: not a resource type", file)
		}
		names := make([]string, 0, len(params))
		for name := range params {
			names = append(names, name)
		}
		sort.Strings(names)
		var subs []string
		for _, name := range names {
			subs = append(subs, typ+"?"+name+":missing=false", typ+"?"+name+"="+values[params[name]])
		}
		// Each subquery alone, so that OR short-circuiting hides nothing.
		filters := make([]Filter, len(subs))
		for i, s := range subs {
			filters[i] = mustParse(t, s)
		}
		lines := readNDJSON(t, file)
		if len(lines) > 3000 && testing.Short() {
			lines = lines[:3000]
		}
		present := make([]int, len(subs))
		for i, line := range lines {
			for k, f := range filters {
				ok, err := f.Match(typ, line)
				if err != nil {
					t.Fatalf("%s line %d, %s: %v", typ, i+1, subs[k], err)
				}
				if ok {
					present[k]++
				}
			}
		}
		for k, s := range subs {
			if strings.HasSuffix(s, ":missing=false") {
				t.Logf("%-55s %5d of %d", s, present[k], len(lines))
			}
		}
	}
}

// BenchmarkTypeFilterMatch matches sample Observations against a
// typical filter: two codes with a date range and a patient, or a category.
func BenchmarkTypeFilterMatch(b *testing.B) {
	lines := readNDJSON(b, sampledata.Any(b).File("Observation"))
	if len(lines) > 4096 {
		lines = lines[:4096]
	}
	f, err := Parse([]string{
		"Observation?code=http%3A%2F%2Floinc.org%7C8302-2%2Chttp%3A%2F%2Floinc.org%7C29463-7&date=ge2010-01-01&date=lt2020-01-01&patient=Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2",
		"Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory&status=final",
	})
	if err != nil {
		b.Fatal(err)
	}
	var bytesTotal int
	for _, l := range lines {
		bytesTotal += len(l)
	}
	b.SetBytes(int64(bytesTotal / len(lines)))
	b.ReportAllocs()
	i, matched := 0, 0
	for b.Loop() {
		ok, err := f.Match("Observation", lines[i])
		if err != nil {
			b.Fatal(err)
		}
		if ok {
			matched++
		}
		if i++; i == len(lines) {
			i = 0
		}
	}
	_ = matched
}
