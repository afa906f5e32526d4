package planner_test

import (
	"slices"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/streams"
)

// TestPlannerSplitAssociatedProvenance: includeAssociatedData adds
// Provenance tasks, after the others and covering the hash space, only when
// the export's own tasks leave Provenance out; a type outside the export is
// never planned even when counted.
func TestPlannerSplitAssociatedProvenance(t *testing.T) {
	cfg := planner.DefaultConfig()
	cfg.TaskRows = 1000
	until := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	counts := concat(uniform("Patient", 1), uniform("Provenance", 5))
	relevant, latest := streams.AssociatedRelevantProvenance, streams.AssociatedLatestProvenance
	cases := []struct {
		name       string
		level      string
		types      []string
		associated string
		counts     []chstore.BucketCount
		// wantRegular and wantAssociated are the types of the export's own
		// tasks and whether associated Provenance tasks follow.
		wantRegular     []string
		wantAssociated  bool
		wantExportTypes []string
	}{
		{"system, _type without Provenance", streams.LevelSystem, []string{"Patient"}, relevant, counts, []string{"Patient"}, true, []string{"Patient"}},
		{"system, latest", streams.LevelSystem, []string{"Patient"}, latest, counts, []string{"Patient"}, true, []string{"Patient"}},
		{"system, every type exports every Provenance", streams.LevelSystem, nil, relevant, counts, []string{"Patient", "Provenance"}, false, nil},
		{"system, _type with Provenance, relevant", streams.LevelSystem, []string{"Patient", "Provenance"}, relevant, counts, []string{"Patient", "Provenance"}, false, nil},
		{"patient level, the compartment holds Provenance", streams.LevelPatient, nil, relevant, counts, []string{"Patient", "Provenance"}, false, nil},
		// LatestProvenanceResources: no Provenance but the latest of each
		// exported resource, so Provenance is never exported as a type.
		{"system, every type, latest", streams.LevelSystem, nil, latest, counts, []string{"Patient"}, true, nil},
		{"system, _type with Provenance, latest", streams.LevelSystem, []string{"Patient", "Provenance"}, latest, counts, []string{"Patient"}, true, []string{"Patient"}},
		{"patient level, compartment, latest", streams.LevelPatient, nil, latest, counts, []string{"Patient"}, true, withoutProvenance(compartment.Types())},
		{"system, only Provenance, latest: nothing to associate with", streams.LevelSystem, []string{"Provenance"}, latest, counts, nil, false, nil},
		{"group level, _type without Provenance", streams.LevelGroup, []string{"Patient"}, latest, counts, []string{"Patient"}, true, []string{"Patient"}},
		{"no Provenance stored", streams.LevelSystem, []string{"Patient"}, relevant, uniform("Patient", 1), []string{"Patient"}, false, nil},
		{"no includeAssociatedData", streams.LevelSystem, []string{"Patient"}, "", counts, []string{"Patient"}, false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "j", Level: c.level, Types: c.types, IncludeAssociatedData: c.associated}}
			tasks := planner.Split(job, until, c.counts, cfg)
			var regular []string
			var assoc []streams.Task
			for i, task := range tasks {
				if task.Associated == "" {
					if len(assoc) > 0 {
						t.Fatalf("task %d of %s after an associated task", i, task.Type)
					}
					if !slices.Contains(regular, task.Type) {
						regular = append(regular, task.Type)
					}
					continue
				}
				if task.Associated != c.associated || task.Type != "Provenance" || !slices.Equal(task.ExportTypes, c.wantExportTypes) {
					t.Errorf("associated task %+v, want Provenance %s for types %v", task, c.associated, c.wantExportTypes)
				}
				assoc = append(assoc, task)
			}
			if !slices.Equal(regular, c.wantRegular) {
				t.Errorf("own tasks for %v, want %v", regular, c.wantRegular)
			}
			if (len(assoc) > 0) != c.wantAssociated {
				t.Fatalf("%d associated tasks, want some: %v", len(assoc), c.wantAssociated)
			}
			if len(assoc) > 0 {
				// 5 rows in each of 1024 buckets at 1000 rows a task.
				if len(assoc) != 6 || assoc[0].HashLo != 0 || assoc[len(assoc)-1].HashHi != chstore.HashSpace {
					t.Errorf("%d associated tasks from %d to %d, want 6 covering the hash space", len(assoc), assoc[0].HashLo, assoc[len(assoc)-1].HashHi)
				}
				for i := 1; i < len(assoc); i++ {
					if assoc[i].HashLo != assoc[i-1].HashHi || assoc[i].TaskID <= assoc[i-1].TaskID {
						t.Errorf("associated tasks %d and %d do not follow each other", i-1, i)
					}
				}
			}
		})
	}
}

func withoutProvenance(types []string) []string {
	return slices.DeleteFunc(slices.Clone(types), func(t string) bool { return t == "Provenance" })
}
