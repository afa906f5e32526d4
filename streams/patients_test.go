package streams_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/flatfhir/flatfhir/streams"
)

// TestPatientsRoundTrip: the planner's patient list reads back sorted and
// without duplicates, an empty list stays an empty list (a Group without
// patient members), and a job without one says so.
func TestPatientsRoundTrip(t *testing.T) {
	_, js := ensured(t)
	ctx := t.Context()
	files, err := js.ObjectStore(ctx, streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	if err := streams.PutPatients(ctx, files, "j1", []string{"p3", "p1", "p2", "p1"}); err != nil {
		t.Fatal(err)
	}
	if got, err := streams.LoadPatients(ctx, files, "j1"); err != nil || !slices.Equal(got, []string{"p1", "p2", "p3"}) {
		t.Errorf("LoadPatients = %q, %v; want p1 p2 p3", got, err)
	}
	if err := streams.PutPatients(ctx, files, "j2", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := streams.LoadPatients(ctx, files, "j2"); err != nil || len(got) != 0 {
		t.Errorf("empty list read back as %q, %v", got, err)
	}
	if _, err := streams.LoadPatients(ctx, files, "j3"); !errors.Is(err, streams.ErrNoPatientList) {
		t.Errorf("a job without a list: %v, want ErrNoPatientList", err)
	}
}
