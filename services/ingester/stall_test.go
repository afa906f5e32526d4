package ingester_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/streams"
)

// stallingJS is the real JetStream whose first consumers of CHANGES stop
// delivering without an error: what a consumer placed on a NATS server
// whose replica of the stream lags looks like to its reader.
type stallingJS struct {
	jetstream.JetStream
	stall   atomic.Int32 // consumers still to be created stalled
	created atomic.Int32
}

func (s *stallingJS) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	st, err := s.JetStream.Stream(ctx, name)
	if err != nil || name != streams.StreamChanges {
		return st, err
	}
	return stallingStream{Stream: st, js: s}, nil
}

type stallingStream struct {
	jetstream.Stream
	js *stallingJS
}

func (s stallingStream) CreateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := s.Stream.CreateConsumer(ctx, cfg)
	if err != nil {
		return c, err
	}
	s.js.created.Add(1)
	if s.js.stall.Add(-1) < 0 {
		return c, nil
	}
	return stalledConsumer{Consumer: c}, nil
}

// stalledConsumer pulls as the real one does, and passes nothing on.
type stalledConsumer struct{ jetstream.Consumer }

func (c stalledConsumer) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	b, err := c.Consumer.Fetch(n, opts...)
	if err != nil {
		return nil, err
	}
	out := make(chan jetstream.Msg)
	go func() {
		for range b.Messages() {
		}
		close(out)
	}()
	return emptyBatch{out}, nil
}

type emptyBatch struct{ msgs chan jetstream.Msg }

func (b emptyBatch) Messages() <-chan jetstream.Msg { return b.msgs }
func (b emptyBatch) Error() error                   { return nil }

// TestIngesterReplacesAConsumerThatStoppedDelivering: a consumer that
// delivers nothing while the stream holds changes it has not delivered
// is replaced, and the changes are ingested. Before, such a consumer held
// the watermark, and every export waiting on it, without an error; the
// likely cause of an export in the cluster test that once waited five
// minutes, with nothing logged, after a NATS node was restarted.
func TestIngesterReplacesAConsumerThatStoppedDelivering(t *testing.T) {
	e := newEnv(t)
	sjs := &stallingJS{JetStream: e.js}
	sjs.stall.Store(1)
	stalling := e
	stalling.js = sjs // the ingester's; the test publishes on the real one
	start(t, stalling, ingester.DefaultConfig())

	put(t, e, `{"resourceType":"Patient","id":"stalled","gender":"other"}`)
	// Two long pulls (streams.PullWait each) find the consumer stalled.
	caughtUp(t, e, flush(t, e), 4*streams.PullWait)
	if n := sjs.created.Load(); n < 2 {
		t.Errorf("%d consumers created; the stalled one was not replaced", n)
	}
	if got := latest(t, e, "Patient", time.Now().Add(time.Hour)); got["stalled"] == nil {
		t.Errorf("the change is not stored: %v", got)
	}
}
