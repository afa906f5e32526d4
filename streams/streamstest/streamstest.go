// Package streamstest gives a test a real, in-process JetStream with every
// flatfhir definition in place (in memory) and handles on what services
// share: the jobs bucket, the files store and the streams.
package streamstest

import (
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
