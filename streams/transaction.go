package streams

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Change is one resource change inside a transaction: a put carries the
// resource, a delete carries nothing.
type Change struct {
	Op   string // OpPut or OpDelete
	Type string
	ID   string
	Body []byte
}

// The body of a transaction message is an R4 Bundle of type transaction
// whose entries are already resolved: PUT Type/id with the resource, or
// DELETE Type/id. No POST, no conditional requests, no urn: references to
// resolve; that is the publisher's work (the API does it).
type txBundle struct {
	ResourceType string    `json:"resourceType"`
	Type         string    `json:"type"`
	Entry        []txEntry `json:"entry"`
}

type txEntry struct {
	Resource json.RawMessage `json:"resource,omitempty"`
	Request  *txRequest      `json:"request"`
}

type txRequest struct {
	Method string `json:"method"`
	URL    string `json:"url"`
}

// TransactionMsg builds the one message that carries changes as a unit.
func TransactionMsg(changes []Change) (*nats.Msg, error) {
	b := txBundle{ResourceType: "Bundle", Type: "transaction", Entry: make([]txEntry, len(changes))}
	for i, c := range changes {
		e := txEntry{Request: &txRequest{URL: c.Type + "/" + c.ID}}
		switch c.Op {
		case OpPut:
			e.Request.Method = "PUT"
			e.Resource = c.Body
		case OpDelete:
			e.Request.Method = "DELETE"
		default:
			return nil, fmt.Errorf("change %d: unknown operation %q", i, c.Op)
		}
		b.Entry[i] = e
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Resources are stored as they were sent; do not escape <, > and &.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(b); err != nil {
		return nil, fmt.Errorf("encode transaction of %d changes: %w", len(changes), err)
	}
	if len(changes) == 0 {
		return nil, errors.New("a transaction needs at least one change")
	}
	m := nats.NewMsg(SubjectTransaction(changes[0].ID))
	m.Header.Set(HeaderOp, OpTransaction)
	m.Data = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	return m, nil
}

// PublishTransaction publishes changes as one message and returns its
// stream sequence once stored: the versionId of every resource in it once
// ingested. The ingester applies all of the changes or none.
func PublishTransaction(ctx context.Context, js jetstream.JetStream, changes []Change) (uint64, error) {
	m, err := TransactionMsg(changes)
	if err != nil {
		return 0, err
	}
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("publish transaction of %d changes: %w", len(changes), err)
	}
	return ack.Sequence, nil
}

// DecodeTransaction reads the body of a transaction message. It checks the
// shape: a transaction Bundle of at least one entry, each PUT Type/id with
// a resource or DELETE Type/id, no resource named twice. The resources
// themselves are checked by the ingester as single puts are.
func DecodeTransaction(data []byte) ([]Change, error) {
	var b txBundle
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("transaction is not a JSON Bundle: %w", err)
	}
	if b.ResourceType != "Bundle" || b.Type != "transaction" {
		return nil, fmt.Errorf("transaction body is a %q of type %q, want a Bundle of type transaction", b.ResourceType, b.Type)
	}
	if len(b.Entry) == 0 {
		return nil, errors.New("transaction has no entries")
	}
	out := make([]Change, len(b.Entry))
	seen := make(map[string]int, len(b.Entry))
	for i, e := range b.Entry {
		if e.Request == nil {
			return nil, fmt.Errorf("entry %d has no request", i)
		}
		typ, id, ok := strings.Cut(e.Request.URL, "/")
		if !ok || !ValidType(typ) || !ValidID(id) {
			return nil, fmt.Errorf("entry %d: url %q is not Type/id", i, e.Request.URL)
		}
		if j, dup := seen[typ+"/"+id]; dup {
			return nil, fmt.Errorf("entries %d and %d both change %s/%s", j, i, typ, id)
		}
		seen[typ+"/"+id] = i
		c := Change{Type: typ, ID: id}
		switch e.Request.Method {
		case "PUT":
			if len(e.Resource) == 0 || bytes.Equal(e.Resource, []byte("null")) {
				return nil, fmt.Errorf("entry %d: PUT %s/%s has no resource", i, typ, id)
			}
			c.Op, c.Body = OpPut, e.Resource
		case "DELETE":
			c.Op = OpDelete
		default:
			return nil, fmt.Errorf("entry %d: method %q is not PUT or DELETE", i, e.Request.Method)
		}
		out[i] = c
	}
	return out, nil
}
