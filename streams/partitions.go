package streams

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// ChangePartitions is how many partitions the subjects of CHANGES are cut
// into (ADR 0008). Ingesters claim partitions and insert their changes in
// parallel; the stream keeps one sequence, so stamps stay one function of
// it. The number is part of the subjects, fixed like chstore's buckets: a
// deployment runs at most this many ingesters that insert at once.
const ChangePartitions = 16

// PartitionOf is the partition of the changes to the resource with id.
func PartitionOf(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % ChangePartitions)
}

// PartitionOfSubject is the partition of a message on CHANGES: the one
// whose PartitionFilters match its subject. ok is false for a mark, which
// belongs to none, and for a subject no partition's filters match. The
// subjects without a partition token (changes.put.<Type>,
// changes.delete.<Type>, changes.transaction, from before partitions)
// belong to partition 0.
func PartitionOfSubject(subject string) (p int, ok bool) {
	rest, found := strings.CutPrefix(subject, "changes.")
	if !found {
		return 0, false
	}
	tok, after, more := strings.Cut(rest, ".")
	switch {
	case rest == "transaction", (tok == "put" || tok == "delete") && more && after != "":
		return 0, true // from before partitions
	case !more || after == "":
		return 0, false
	}
	n, err := strconv.Atoi(tok)
	if err != nil || n < 0 || n >= ChangePartitions || strconv.Itoa(n) != tok {
		return 0, false
	}
	return n, true
}

// PartitionFilters are the subjects of the changes of partitions ps, to
// filter a consumer on. Partition 0 includes the subjects from before
// partitions.
func PartitionFilters(ps []int) []string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf(subjectPartitionAll, p))
		if p == 0 {
			out = append(out, legacyChangeSubjects...)
		}
	}
	return out
}

// KeyPartition is the BucketIngest key of partition p's claim and
// watermark (PartitionState).
func KeyPartition(p int) string { return fmt.Sprintf("partition.%d", p) }

// KeyMember is the BucketIngest key an ingester renews while it runs, so
// that the others count it when they share the partitions out.
func KeyMember(id string) string { return "member." + id }

// KeysIngestCoordination are the key filters of every partition claim and
// member key, for one watch.
func KeysIngestCoordination() []string { return []string{"partition.*", "member.*"} }

// ParsePartitionKey reads the partition of a KeyPartition key.
func ParsePartitionKey(key string) (int, bool) {
	tok, found := strings.CutPrefix(key, "partition.")
	if !found {
		return 0, false
	}
	p, err := strconv.Atoi(tok)
	if err != nil || p < 0 || p >= ChangePartitions || strconv.Itoa(p) != tok {
		return 0, false
	}
	return p, true
}

// ParseMemberKey reads the ingester id of a KeyMember key.
func ParseMemberKey(key string) (string, bool) {
	id, found := strings.CutPrefix(key, "member.")
	return id, found && id != ""
}

// PartitionState is the value of a KeyPartition key: who holds the
// partition ("" when released) and its watermark, meaning every change of
// the partition with seq ≤ Seq is stored. Stamp is the stamp of Seq, a
// function of the whole stream, so any partition's watermark can be the
// global one.
type PartitionState struct {
	Owner string `json:"owner"`
	Watermark
}
