package ingester_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/streams"
)

func TestIngesterAppliesATransactionWholeOrNotAtAll(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	start(t, e, ingester.DefaultConfig())

	put(t, e, `{"resourceType":"Patient","id":"p1"}`)
	flush(t, e)
	putOf := func(body string) streams.Change {
		var c streams.Change
		c.Op, c.Body = streams.OpPut, []byte(body)
		var r struct{ ResourceType, ID string }
		if err := json.Unmarshal(c.Body, &r); err != nil {
			t.Fatal(err)
		}
		c.Type, c.ID = r.ResourceType, r.ID
		return c
	}
	good := []streams.Change{
		putOf(`{"resourceType":"Patient","id":"t1"}`),
		putOf(`{"resourceType":"Observation","id":"t2","status":"final","subject":{"reference":"Patient/t1"}}`),
		{Op: streams.OpDelete, Type: "Patient", ID: "p1"},
	}
	txSeq, err := streams.PublishTransaction(ctx, e.js, good)
	if err != nil {
		t.Fatal(err)
	}
	// Invalid transactions: one entry's body names another resource; one
	// entry is not a resource; one POSTs, which only the API resolves. None
	// of their other entries may be stored.
	mismatch := putOf(`{"resourceType":"Patient","id":"x2"}`)
	mismatch.ID = "x3"
	m, err := streams.TransactionMsg([]streams.Change{putOf(`{"resourceType":"Patient","id":"x1"}`), mismatch})
	if err != nil {
		t.Fatal(err)
	}
	notJSON := nats.NewMsg(streams.SubjectTransaction("x4"))
	notJSON.Header.Set(streams.HeaderOp, streams.OpTransaction)
	notJSON.Data = []byte(`{"resourceType":"Bundle","type":"transaction","entry":[` +
		`{"request":{"method":"PUT","url":"Patient/x4"},"resource":{"resourceType":"Patient","id":"x4"}},` +
		`{"request":{"method":"PUT","url":"Patient/x5"},"resource":"{not a resource"}]}`)
	for _, m := range []*nats.Msg{m, notJSON} {
		if _, err := e.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	bare := nats.NewMsg(streams.SubjectTransaction("x6"))
	bare.Header.Set(streams.HeaderOp, streams.OpTransaction)
	bare.Data = []byte(`{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Patient"},"resource":{"resourceType":"Patient","id":"x6"}}]}`)
	if _, err := e.js.PublishMsg(ctx, bare); err != nil {
		t.Fatal(err)
	}
	put(t, e, `{"resourceType":"Patient","id":"after"}`)
	last := flush(t, e)
	wm := caughtUp(t, e, last, 30*time.Second)

	patients := latest(t, e, "Patient", wm.Stamp)
	if got := keys(patients); !reflect.DeepEqual(got, []string{"after", "t1"}) {
		t.Errorf("live Patients %v, want [after t1]", got)
	}
	if got := deleted(t, e, "Patient", wm.Stamp); !reflect.DeepEqual(got, []string{"p1"}) {
		t.Errorf("deleted Patients %v, want [p1]", got)
	}
	obs := latest(t, e, "Observation", wm.Stamp)
	if obs["t2"] == nil {
		t.Fatalf("Observation t2 not stored: %v", keys(obs))
	}
	v1, lu1 := meta(t, patients["t1"])
	v2, lu2 := meta(t, obs["t2"])
	if v1 != strconv.FormatUint(txSeq, 10) || v2 != v1 || !lu1.Equal(lu2) {
		t.Errorf("transaction versions %s@%v and %s@%v, want both %d at one instant", v1, lu1, v2, lu2, txSeq)
	}
	byKey := map[string]storedRow{}
	for _, r := range rows(t, e) {
		byKey[fmt.Sprintf("%s/%s@%d", r.typ, r.id, r.seq)] = r
	}
	if r, ok := byKey[fmt.Sprintf("Observation/t2@%d", txSeq)]; !ok || !reflect.DeepEqual(r.patients, []string{"t1"}) {
		t.Errorf("Observation t2 row %+v, want it in Patient t1's compartment", r)
	}
	if len(byKey) != 5 { // p1, t1, t2, the deletion of p1, after
		t.Errorf("%d versions stored, want 5: %v", len(byKey), byKey)
	}
}
