package chstore_test

import (
	"reflect"
	"sort"
	"testing"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

func TestStoreReadRefs(t *testing.T) {
	s := testenv.Store(t)
	ctx := t.Context()
	rows := []chstore.Row{
		{Type: "Patient", ID: "p1", Seq: 1, LastUpdated: 100, Patients: []string{"p1"}, Body: []byte(`{"resourceType":"Patient","id":"p1"}`)},
		{Type: "Observation", ID: "o1", Seq: 2, LastUpdated: 100, Patients: []string{"p1"}, Body: []byte(`{"v":1}`)},
		{Type: "Observation", ID: "o1", Seq: 3, LastUpdated: 200, Patients: []string{"p1"}, Body: []byte(`{"v":2}`)},
		{Type: "Observation", ID: "gone", Seq: 4, LastUpdated: 100, Body: []byte(`{}`)},
		{Type: "Observation", ID: "gone", Seq: 5, LastUpdated: 150, Deleted: true},
		{Type: "Organization", ID: "o1", Seq: 6, LastUpdated: 300, Body: []byte(`{}`)}, // after until
	}
	if err := s.Insert(ctx, rows); err != nil {
		t.Fatal(err)
	}
	refs := []chstore.Ref{{"Patient", "p1"}, {"Observation", "o1"}, {"Observation", "gone"}, {"Organization", "o1"}, {"Patient", "never"}}
	got, err := s.ReadRefs(ctx, refs, 250, func(typ string) bool { return typ == "Observation" })
	if err != nil {
		t.Fatal(err)
	}
	want := map[chstore.Ref]chstore.RefState{
		{"Patient", "p1"}:     {LastUpdated: 100, Patients: []string{"p1"}},
		{"Observation", "o1"}: {LastUpdated: 200, Patients: []string{"p1"}, Body: []byte(`{"v":2}`)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReadRefs = %+v, want %+v", got, want)
	}
	if _, err := s.ReadRefs(ctx, []chstore.Ref{{"Patient", "x'y"}}, 250, nil); err == nil {
		t.Error("an invalid id was accepted")
	}
}

func TestStoreProvenanceTargeting(t *testing.T) {
	s := testenv.Store(t)
	ctx := t.Context()
	prov := func(id string, seq, stamp uint64, body string) chstore.Row {
		return chstore.Row{Type: "Provenance", ID: id, Seq: seq, LastUpdated: stamp, Body: []byte(body)}
	}
	rows := []chstore.Row{
		prov("plain", 1, 100, `{"resourceType":"Provenance","id":"plain","target":[{"reference":"Patient/p1"}]}`),
		prov("spaced", 2, 100, `{"resourceType":"Provenance", "target": [ {"reference" : "https://fhir.example/r4/Observation/o1/_history/7"} ]}`),
		prov("escaped", 3, 100, `{"resourceType":"Provenance","target":[{"reference":"Patient\/p1"}]}`),
		prov("agent-only", 4, 100, `{"resourceType":"Provenance","target":[{"reference":"Device/d"}],"agent":[{"who":{"reference":"Patient/p1"}}]}`),
		prov("retargeted", 5, 100, `{"resourceType":"Provenance","target":[{"reference":"Patient/p1"}]}`),
		prov("retargeted", 6, 150, `{"resourceType":"Provenance","target":[{"reference":"Patient/p2"}]}`),
		prov("deleted", 7, 100, `{"resourceType":"Provenance","target":[{"reference":"Patient/p1"}]}`),
		{Type: "Provenance", ID: "deleted", Seq: 8, LastUpdated: 150, Deleted: true},
		prov("late", 9, 300, `{"resourceType":"Provenance","target":[{"reference":"Patient/p1"}]}`),
		prov("other", 10, 100, `{"resourceType":"Provenance","target":[{"reference":"Patient/p3"}]}`),
		{Type: "Observation", ID: "not-a-provenance", Seq: 11, LastUpdated: 100, Body: []byte(`{"subject":{"reference":"Patient/p1"}}`)},
	}
	if err := s.Insert(ctx, rows); err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	err := s.ProvenanceTargeting(ctx, []chstore.Ref{{"Patient", "p1"}, {"Observation", "o1"}}, 200, func(id string, seq uint64, body []byte) error {
		if _, dup := got[id]; dup {
			t.Errorf("Provenance %s streamed twice", id)
		}
		got[id] = seq
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// "retargeted" matches through an older version, and comes back as its
	// latest (which the caller then finds does not target p1).
	want := map[string]uint64{"plain": 1, "spaced": 2, "escaped": 3, "agent-only": 4, "retargeted": 6}
	if !reflect.DeepEqual(got, want) {
		ids := make([]string, 0, len(got))
		for id := range got {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		t.Errorf("ProvenanceTargeting = %v (%v), want %v", got, ids, want)
	}
}
