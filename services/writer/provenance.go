package writer

import (
	"bytes"
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
	all := r
	all.Patients, all.InCompartment = nil, false
	return w.provenancesTargeting(ctx, all, provenanceTargets, func(refs []chstore.Ref) (func(chstore.Ref) bool, error) {
		patientsOf, err := w.deps.Store.PatientsOf(ctx, refs, r.Until)
		if err != nil {
			return nil, err
		}
		return func(t chstore.Ref) bool {
			patients, found := patientsOf[t]
			if t.Type == "Patient" && found {
				patients = []string{t.ID}
			}
			return found && inScope(patients)
		}, nil
	}, emit)
}

// provenancesTargeting emits the Provenances of r with a target that
// exported reports true for. targetsOf reads a Provenance's targets;
// resolve builds exported for the targets of a batch of Provenances, so
// the store is asked once per provenanceBatch of them.
func (w *Writer) provenancesTargeting(ctx context.Context, r chstore.Range, targetsOf func(body []byte) ([]chstore.Ref, error),
	resolve func(refs []chstore.Ref) (exported func(chstore.Ref) bool, err error), emit func(id string, body []byte) error) error {
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
		exported, err := resolve(refs)
		if err != nil {
			return err
		}
		for _, p := range batch {
			if slices.ContainsFunc(p.targets, exported) {
				if err := emit(p.id, p.body); err != nil {
					return err
				}
			}
		}
		batch = batch[:0]
		return nil
	}
	err := w.deps.Store.ReadLatest(ctx, r, func(id string, body []byte) error {
		targets, err := targetsOf(body)
		if err != nil {
			return fmt.Errorf("read targets of Provenance/%s: %w", id, err)
		}
		if len(targets) == 0 {
			return nil
		}
		batch = append(batch, pending{id, bytes.Clone(body), targets})
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
