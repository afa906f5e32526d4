package chstore_test

import (
	"fmt"
	"maps"
	"testing"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestStoreReadsOfSeveralTypesEqualTheirReadsOneByOne: a read of several
// types in one query returns, for every kind of range, exactly what the
// reads of each type alone return, each resource under its own type, even
// where two types share an id.
func TestStoreReadsOfSeveralTypesEqualTheirReadsOneByOne(t *testing.T) {
	s := testenv.Store(t)
	types := []string{"Condition", "Observation", "Patient"}
	var rows []chstore.Row
	seq := uint64(0)
	add := func(typ, id string, stamp uint64, deleted bool, patients ...string) {
		seq++
		body := []byte(fmt.Sprintf("%s/%s@%d", typ, id, seq))
		if deleted {
			body, patients = nil, nil
		}
		rows = append(rows, chstore.Row{Type: typ, ID: id, Seq: seq, LastUpdated: stamp, Deleted: deleted, Patients: patients, Body: body})
	}
	for i := range 60 {
		id := fmt.Sprintf("r%d", i) // the same ids in every type
		p := fmt.Sprintf("p%d", i%3)
		for _, typ := range types {
			add(typ, id, 100, false, p)
		}
		switch i % 5 {
		case 0:
			add(types[i%3], id, 200, true)
		case 1:
			add(types[i%3], id, 200, false, p)
		case 2:
			add(types[(i+1)%3], id, 900, false, p) // after Until
		}
	}
	// One transaction's entries share its seq: Patient/tx and
	// Observation/tx at one seq, then Patient/tx alone updated. The old
	// Patient/tx must not come back by the Observation's (id, seq).
	seq++
	for _, typ := range []string{"Patient", "Observation"} {
		rows = append(rows, chstore.Row{Type: typ, ID: "tx", Seq: seq, LastUpdated: 160, Patients: []string{"p0"}, Body: []byte(typ + "/tx@tx")})
	}
	add("Patient", "tx", 170, false, "p0")
	if err := s.Insert(t.Context(), rows); err != nil {
		t.Fatal(err)
	}
	ranges := map[string]chstore.Range{
		"everything":                {HashHi: chstore.HashSpace, Until: 500},
		"since":                     {HashHi: chstore.HashSpace, Since: 150, Until: 500},
		"part of the hash space":    {HashLo: chstore.HashSpace / 4, HashHi: chstore.HashSpace, Until: 500},
		"since, in a compartment":   {HashHi: chstore.HashSpace, Since: 150, Until: 500, InCompartment: true},
		"since, of patients p0, p2": {HashHi: chstore.HashSpace, Since: 150, Until: 500, Patients: []string{"p0", "p2"}},
		"of patient p1":             {HashHi: chstore.HashSpace, Until: 500, Patients: []string{"p1"}},
	}
	for name, r := range ranges {
		t.Run(name, func(t *testing.T) {
			for _, deleted := range []bool{false, true} {
				want := map[string]string{}
				for _, typ := range types {
					one := r
					one.Type = typ
					for id, body := range readAll(t, s, one, deleted) {
						want[typ+"/"+id] = body
					}
				}
				got := map[string]string{}
				several := r
				several.Types = types
				read := s.ReadLatestTypes
				if deleted {
					read = s.ReadDeletedTypes
				}
				err := read(t.Context(), several, func(typ, id string, body []byte) error {
					if _, dup := got[typ+"/"+id]; dup {
						return fmt.Errorf("%s/%s returned twice", typ, id)
					}
					got[typ+"/"+id] = string(body)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if len(want) == 0 {
					t.Fatalf("deleted=%v: nothing to compare", deleted)
				}
				if !maps.Equal(got, want) {
					t.Errorf("deleted=%v: one query read %d resources, the types one by one %d:\n%v\n%v", deleted, len(got), len(want), render(got), render(want))
				}
			}
		})
	}
	// A callback without the type cannot take several types; a range
	// names one type or several.
	several := chstore.Range{Types: types, HashHi: chstore.HashSpace, Until: 500}
	if err := s.ReadLatest(t.Context(), several, func(string, []byte) error { return nil }); err == nil {
		t.Error("ReadLatest read several types into a callback that cannot tell them apart")
	}
	several.Type = "Patient"
	if err := s.ReadLatestTypes(t.Context(), several, func(string, string, []byte) error { return nil }); err == nil {
		t.Error("a range with both Type and Types was read")
	}
}
