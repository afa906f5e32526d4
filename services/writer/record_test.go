package writer

import (
	"context"
	"errors"
	"testing"

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
	entry, err := bus.Jobs.KV.Get(context.Background(), streams.KeyTask("j", "00001"))
	if err != nil {
		t.Fatalf("result not stored: %v", err)
	}
	var stored streams.TaskResult
	if err := streams.Decode(entry.Value(), &stored); err != nil || stored.Token != ours.Token {
		t.Fatalf("stored %+v (%v), want attempt %s", stored, err, ours.Token)
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
