// Package sampledata finds the realistic FHIR R4 data tests run on.
//
// The real Synthea set (100 patients, one gzipped NDJSON file per type and
// a Group of all of them) lives beside a checkout, in
// ../shared/data/synthea-100, or where FLATFHIR_SYNTHEA_DIR points; it is
// never copied into the repository. A fresh clone has no such folder, so
// tests that only need realistic data take [Any]: the Synthea set when it
// is found, else the project's own deterministic generator (shared/synth)
// written out in the same layout. Tests that are about the Synthea set
// itself take [Synthea], which skips when the set is absent, unless
// FLATFHIR_REQUIRE_SYNTHEA is set (CI sets it): then a missing set fails,
// so the Synthea round trip can never be skipped silently where it should run.
package sampledata

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/flatfhir/flatfhir/shared/synth"
)

const (
	// DirEnv names the Synthea set's folder, overriding the default.
	DirEnv = "FLATFHIR_SYNTHEA_DIR"
	// RequireEnv names the variable that, set to anything but "" or "0", makes a missing
	// Synthea set a test failure instead of a fallback or a skip.
	RequireEnv = "FLATFHIR_REQUIRE_SYNTHEA"
	// GeneratedPatients is how many patients [Generated] makes for [Any]:
	// as many as the Synthea set holds.
	GeneratedPatients = 100
)

// Set is a folder of sample data: one <Type>.ndjson.gz per resource type.
type Set struct {
	Dir string
	// Synthea is true for the real Synthea set, false for generated data.
	Synthea bool
}

// Files are the set's gzipped NDJSON files, sorted.
func (s Set) Files(tb testing.TB) []string {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(s.Dir, "*.ndjson.gz"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no *.ndjson.gz files in %s (%v)", s.Dir, err)
	}
	return files
}

// File is the set's file of one resource type.
func (s Set) File(typ string) string { return filepath.Join(s.Dir, typ+".ndjson.gz") }

// String names the set in test logs.
func (s Set) String() string {
	if s.Synthea {
		return "synthea " + s.Dir
	}
	return "generated " + s.Dir
}

// Required reports whether the environment demands the Synthea set.
func Required() bool {
	v := os.Getenv(RequireEnv)
	return v != "" && v != "0"
}

// SyntheaDir is where the Synthea set is looked for: FLATFHIR_SYNTHEA_DIR,
// else ../shared/data/synthea-100 beside the repository.
func SyntheaDir() string {
	if d := os.Getenv(DirEnv); d != "" {
		return d
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return ""
	}
	// <repo>/shared/sampledata/sampledata.go -> <repo>/../shared/data/synthea-100
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "data", "synthea-100")
}

// find returns the Synthea set, ok false when it is not there.
func find() (Set, bool) {
	dir := SyntheaDir()
	if dir == "" {
		return Set{}, false
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*.ndjson.gz")); len(files) == 0 {
		return Set{}, false
	}
	return Set{Dir: dir, Synthea: true}, true
}

// missing fails the test when the Synthea set is required.
func missing(tb testing.TB) {
	tb.Helper()
	if Required() {
		tb.Fatalf("the Synthea sample is required (%s is set) but has no *.ndjson.gz files at %s; set %s to its folder",
			RequireEnv, SyntheaDir(), DirEnv)
	}
}

// Synthea returns the Synthea set. When it is absent the test is skipped,
// or fails when FLATFHIR_REQUIRE_SYNTHEA is set.
func Synthea(tb testing.TB) Set {
	tb.Helper()
	s, ok := find()
	if !ok {
		missing(tb)
		tb.Skipf("the Synthea sample is not at %s (set %s to run this test)", SyntheaDir(), DirEnv)
	}
	return s
}

// Any returns the Synthea set when it is found, else [GeneratedPatients]
// generated patients. A missing set fails the test when it is required.
func Any(tb testing.TB) Set {
	tb.Helper()
	if s, ok := find(); ok {
		return s
	}
	missing(tb)
	return Generated(tb, GeneratedPatients)
}

// Generated writes the generator's data for patients patients (seed 1, one
// Group of all of them) into a temporary folder removed with the test.
func Generated(tb testing.TB, patients int) Set {
	tb.Helper()
	dir := tb.TempDir()
	if err := write(dir, patients); err != nil {
		tb.Fatalf("generate sample data: %v", err)
	}
	return Set{Dir: dir}
}

// typeFile is one type's output file while it is written.
type typeFile struct {
	f  *os.File
	bw *bufio.Writer
	zw *gzip.Writer
}

func write(dir string, patients int) (err error) {
	out := map[string]*typeFile{}
	defer func() {
		for _, tf := range out {
			if cerr := tf.zw.Close(); err == nil {
				err = cerr
			}
			if ferr := tf.bw.Flush(); err == nil {
				err = ferr
			}
			if cerr := tf.f.Close(); err == nil {
				err = cerr
			}
		}
	}()
	cfg := synth.Config{Patients: patients, Seed: 1, GroupSize: patients}
	return synth.Generate(context.Background(), cfg, func(typ string, body []byte) error {
		tf := out[typ]
		if tf == nil {
			f, err := os.Create(filepath.Join(dir, typ+".ndjson.gz"))
			if err != nil {
				return fmt.Errorf("create %s file: %w", typ, err)
			}
			bw := bufio.NewWriter(f)
			tf = &typeFile{f: f, bw: bw, zw: gzip.NewWriter(bw)}
			out[typ] = tf
		}
		if _, err := tf.zw.Write(body); err != nil {
			return err
		}
		_, err := tf.zw.Write([]byte{'\n'})
		return err
	})
}

// Seeds returns up to perType lines of each resource type of [Any]: real
// resources for the seed corpora of fuzz targets, read at run time (the
// Synthea set is never copied into the repository).
func Seeds(tb testing.TB, perType int) [][]byte {
	tb.Helper()
	var out [][]byte
	for _, file := range Any(tb).Files(tb) {
		lines, err := firstLines(file, perType)
		if err != nil {
			tb.Fatalf("read %s: %v", file, err)
		}
		out = append(out, lines...)
	}
	return out
}

// firstLines reads the first n lines of a gzipped NDJSON file.
func firstLines(file string, n int) ([][]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	var out [][]byte
	for len(out) < n && sc.Scan() {
		out = append(out, bytes.Clone(sc.Bytes()))
	}
	return out, sc.Err()
}
