package streams_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/streams"
)

func TestStreamsTransactionRoundTrip(t *testing.T) {
	want := []streams.Change{
		{Op: streams.OpPut, Type: "Patient", ID: "p1", Body: []byte(`{"resourceType":"Patient","id":"p1","text":{"div":"<div>a & b</div>"}}`)},
		{Op: streams.OpDelete, Type: "Observation", ID: "o1"},
		{Op: streams.OpPut, Type: "Observation", ID: "o2", Body: []byte(`{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/p1"}}`)},
	}
	m, err := streams.TransactionMsg(want)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != streams.SubjectTransaction(want[0].ID) || m.Header.Get(streams.HeaderOp) != streams.OpTransaction {
		t.Errorf("subject %q, op %q", m.Subject, m.Header.Get(streams.HeaderOp))
	}
	if !strings.HasPrefix(string(m.Data), `{"resourceType":"Bundle","type":"transaction","entry":[`) || !strings.Contains(string(m.Data), "<div>a & b</div>") {
		t.Errorf("body %s is not a transaction Bundle holding the resources as sent", m.Data)
	}
	got, err := streams.DecodeTransaction(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
	if _, err := streams.TransactionMsg([]streams.Change{{Op: "patch", Type: "Patient", ID: "p"}}); err == nil {
		t.Error("a patch change was encoded")
	}
}

func TestStreamsDecodeTransactionRefusesMalformedBodies(t *testing.T) {
	put := func(url, res string) string {
		return `{"request":{"method":"PUT","url":"` + url + `"},"resource":` + res + `}`
	}
	bundle := func(entries ...string) string {
		return `{"resourceType":"Bundle","type":"transaction","entry":[` + strings.Join(entries, ",") + `]}`
	}
	p1 := `{"resourceType":"Patient","id":"p1"}`
	for _, c := range []struct{ name, body, says string }{
		{"not json", `{"resourceType":`, "not a JSON Bundle"},
		{"not a bundle", p1, "want a Bundle of type transaction"},
		{"batch", `{"resourceType":"Bundle","type":"batch","entry":[` + put("Patient/p1", p1) + `]}`, "want a Bundle of type transaction"},
		{"no entries", bundle(), "no entries"},
		{"no request", bundle(`{"resource":` + p1 + `}`), "entry 0 has no request"},
		{"bad url", bundle(put("Patient", p1)), "is not Type/id"},
		{"bad id", bundle(put("Patient/a_b", p1)), "is not Type/id"},
		{"post", bundle(`{"request":{"method":"POST","url":"Patient/p1"},"resource":` + p1 + `}`), `method "POST"`},
		{"put without resource", bundle(`{"request":{"method":"PUT","url":"Patient/p1"}}`), "has no resource"},
		{"twice", bundle(put("Patient/p1", p1), `{"request":{"method":"DELETE","url":"Patient/p1"}}`), "entries 0 and 1 both change Patient/p1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := streams.DecodeTransaction([]byte(c.body))
			if err == nil || !strings.Contains(err.Error(), c.says) {
				t.Errorf("error %v, want one saying %q", err, c.says)
			}
		})
	}
}

func TestStreamsPublishTransactionIsOneMessage(t *testing.T) {
	_, js := ensured(t)
	ctx := t.Context()
	changes := []streams.Change{
		{Op: streams.OpPut, Type: "Patient", ID: "p1", Body: []byte(`{"resourceType":"Patient","id":"p1"}`)},
		{Op: streams.OpPut, Type: "Patient", ID: "p2", Body: []byte(`{"resourceType":"Patient","id":"p2"}`)},
	}
	seq, err := streams.PublishTransaction(ctx, js, changes)
	if err != nil {
		t.Fatal(err)
	}
	last, err := streams.LastChangeSeq(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if seq != 1 || last != 1 {
		t.Errorf("transaction stored at seq %d, last seq %d; want one message at 1", seq, last)
	}
	if n := subjectCount(t, js, streams.StreamChanges, streams.SubjectTransaction("p1")); n != 1 {
		t.Errorf("%d messages on %s (the first change's partition), want 1", n, streams.SubjectTransaction("p1"))
	}
}
