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
	return p.publish(ctx, changeMsg(OpPut, typ, id, body))
}

// Delete publishes a delete of typ/id.
func (p *ChangePublisher) Delete(ctx context.Context, typ, id string) error {
	return p.publish(ctx, changeMsg(OpDelete, typ, id, nil))
}

// changeMsg is the message of one change: the body for a put, none for a
// delete; the operation, type and id in headers.
func changeMsg(op, typ, id string, body []byte) *nats.Msg {
	m := nats.NewMsg(SubjectChange(op, typ, id))
	m.Header.Set(HeaderOp, op)
	m.Header.Set(HeaderType, typ)
	m.Header.Set(HeaderID, id)
	m.Data = body
	return m
}

// PublishChange publishes one change and returns its stream sequence once
// it is stored: the resource's versionId once ingested.
func PublishChange(ctx context.Context, js jetstream.JetStream, op, typ, id string, body []byte) (uint64, error) {
	ack, err := js.PublishMsg(ctx, changeMsg(op, typ, id, body))
	if err != nil {
		return 0, fmt.Errorf("publish %s of %s/%s: %w", op, typ, id, err)
	}
	return ack.Sequence, nil
}

// PublishMark puts a mark on CHANGES and returns its sequence. Once the
// watermark reaches it, every change accepted before it is queryable and
// the watermark's stamp is at or after the moment the mark was accepted:
// a kick-off's transactionTime is then never older than the kick-off, and
// an idle ingester needs no clock of its own to keep it fresh.
func PublishMark(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	m := nats.NewMsg(subjectMark)
	m.Header.Set(HeaderOp, OpMark)
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("publish a mark on %s: %w", StreamChanges, err)
	}
	return ack.Sequence, nil
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
