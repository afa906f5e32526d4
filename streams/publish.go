package streams

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ChangePublisher publishes changes asynchronously and waits for the
// stream to acknowledge every one of them.
type ChangePublisher struct {
	js      jetstream.JetStream
	pending []jetstream.PubAckFuture
	// MaxPending bounds unacknowledged publishes before Put waits; keep it
	// below the JetStream context's async limit (4,000 by default).
	MaxPending int
}

// NewChangePublisher returns a publisher on js.
func NewChangePublisher(js jetstream.JetStream) *ChangePublisher {
	return &ChangePublisher{js: js, MaxPending: 2000}
}

// Put publishes a create-or-update of a resource whose body was validated.
func (p *ChangePublisher) Put(ctx context.Context, typ, id string, body []byte) error {
	m := nats.NewMsg(SubjectChange(OpPut, typ))
	m.Header.Set(HeaderOp, OpPut)
	m.Header.Set(HeaderType, typ)
	m.Header.Set(HeaderID, id)
	m.Data = body
	return p.publish(ctx, m)
}

// Delete publishes a delete of typ/id.
func (p *ChangePublisher) Delete(ctx context.Context, typ, id string) error {
	m := nats.NewMsg(SubjectChange(OpDelete, typ))
	m.Header.Set(HeaderOp, OpDelete)
	m.Header.Set(HeaderType, typ)
	m.Header.Set(HeaderID, id)
	return p.publish(ctx, m)
}

func (p *ChangePublisher) publish(ctx context.Context, m *nats.Msg) error {
	if len(p.pending) >= p.MaxPending {
		if err := p.Wait(ctx); err != nil {
			return err
		}
	}
	f, err := p.js.PublishMsgAsync(m)
	if err != nil {
		return fmt.Errorf("publish change on %s: %w", m.Subject, err)
	}
	p.pending = append(p.pending, f)
	return nil
}

// Wait returns once every change published so far is stored in the stream,
// or the first failure.
func (p *ChangePublisher) Wait(ctx context.Context) error {
	defer func() { p.pending = p.pending[:0] }()
	for _, f := range p.pending {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("store change: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
