package compartment

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/sampledata"
)

// readNDJSON returns the lines of one gzipped NDJSON file.
func readNDJSON(tb testing.TB, path string) [][]byte {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	var lines [][]byte
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

// noPatient are the sample types that link to no patient.
var noPatient = []string{"Group", "Organization", "Practitioner", "Device"}

// TestCompartmentSampleData checks every resource of the real Synthea set
// (when it is found) and of the generator's data against the reference
// implementation.
func TestCompartmentSampleData(t *testing.T) {
	t.Run("synthea", func(t *testing.T) { checkSampleCompartments(t, sampledata.Synthea(t).Dir) })
	t.Run("generated", func(t *testing.T) { checkSampleCompartments(t, sampledata.Generated(t, 100).Dir) })
}

func checkSampleCompartments(t *testing.T, dir string) {
	files, err := filepath.Glob(filepath.Join(dir, "*.ndjson.gz"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no *.ndjson.gz files in %s", dir)
	}

	patients := map[string]bool{}
	patientFile := filepath.Join(dir, "Patient.ndjson.gz")
	for _, line := range readNDJSON(t, patientFile) {
		var p struct{ ID string }
		if err := json.Unmarshal(line, &p); err != nil || p.ID == "" {
			t.Fatalf("Patient line without id: %v", err)
		}
		patients[p.ID] = true
	}
	if len(patients) == 0 {
		t.Fatal("no patients")
	}

	seenTypes := map[string]int{}
	withResources := map[string]bool{} // patients with a non-Patient resource
	for _, file := range files {
		typ := strings.TrimSuffix(filepath.Base(file), ".ndjson.gz")
		lines := readNDJSON(t, file)
		seenTypes[typ] = len(lines)
		wantNone := slices.Contains(noPatient, typ)
		if wantNone == InCompartment(typ) {
			t.Errorf("%s: InCompartment = %v", typ, InCompartment(typ))
		}
		for i, line := range lines {
			var head struct{ ResourceType string }
			if err := json.Unmarshal(line, &head); err != nil || head.ResourceType != typ {
				t.Fatalf("%s line %d: resourceType %q, %v", typ, i+1, head.ResourceType, err)
			}
			ids, err := PatientIDs(typ, line)
			if err != nil {
				t.Fatalf("%s line %d: %v", typ, i+1, err)
			}
			if wantNone {
				if ids != nil {
					t.Fatalf("%s line %d: ids %q, want nil", typ, i+1, ids)
				}
				continue
			}
			if len(ids) == 0 {
				t.Fatalf("%s line %d: no patient ids", typ, i+1)
			}
			if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
				t.Fatalf("%s line %d: ids not sorted and unique: %q", typ, i+1, ids)
			}
			for _, id := range ids {
				if !patients[id] {
					t.Fatalf("%s line %d: id %q is not a Patient in Patient.ndjson.gz", typ, i+1, id)
				}
				if typ != "Patient" {
					withResources[id] = true
				}
			}
			want, err := slowPatientIDs(typ, line)
			if err != nil || !slices.Equal(ids, want) {
				t.Fatalf("%s line %d: ids %q, reference %q, %v", typ, i+1, ids, want, err)
			}
		}
	}
	for _, typ := range []string{"Patient", "Observation", "Claim", "ExplanationOfBenefit", "Encounter", "Group"} {
		if seenTypes[typ] == 0 {
			t.Errorf("no %s resources in %s", typ, dir)
		}
	}
	if len(withResources) != len(patients) {
		t.Errorf("%d of %d patients have resources in their compartment", len(withResources), len(patients))
	}
}

func loadObservations(b *testing.B) [][]byte {
	b.Helper()
	lines := readNDJSON(b, sampledata.Any(b).File("Observation"))
	if len(lines) == 0 {
		b.Fatal("no Observation lines")
	}
	return lines
}

func benchLines(b *testing.B, fn func(line []byte) (int, error)) {
	lines := loadObservations(b)
	total := 0
	for _, l := range lines {
		total += len(l)
	}
	b.SetBytes(int64(total / len(lines)))
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		n, err := fn(lines[i%len(lines)])
		if err != nil || n != 1 {
			b.Fatalf("line %d: %d ids, %v", i%len(lines), n, err)
		}
		i++
	}
}

// BenchmarkCompartmentPatientIDs measures PatientIDs on Synthea Observation lines.
func BenchmarkCompartmentPatientIDs(b *testing.B) {
	benchLines(b, func(line []byte) (int, error) {
		ids, err := PatientIDs("Observation", line)
		return len(ids), err
	})
}

// BenchmarkCompartmentRawMapBaseline is the map[string]json.RawMessage
// approach on the same lines, for comparison.
func BenchmarkCompartmentRawMapBaseline(b *testing.B) {
	benchLines(b, func(line []byte) (int, error) {
		var top map[string]json.RawMessage
		if err := json.Unmarshal(line, &top); err != nil {
			return 0, err
		}
		var ref struct{ Reference, Type string }
		if err := json.Unmarshal(top["subject"], &ref); err != nil {
			return 0, err
		}
		if _, ok := ReferencedPatientID(ref.Reference); ok {
			return 1, nil
		}
		return 0, nil
	})
}
