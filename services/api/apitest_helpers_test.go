package api

import (
	"errors"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// wantErr describes the *problem a call should end in.
type wantErr struct {
	status   int
	code     string
	contains []string // substrings the message must hold
}

// checkProblem asserts that err is a *problem shaped as w describes.
func checkProblem(t *testing.T, err error, w wantErr) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %d %s naming %q", w.status, w.code, w.contains)
	}
	var p *problem
	if !errors.As(err, &p) {
		t.Fatalf("error %v is a %T, want a *problem", err, err)
	}
	if p.status != w.status || p.code != w.code || p.severity != fhir.SeverityError {
		t.Errorf("problem %d %s/%s %q, want %d error/%s", p.status, p.severity, p.code, p.msg, w.status, w.code)
	}
	for _, s := range w.contains {
		if !strings.Contains(p.msg, s) {
			t.Errorf("problem message %q does not name %q", p.msg, s)
		}
	}
}
