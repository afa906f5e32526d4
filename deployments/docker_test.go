package deployments_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

// TestDockerfilesBuildTheWorkspace checks what a docker build would find
// out first: the build stage runs go mod download at the root of the
// workspace, which fails unless every module go.work uses has its go.mod
// and go.sum copied in before, and then builds a package that must exist.
func TestDockerfilesBuildTheWorkspace(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	work, err := modfile.ParseWork("go.work", b, nil)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "deployments", "*", "Dockerfile"))
	if len(files) < 5 {
		t.Fatalf("%d Dockerfiles, want one per role and one for the whole engine", len(files))
	}
	build := regexp.MustCompile(`go build .* (\./\S+)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		for _, use := range work.Use {
			dir := strings.TrimPrefix(use.Path, "./")
			if !strings.Contains(text, "COPY "+dir+"/go.* "+dir+"/\n") {
				t.Errorf("%s: go mod download would fail: it does not copy %s/go.* (go.work uses %s)", f, dir, use.Path)
			}
		}
		m := build.FindStringSubmatch(text)
		if m == nil {
			t.Errorf("%s builds no package", f)
			continue
		}
		if _, err := os.Stat(filepath.Join(root, m[1])); err != nil {
			t.Errorf("%s builds %s: %v", f, m[1], err)
		}
	}
}
