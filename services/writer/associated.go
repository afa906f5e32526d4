package writer

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/typefilter"
	"github.com/flatfhir/flatfhir/streams"
)

// competitorBatch is how many exported targets one scan for their
// Provenances (LatestProvenanceResources) looks up.
const competitorBatch = 5000

// associatedProvenance runs an includeAssociatedData task: of the
// Provenances in the task's hash range as of Until (changed after Since),
// it exports those that target a resource of the export's output, all of
// them (RelevantProvenanceResources) or only those that are the most
// recent Provenance of such a target (LatestProvenanceResources).
//
// The writers never see each other's files, so "in the output" is decided
// against the store: a target is exported iff its latest version at Until
// is live and matches the export's scope, exactly as the task that exports
// its type reads it (type, _since, compartments, _typeFilter).
func (w *Writer) associatedProvenance(ctx context.Context, task streams.Task, r chstore.Range, filter typefilter.Filter, emit func(id string, body []byte) error) error {
	sc := newExportScope(task, r, filter)
	all := r
	all.Patients, all.InCompartment = nil, false
	switch task.Associated {
	case streams.AssociatedRelevantProvenance:
		return w.relevantProvenance(ctx, sc, all, emit)
	case streams.AssociatedLatestProvenance:
		return w.latestProvenance(ctx, sc, all, emit)
	default:
		return &permanentError{fmt.Errorf("includeAssociatedData %q is not supported", task.Associated)}
	}
}

// relevantProvenance exports every Provenance of the range with an
// exported target, resolving targets a batch of Provenances at a time.
func (w *Writer) relevantProvenance(ctx context.Context, sc exportScope, all chstore.Range, emit func(id string, body []byte) error) error {
	return w.provenancesTargeting(ctx, all, parseTargets, func(refs []chstore.Ref) (func(chstore.Ref) bool, error) {
		exported, err := w.exportedRefs(ctx, sc, refs)
		if err != nil {
			return nil, err
		}
		return func(t chstore.Ref) bool { return exported[t] }, nil
	}, emit)
}

