package streams

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// PatientsObject names, within its job, the patients a Patient or Group
// level export is narrowed to, as the planner resolved them once at
// transactionTime: the Group's patient members as the Group stood then,
// narrowed to the patient parameter, or the patient parameter alone. Tasks
// with PatientList set read it; so does the API, deciding which Binaries
// an export's attachments may serve. It is one object per job, not a
// field of every task: a large Group's members would make every task
// message as large as the Group. Its name does not end in .ndjson, so the
// file route never serves it.
const PatientsObject = "patients.ids"

// ErrNoPatientList means the job has no PatientsObject: it was removed
// with its job, or the job was planned without one.
var ErrNoPatientList = errors.New("the export's patient list is gone")

// PutPatients stores the patients of job, sorted, one id per line.
func PutPatients(ctx context.Context, files jetstream.ObjectStore, job string, ids []string) error {
	ids = slices.Sorted(slices.Values(ids))
	var b bytes.Buffer
	for _, id := range slices.Compact(ids) {
		b.WriteString(id)
		b.WriteByte('\n')
	}
	if _, err := files.PutBytes(ctx, ObjectName(job, PatientsObject), b.Bytes()); err != nil {
		return fmt.Errorf("store the patients of job %s: %w", job, err)
	}
	return nil
}

// LoadPatients reads the patients PutPatients stored for job, sorted.
func LoadPatients(ctx context.Context, files jetstream.ObjectStore, job string) ([]string, error) {
	b, err := files.GetBytes(ctx, ObjectName(job, PatientsObject))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, ErrNoPatientList
	}
	if err != nil {
		return nil, fmt.Errorf("read the patients of job %s: %w", job, err)
	}
	ids := make([]string, 0, bytes.Count(b, []byte{'\n'}))
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		ids = append(ids, s.Text())
	}
	return ids, s.Err()
}
