package writer

import (
	"context"
	"fmt"
	"slices"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/compartment"
)

// provenanceBatch is how many Provenances are resolved with one query.
const provenanceBatch = 500

// provenance exports, for a Patient or Group level task, every Provenance
// whose target is a resource in the export's compartments (the Bulk Data
// IG's default Provenance rule), not only those that target a Patient: the
// Provenances of the range are read unfiltered and their targets resolved,
// a batch at a time, against the store as of the export's time.
func (w *Writer) provenance(ctx context.Context, r chstore.Range, emit func(id string, body []byte) error) error {
	scope := map[string]bool{}
	for _, p := range r.Patients {
		scope[p] = true
	}
	inScope := func(patients []string) bool {
		for _, p := range patients {
			if len(scope) == 0 || scope[p] {
				return true
			}
		}
		return false
	}
	type pending struct {
		id      string
		body    []byte
		targets []chstore.Ref
	}
	var batch []pending
	flush := func() error {
		var refs []chstore.Ref
		for _, p := range batch {
			refs = append(refs, p.targets...)
		}
		patientsOf, err := w.deps.Store.PatientsOf(ctx, refs, r.Until)
		if err != nil {
			return err
		}
		for _, p := range batch {
			for _, t := range p.targets {
				patients, found := patientsOf[t]
				if t.Type == "Patient" && found {
					patients = []string{t.ID}
				}
				if found && inScope(patients) {
					if err := emit(p.id, p.body); err != nil {
						return err
					}
					break
				}
			}
		}
		batch = batch[:0]
		return nil
	}
	all := r
	all.Patients, all.InCompartment = nil, false
	err := w.deps.Store.ReadLatest(ctx, all, func(id string, body []byte) error {
		targets, err := provenanceTargets(body)
		if err != nil {
			return fmt.Errorf("read targets of Provenance/%s: %w", id, err)
		}
		if len(targets) == 0 {
			return nil
		}
		batch = append(batch, pending{id, append([]byte(nil), body...), targets})
		if len(batch) >= provenanceBatch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// provenanceTargets reads the Provenance.target references (see
// parseTargets) to resources that can be in a Patient compartment.
func provenanceTargets(body []byte) ([]chstore.Ref, error) {
	targets, err := parseTargets(body)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(targets, func(t chstore.Ref) bool {
		return !compartment.InCompartment(t.Type) && t.Type != "Patient"
	}), nil
}