// latestProvenance exports the Provenances of the range that are the most
// recent Provenance of an exported target. It reads the range twice: first
// to collect the targets, which are resolved and whose Provenances (of any
// range) are ranked, then to emit the winners. Its memory is bounded by the
// task's size (the targets of its range), never by the export's.
func (w *Writer) latestProvenance(ctx context.Context, sc exportScope, all chstore.Range, emit func(id string, body []byte) error) error {
	seen := map[chstore.Ref]bool{}
	var refs []chstore.Ref
	err := w.deps.Store.ReadLatest(ctx, all, func(id string, body []byte) error {
		targets, err := parseTargets(body)
		if err != nil {
			return fmt.Errorf("read targets of Provenance/%s: %w", id, err)
		}
		for _, t := range targets {
			if !seen[t] {
				seen[t] = true
				refs = append(refs, t)
			}
		}
		return nil
	})
	if err != nil || len(refs) == 0 {
		return err
	}
	var exported []chstore.Ref
	for len(refs) > 0 {
		n := min(len(refs), provenanceBatch)
		ok, err := w.exportedRefs(ctx, sc, refs[:n])
		if err != nil {
			return err
		}
		for _, t := range refs[:n] {
			if ok[t] {
				exported = append(exported, t)
			}
		}
		refs = refs[n:]
	}
	best := make(map[chstore.Ref]provenanceRank, len(exported))
	for len(exported) > 0 {
		n := min(len(exported), competitorBatch)
		wanted := make(map[chstore.Ref]bool, n)
		for _, t := range exported[:n] {
			wanted[t] = true
		}
		err := w.deps.Store.ProvenanceTargeting(ctx, exported[:n], all.Until, func(id string, seq uint64, body []byte) error {
			rank, targets, err := rankProvenance(id, seq, body)
			if err != nil {
				return fmt.Errorf("read Provenance/%s: %w", id, err)
			}
			for _, t := range targets {
				if cur, ok := best[t]; wanted[t] && (!ok || cur.before(rank)) {
					best[t] = rank
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		exported = exported[n:]
	}
	return w.deps.Store.ReadLatest(ctx, all, func(id string, body []byte) error {
		targets, err := parseTargets(body)
		if err != nil {
			return fmt.Errorf("read targets of Provenance/%s: %w", id, err)
		}
		for _, t := range targets {
			if b, ok := best[t]; ok && b.id == id {
				return emit(id, body)
			}
		}
		return nil
	})
}

// provenanceRank orders the Provenances of one target: the most recent is
// the one with the latest recorded instant; ties go to the later stored
// version (meta.lastUpdated, then meta.versionId, which grow together), then
// to the greater id. A recorded that is missing or not an instant ranks
// below every valid one.
type provenanceRank struct {
	recorded time.Time
	seq      uint64
	id       string
}

func (a provenanceRank) before(b provenanceRank) bool {
	if c := a.recorded.Compare(b.recorded); c != 0 {
		return c < 0
	}
	if a.seq != b.seq {
		return a.seq < b.seq
	}
	return a.id < b.id
}

func rankProvenance(id string, seq uint64, body []byte) (provenanceRank, []chstore.Ref, error) {
	var p struct {
		Recorded string `json:"recorded"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return provenanceRank{}, nil, err
	}
	targets, err := parseTargets(body)
	if err != nil {
		return provenanceRank{}, nil, err
	}
	rank := provenanceRank{seq: seq, id: id}
	if t, err := fhir.ParseInstant(p.Recorded); err == nil {
		rank.recorded = t
	}
	return rank, targets, nil
}

// exportedRefs reports which of refs are in the export's output.
func (w *Writer) exportedRefs(ctx context.Context, sc exportScope, refs []chstore.Ref) (map[chstore.Ref]bool, error) {
	states, err := w.deps.Store.ReadRefs(ctx, refs, sc.until, sc.needsBody)
	if err != nil {
		return nil, err
	}
	out := make(map[chstore.Ref]bool, len(states))
	for ref, st := range states {
		ok, err := sc.exported(ref, st)
		if err != nil {
			return nil, fmt.Errorf("decide whether %s/%s is exported: %w", ref.Type, ref.ID, err)
		}
		if ok {
			out[ref] = true
		}
	}
	return out, nil
}

// exportScope decides, from the latest live version of a resource at the
// export's time, whether the export's output holds it.
type exportScope struct {
	types         map[string]bool // nil: every type
	inCompartment bool
	patients      map[string]bool // empty: any patient's compartment
	since, until  uint64
	filter        typefilter.Filter
	filtered      map[string]bool // the types _typeFilter has subqueries for
}

// newExportScope is the scope of task's export; r is the task's range as
// scope built it (compartments resolved).
func newExportScope(task streams.Task, r chstore.Range, filter typefilter.Filter) exportScope {
	sc := exportScope{inCompartment: r.InCompartment, since: r.Since, until: r.Until, filter: filter, filtered: map[string]bool{}}
	if len(task.ExportTypes) > 0 {
		sc.types = map[string]bool{}
		for _, t := range task.ExportTypes {
			sc.types[t] = true
		}
	}
	sc.patients = map[string]bool{}
	for _, p := range r.Patients {
		sc.patients[p] = true
	}
	for _, t := range filter.Types() {
		sc.filtered[t] = true
	}
	return sc
}

// needsBody reports whether deciding on a resource of typ reads its body.
func (sc exportScope) needsBody(typ string) bool {
	return slices.ContainsFunc(exportedTypes(typ), func(t string) bool { return sc.filtered[t] })
}

// exported mirrors what the task exporting ref's type does with it: the
// type is one of the export's (never Provenance itself: the IG associates
// Provenance with non-Provenance resources), it changed after _since, it is
// in the exported compartments, and it passes _typeFilter as it is
// exported (see asExported).
func (sc exportScope) exported(ref chstore.Ref, st chstore.RefState) (bool, error) {
	switch {
	case ref.Type == "Provenance":
		return false, nil
	case sc.types != nil && !sc.types[ref.Type]:
		return false, nil
	case sc.since > 0 && st.LastUpdated <= sc.since:
		return false, nil
	case sc.inCompartment && !inPatients(st.Patients, sc.patients):
		return false, nil
	case !sc.needsBody(ref.Type):
		return true, nil
	}
	typ, body, err := asExported(ref.Type, st.Body)
	if err != nil {
		return false, err
	}
	return sc.filter.Match(typ, body)
}

// inPatients: patients holds one of want, or any patient when want is empty.
func inPatients(patients []string, want map[string]bool) bool {
	if len(want) == 0 {
		return len(patients) > 0
	}
	return slices.ContainsFunc(patients, func(p string) bool { return want[p] })
}

// parseTargets reads Provenance.target references to resources of R4
// types with valid ids: relative or absolute, with or without _history.
// Other references (contained, logical, urn:) are left out.
func parseTargets(body []byte) ([]chstore.Ref, error) {
	var p struct {
		Target []struct {
			Reference string `json:"reference"`
		} `json:"target"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, err
	}
	var out []chstore.Ref
	for _, t := range p.Target {
		ref := t.Reference
		if i := strings.Index(ref, "/_history/"); i >= 0 {
			ref = ref[:i]
		}
		parts := strings.Split(ref, "/")
		if len(parts) < 2 {
			continue
		}
		r := chstore.Ref{Type: parts[len(parts)-2], ID: parts[len(parts)-1]}
		if fhir.IsResourceType(r.Type) && fhir.ValidID(r.ID) && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}
