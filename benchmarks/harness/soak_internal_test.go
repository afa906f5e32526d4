package harness

import "testing"

// The soak's end check: the stores must hold what they held before the
// load; a query that was running when the state was first taken need not
// be running at the end, but no query may be left over.
func TestStoreStateBackTo(t *testing.T) {
	before := StoreState{Objects: 2, ObjectBytes: 10, Jobs: 1, Keys: 3, Tasks: 0, Queries: 1}
	cases := []struct {
		name string
		now  StoreState
		want bool
	}{
		{"the same", before, true},
		{"the query running before has ended", StoreState{Objects: 2, ObjectBytes: 10, Jobs: 1, Keys: 3, Queries: 0}, true},
		{"a query more than before", StoreState{Objects: 2, ObjectBytes: 10, Jobs: 1, Keys: 3, Queries: 2}, false},
		{"a file left", StoreState{Objects: 3, ObjectBytes: 15, Jobs: 1, Keys: 3, Queries: 1}, false},
		{"a key left", StoreState{Objects: 2, ObjectBytes: 10, Jobs: 1, Keys: 4, Queries: 0}, false},
		{"a task left", StoreState{Objects: 2, ObjectBytes: 10, Jobs: 1, Keys: 3, Tasks: 1, Queries: 1}, false},
	}
	for _, c := range cases {
		if got := c.now.backTo(before); got != c.want {
			t.Errorf("%s: backTo = %v, want %v", c.name, got, c.want)
		}
	}
}
