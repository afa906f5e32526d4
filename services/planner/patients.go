package planner

import (
	"context"
	"fmt"
	"slices"

	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/streams"
)

// planError is a reason no plan can be made, which no retry mends: the
// job fails with it.
type planError struct{ msg string }

func (e *planError) Error() string { return e.msg }

// listPatients decides, once for the whole export, whose data it holds,
// and stores the list for the tasks (streams.PatientsObject): at Group
// level the Group's patient members as the Group stood at t, narrowed to
// the patient parameter; at Patient level the patient parameter. listed
// is false when the export is not narrowed to a list (system level, or
// every patient's compartment).
func (p *Planner) listPatients(ctx context.Context, job streams.Job, t uint64) (patients []string, listed bool, err error) {
	if !listsPatients(job) {
		return nil, false, nil
	}
	switch job.Level {
	case streams.LevelGroup:
		body, ok, err := p.deps.Store.ReadOne(ctx, "Group", job.GroupID, t)
		if err != nil {
			return nil, false, fmt.Errorf("read Group/%s: %w", job.GroupID, err)
		}
		if !ok {
			return nil, false, &planError{fmt.Sprintf("Group/%s did not exist at the export's transactionTime", job.GroupID)}
		}
		if patients, err = compartment.GroupPatients(body); err != nil {
			return nil, false, &planError{fmt.Sprintf("Group/%s cannot be exported: %v", job.GroupID, err)}
		}
		if len(job.Patients) > 0 {
			wanted := make(map[string]bool, len(job.Patients))
			for _, id := range job.Patients {
				wanted[id] = true
			}
			patients = slices.DeleteFunc(patients, func(id string) bool { return !wanted[id] })
		}
	default:
		patients = job.Patients
	}
	if err := streams.PutPatients(ctx, p.files, job.JobID, patients); err != nil {
		return nil, false, err
	}
	return patients, true, nil
}

// listsPatients reports whether the export is narrowed to a list of
// patients: every Group export, and a Patient export with the patient
// parameter.
func listsPatients(job streams.Job) bool {
	return job.Level == streams.LevelGroup || job.Level == streams.LevelPatient && len(job.Patients) > 0
}
