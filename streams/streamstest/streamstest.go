// Package streamstest gives a test a real, in-process JetStream with every
// flatfhir definition in place (in memory) and handles on what services
// share: the jobs bucket, the files store and the streams.
package streamstest

import (
	"errors"
	"sort"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// Bus is one test's JetStream.
type Bus struct {
	JS        jetstream.JetStream
	Jobs      streams.Jobs
	Files     jetstream.ObjectStore
	Tasks     jetstream.Stream // EXPORT_TASKS
	JobEvents jetstream.Stream // EXPORT_JOBS
}

// New starts a NATS server for the test and ensures every definition.
func New(t testing.TB) Bus {
	t.Helper()
	ctx := t.Context()
	_, js := testenv.JetStream(t, testenv.NATS(t))
	sc := streams.DefaultConfig()
	sc.Memory = true
	if err := streams.Ensure(ctx, js, sc); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	b := Bus{JS: js}
	var err error
	if b.Jobs, err = streams.OpenJobs(ctx, js); err != nil {
		t.Fatal(err)
	}
	if b.Files, err = js.ObjectStore(ctx, streams.ObjectFiles); err != nil {
		t.Fatal(err)
	}
	if b.Tasks, err = js.Stream(ctx, streams.StreamExportTasks); err != nil {
		t.Fatal(err)
	}
	if b.JobEvents, err = js.Stream(ctx, streams.StreamExportJobs); err != nil {
		t.Fatal(err)
	}
	return b
}

// ObjectNames lists the names of the stored files that start with prefix, sorted.
func (b Bus) ObjectNames(t testing.TB, prefix string) []string {
	t.Helper()
	infos, err := b.Files.List(t.Context())
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, info := range infos {
		if strings.HasPrefix(info.Name, prefix) {
			names = append(names, info.Name)
		}
	}
	sort.Strings(names)
	return names
}

// SubjectCount is how many messages stream s holds on subject.
func SubjectCount(t testing.TB, s jetstream.Stream, subject string) uint64 {
	t.Helper()
	info, err := s.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}
