package streams_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// TestPartitionFiltersSplitTheChanges: a consumer filtered on one
// partition's subjects gets exactly the changes PartitionOfSubject puts
// there: every change lands in one partition, the changes published
// before partitions in partition 0, and a mark in none. The partitions
// get changes to many ids fairly evenly.
func TestPartitionFiltersSplitTheChanges(t *testing.T) {
	_, js := ensured(t)
	ctx := t.Context()
	want := map[int]int{}
	publish := func(subject string) {
		t.Helper()
		if _, err := js.Publish(ctx, subject, nil); err != nil {
			t.Fatal(err)
		}
		if p, ok := streams.PartitionOfSubject(subject); ok {
			want[p]++
		}
	}
	for i := range 1600 {
		id := fmt.Sprintf("%d-x", i)
		publish(streams.SubjectChange(streams.OpPut, "Patient", id))
		if i%10 == 0 {
			publish(streams.SubjectChange(streams.OpDelete, "Observation", id))
			publish(streams.SubjectTransaction(id))
		}
	}
	for _, legacy := range []string{"changes.put.Patient", "changes.delete.Patient", "changes.transaction"} {
		publish(legacy)
	}
	publish(streams.SubjectMark())
	// Subjects of no partition: the stream takes them, no partition's
	// consumer gets them (the ingester holding partition 0 rejects them).
	odd := []string{"changes.put", "changes.3", "changes.99.put.Patient", "changes.03.put.Patient", "changes.foo.bar", "changes.-1.put.Patient"}
	for _, s := range odd {
		if p, ok := streams.PartitionOfSubject(s); ok {
			t.Errorf("%s is in partition %d", s, p)
		}
		publish(s)
	}
	if p, ok := streams.PartitionOfSubject("changes.put.Patient"); !ok || p != 0 {
		t.Errorf("a change from before partitions is in partition %d (%v), want 0", p, ok)
	}
	if _, ok := streams.PartitionOfSubject(streams.SubjectMark()); ok {
		t.Error("a mark is in a partition")
	}

	s, err := js.Stream(ctx, streams.StreamChanges)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for p := range streams.ChangePartitions {
		cons, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{
			AckPolicy: jetstream.AckNonePolicy, FilterSubjects: streams.PartitionFilters([]int{p}),
		})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for {
			batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(200*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range batch.Messages() {
				if q, ok := streams.PartitionOfSubject(m.Subject()); !ok || q != p {
					t.Errorf("partition %d's consumer got %s, of partition %d (%v)", p, m.Subject(), q, ok)
				}
				n++
			}
			if got += n; n == 0 {
				break
			}
		}
		if got != want[p] {
			t.Errorf("partition %d's consumer got %d changes, want %d", p, got, want[p])
		}
		if fair := 1600 / streams.ChangePartitions; got < fair/2 || got > fair*2 {
			t.Errorf("partition %d has %d of 1600 puts' worth of changes: the ids are not spread", p, got)
		}
		total += got
	}
	if total != 1600+2*160+3 {
		t.Errorf("the partitions hold %d changes, want every change once (%d)", total, 1600+2*160+3)
	}
}

func TestPartitionKeys(t *testing.T) {
	for p := range streams.ChangePartitions {
		if q, ok := streams.ParsePartitionKey(streams.KeyPartition(p)); !ok || q != p {
			t.Errorf("partition key %q reads as %d (%v)", streams.KeyPartition(p), q, ok)
		}
	}
	for _, bad := range []string{"partition.", "partition.16", "partition.-1", "partition.01", "member.x", "watermark"} {
		if _, ok := streams.ParsePartitionKey(bad); ok {
			t.Errorf("%q read as a partition key", bad)
		}
	}
	if id, ok := streams.ParseMemberKey(streams.KeyMember("abc")); !ok || id != "abc" {
		t.Errorf("member key reads as %q (%v)", id, ok)
	}
}
