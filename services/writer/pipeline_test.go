package writer

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/typefilter"
	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

// lines is a reader of fixed resources, standing in for a store read.
func lines(typ string, bodies map[string]string) reader {
	return func(_ context.Context, emit func(string, string, []byte) error) error {
		ids := make([]string, 0, len(bodies))
		for id := range bodies {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			if err := emit(typ, id, []byte(bodies[id])); err != nil {
				return err
			}
		}
		return nil
	}
}

// runPipeline builds the stages of task around source and deletions as
// pipeline does, runs them into an attempt's files, and returns each
// file's kind/type with its lines, and the attachment index.
func runPipeline(t *testing.T, task streams.Task, source, deleted reader) (map[string][]string, string) {
	t.Helper()
	bus := streamstest.New(t)
	ctx := t.Context()
	elements, err := fhir.ParseElements(task.Elements)
	if err != nil {
		t.Fatal(err)
	}
	filter, err := typefilter.ParseAt(task.TypeFilter, task.Until)
	if err != nil {
		t.Fatal(err)
	}
	att := newAttachments(task.BaseURL, task.AttachmentBase)
	p := newPipeline(source, &typeSteps{typ: task.Type, stages: stages(task, filter, elements, att), deletedAs: deletedAs(task)})
	p.deleted = deleted
	out := newFileSet(bus.Files, task, 1, true, 1<<20)
	if err := writeAll(ctx, []*taskPipeline{p}, att, out); err != nil {
		t.Fatalf("writeTo: %v", err)
	}
	got := map[string][]string{}
	for _, f := range out.files {
		b, err := streams.ReadFile(ctx, bus.Files, streams.ObjectName(task.JobID, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		key := f.Kind + "/" + f.Type
		got[key] = append(got[key], strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")...)
	}
	var index string
	if out.index != "" {
		b, err := bus.Files.GetBytes(ctx, streams.ObjectName(task.JobID, out.index))
		if err != nil {
			t.Fatal(err)
		}
		index = string(b)
	}
	return got, index
}

const (
	patientBinary = `{"resourceType":"Binary","id":"b1","contentType":"text/plain","securityContext":{"reference":"Patient/p1"},"data":"aGk="}`
	orphanBinary  = `{"resourceType":"Binary","id":"b2","contentType":"text/plain","data":"aGk="}`
)

func binaryTask(emitAs string) streams.Task {
	return streams.Task{JobID: "j1", TaskID: "00001", Type: "Binary", EmitAs: emitAs,
		Since: time.Unix(1, 0), Until: time.Unix(2, 0), MaxFileResources: 100, MaxFileBytes: 1 << 20,
		BaseURL: "https://fhir.example/r4", AttachmentBase: "https://fhir.example/r4/files/j1/attachments/"}
}

// TestPipelineBinaryTaskEmittingDocumentReferences: a task that exports
// patients' Binaries as DocumentReferences drops other Binaries, points
// the attachment at the export's URL and indexes it, and names deletions
// as the DocumentReferences the Binaries were.
func TestPipelineBinaryTaskEmittingDocumentReferences(t *testing.T) {
	got, index := runPipeline(t, binaryTask(docType),
		lines("Binary", map[string]string{"b1": patientBinary, "b2": orphanBinary}),
		lines("Binary", map[string]string{"gone": ""}))
	want := map[string][]string{
		"output/DocumentReference": {`{"resourceType":"DocumentReference","id":"bin-b1","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"text/plain","data":"aGk=","url":"https://fhir.example/r4/files/j1/attachments/Binary/b1"}}]}`},
		"deleted/Bundle":           {`{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"DocumentReference/bin-gone"}}]}`},
	}
	assertFiles(t, got, want)
	if index != "b1\n" {
		t.Errorf("attachment index %q, want b1", index)
	}
}

// TestPipelineBinaryTaskAtSystemLevel: without EmitAs a Binary task
// exports a patient's Binary as a DocumentReference and any other Binary
// as it is, and lists deletions as Binaries.
func TestPipelineBinaryTaskAtSystemLevel(t *testing.T) {
	got, _ := runPipeline(t, binaryTask(""),
		lines("Binary", map[string]string{"b1": patientBinary, "b2": orphanBinary}),
		lines("Binary", map[string]string{"gone": ""}))
	if len(got["output/DocumentReference"]) != 1 || !slices.Equal(got["output/Binary"], []string{orphanBinary}) {
		t.Errorf("files %v: want b1 as a DocumentReference and b2 as a Binary", got)
	}
	if d := got["deleted/Bundle"]; len(d) != 1 || !strings.Contains(d[0], `"url":"Binary/gone"`) {
		t.Errorf("deleted %v, want Binary/gone", d)
	}
}

// TestPipelineFilterThenElements: _typeFilter decides on the whole
// resource, then _elements trims what is kept and tags it SUBSETTED.
func TestPipelineFilterThenElements(t *testing.T) {
	task := streams.Task{JobID: "j1", TaskID: "00002", Type: "Observation", Until: time.Unix(2, 0),
		TypeFilter: []string{"Observation?status=final"}, Elements: []string{"status"},
		MaxFileResources: 100, MaxFileBytes: 1 << 20}
	got, index := runPipeline(t, task, lines(task.Type, map[string]string{
		"o1": `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"valueString":"v"}`,
		"o2": `{"resourceType":"Observation","id":"o2","status":"preliminary","code":{"text":"y"},"valueString":"w"}`,
	}), nil)
	out := got["output/Observation"]
	if len(out) != 1 || !strings.Contains(out[0], `"id":"o1"`) || strings.Contains(out[0], `"valueString"`) || !strings.Contains(out[0], "SUBSETTED") {
		t.Errorf("output %v: want o1 only, without valueString (not in _elements) and tagged SUBSETTED", out)
	}
	if len(got) != 1 || index != "" {
		t.Errorf("files %v, index %q: want only the output", got, index)
	}
}

func assertFiles(t *testing.T, got, want map[string][]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("files %v, want %v", got, want)
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("%s:\n got %q\nwant %q", k, got[k], w)
		}
	}
}
