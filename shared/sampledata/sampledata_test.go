package sampledata_test

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"os"
	"testing"

	"github.com/flatfhir/flatfhir/shared/sampledata"
)

// lines reads one gzipped NDJSON file into decoded resources.
func lines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSampleDataFallsBackToTheGenerator: without the Synthea set, Any gives
// the generator's patients in the Synthea layout, with one Group of all of
// them, the same bytes every time.
func TestSampleDataFallsBackToTheGenerator(t *testing.T) {
	t.Setenv(sampledata.DirEnv, t.TempDir()) // an empty folder: no Synthea set
	t.Setenv(sampledata.RequireEnv, "")
	set := sampledata.Any(t)
	if set.Synthea {
		t.Fatalf("Any = %s, want generated data", set)
	}
	patients := lines(t, set.File("Patient"))
	if len(patients) != sampledata.GeneratedPatients {
		t.Fatalf("%d patients, want %d", len(patients), sampledata.GeneratedPatients)
	}
	groups := lines(t, set.File("Group"))
	if len(groups) != 1 {
		t.Fatalf("%d Groups, want 1", len(groups))
	}
	if members, _ := groups[0]["member"].([]any); len(members) != len(patients) {
		t.Errorf("the Group has %d members, want all %d patients", len(members), len(patients))
	}
	if n := len(set.Files(t)); n < 8 {
		t.Errorf("%d type files, want the generator's types", n)
	}
	again := sampledata.Generated(t, sampledata.GeneratedPatients)
	if a, b := lines(t, set.File("Observation")), lines(t, again.File("Observation")); len(a) != len(b) || a[len(a)-1]["id"] != b[len(b)-1]["id"] {
		t.Errorf("two generations differ: %d and %d Observations", len(a), len(b))
	}
}

// TestSampleDataFindsTheSyntheaSetWhereTheEnvironmentPoints: a folder of
// <Type>.ndjson.gz files named by FLATFHIR_SYNTHEA_DIR is the Synthea set.
func TestSampleDataFindsTheSyntheaSetWhereTheEnvironmentPoints(t *testing.T) {
	gen := sampledata.Generated(t, 3)
	t.Setenv(sampledata.DirEnv, gen.Dir)
	if set := sampledata.Any(t); !set.Synthea || set.Dir != gen.Dir {
		t.Errorf("Any = %s, want the folder %s", set, gen.Dir)
	}
	if set := sampledata.Synthea(t); set.Dir != gen.Dir {
		t.Errorf("Synthea = %s, want the folder %s", set, gen.Dir)
	}
}
