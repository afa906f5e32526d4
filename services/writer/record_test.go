package writer

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

// TestRecordSurvivesShutdownAndReadsBackAmbiguousCreates: a result is
// recorded even when the attempt's context is already cancelled (the
// engine shutting down right after the files were stored), and a create
// that fails is settled by reading the stored result back. Before this,
// a create applied on the server but reported as failed made the attempt
// delete files its own recorded result listed.
func TestRecordSurvivesShutdownAndReadsBackAmbiguousCreates(t *testing.T) {
	bus := streamstest.New(t)
	w := &Writer{jobs: bus.Jobs}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	ours := streams.TaskResult{JobID: "j", TaskID: "00001", Attempt: 1, Token: "aaaa0001",
		Files: []streams.File{{Name: "CarePlan-00001-a1-aaaa0001-001.ndjson", Type: "CarePlan", Count: 278}}}
	if err := w.record(cancelled, ours); err != nil {
		t.Fatalf("record with a cancelled context: %v", err)
	}
	stored, ok, err := bus.Jobs.TaskResult(context.Background(), "j", "00001")
	if err != nil || !ok {
		t.Fatalf("result not stored: %v", err)
	}
	if stored.Token != ours.Token {
		t.Fatalf("stored %+v, want attempt %s", stored, ours.Token)
	}

	// The same attempt recording again (its first create's reply lost):
	// the stored result is recognised as its own.
	if err := w.record(context.Background(), ours); err != nil {
		t.Errorf("re-recording our own stored result: %v, want nil", err)
	}
	// Another attempt, even one with the same delivery count, loses.
	other := ours
	other.Token = "bbbb0002"
	if err := w.record(context.Background(), other); !errors.Is(err, errOtherAttempt) {
		t.Errorf("recording over another attempt's result: %v, want errOtherAttempt", err)
	}
}

// TestAttemptIndexGoesWithItsFiles: an attempt stores an attachment index
// only when its files name a Binary, under a name of its own, and an
// aborted (or losing) attempt deletes it with its files.
func TestAttemptIndexGoesWithItsFiles(t *testing.T) {
	bus := streamstest.New(t)
	task := streams.Task{JobID: "j", TaskID: "00001", Type: "DocumentReference", MaxFileResources: 10, MaxFileBytes: 1 << 20}
	ctx := t.Context()

	none := newFileSet(bus.Files, task, 1, false, 1<<20)
	if err := none.writeIndex(ctx, nil); err != nil || none.index != "" || len(none.written) != 0 {
		t.Errorf("an attempt naming no Binary: index %q, %v, wrote %v", none.index, err, none.written)
	}

	a, b := newFileSet(bus.Files, task, 1, false, 1<<20), newFileSet(bus.Files, task, 1, true, 1<<20)
	for _, s := range []*fileSet{a, b} {
		if err := s.write(ctx, "DocumentReference", "", []byte(`{"resourceType":"DocumentReference","id":"d1"}`)); err != nil {
			t.Fatal(err)
		}
		if err := s.close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.writeIndex(ctx, []string{"b1", "b2"}); err != nil {
			t.Fatal(err)
		}
	}
	if a.index == b.index {
		t.Fatalf("two attempts with one delivery count share index %s", a.index)
	}
	got, err := bus.Files.GetBytes(ctx, streams.ObjectName("j", a.index))
	if err != nil || string(got) != "b1\nb2\n" {
		t.Fatalf("index %q, %v", got, err)
	}
	a.abort(ctx)
	for _, name := range append([]string{a.index}, a.files[0].Name) {
		if _, err := bus.Files.GetInfo(ctx, streams.ObjectName("j", name)); !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Errorf("%s of the aborted attempt: %v, want deleted", name, err)
		}
	}
	if _, err := bus.Files.GetInfo(ctx, streams.ObjectName("j", b.index)); err != nil {
		t.Errorf("the other attempt's index: %v", err)
	}
}
