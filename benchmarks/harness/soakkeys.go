package harness

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/synth"
)

// compartmentTypes are the types the soak's Patient and Group exports ask
// for (_type): every generated one of them is in its patient's compartment,
// so that what such an export must hold is known from the batches alone.
var compartmentTypes = map[string]bool{"Patient": true, "Encounter": true, "Observation": true}

// compartmentTypeList is compartmentTypes as a _type value.
const compartmentTypeList = "Patient,Encounter,Observation"

// soakChainPrefix starts the ids of the chained-export checks' resources;
// the other exports' checks leave them to the chain (generated ids are
// UUIDs, which never start so).
const soakChainPrefix = "soakchain"

// soakSeedBase is the generator seed of the soak's first ingest batch (the
// next ones count up): far from the initial load's seed, so every batch has
// ids of its own.
const soakSeedBase = 1 << 40

// batchKeys is what one generated batch holds.
type batchKeys struct {
	keys        []uint64
	all, inComp int64 // resources, and those of compartmentTypes
	group       string
}

// generateBatch generates a batch of patients as NDJSON, noting every
// resource's key. The generator names its Groups alike whatever the seed,
// so a batch sent after the initial load (body not nil) leaves them out:
// it would replace the initial load's Group.
func generateBatch(ctx context.Context, cfg synth.Config, body *strings.Builder) (batchKeys, error) {
	var b batchKeys
	err := synth.Generate(ctx, cfg, func(typ string, line []byte) error {
		if body != nil && typ == "Group" {
			return nil
		}
		hd, err := fhir.Inspect(line, true)
		if err != nil {
			return fmt.Errorf("generated %s: %w", typ, err)
		}
		b.keys = append(b.keys, keyOf(hd.ResourceType, hd.ID))
		b.all++
		if compartmentTypes[hd.ResourceType] {
			b.inComp++
		}
		if hd.ResourceType == "Group" && b.group == "" {
			b.group = hd.ID
		}
		if body != nil {
			body.Write(line)
			body.WriteByte('\n')
		}
		return nil
	})
	return b, err
}

// keyOf hashes Type/id: 64 bits keep a million-resource store's keys apart
// with a chance of a collision around 10⁻⁸, at a fraction of the memory of
// the strings.
func keyOf(typ, id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(typ))
	h.Write([]byte{'/'})
	h.Write([]byte(id))
	return h.Sum64()
}

// keyIndex knows every resource the soak has sent, by the batch that sent
// it (0 is the initial load), and how many batches the server accepted.
// One goroutine ingests, one batch at a time, so batches 0 to acked-1 were
// all accepted before any later one was sent.
type keyIndex struct {
	mu     sync.RWMutex
	batch  map[uint64]int32
	counts []batchKeys // keys dropped: the counts of each batch
	acked  int
}

func newKeyIndex() *keyIndex { return &keyIndex{batch: map[uint64]int32{}} }

// add records a batch about to be sent and returns its number.
func (x *keyIndex) add(b batchKeys) (int, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := int32(len(x.counts))
	for _, k := range b.keys {
		if _, dup := x.batch[k]; dup {
			return 0, fmt.Errorf("batch %d repeats a key of an earlier batch (%x)", n, k)
		}
		x.batch[k] = n
	}
	b.keys = nil
	x.counts = append(x.counts, b)
	return int(n), nil
}

// ack records that every batch up to n was accepted.
func (x *keyIndex) ack(n int) {
	x.mu.Lock()
	x.acked = n + 1
	x.mu.Unlock()
}

// accepted is how many batches were accepted so far.
func (x *keyIndex) accepted() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.acked
}

func (x *keyIndex) lookup(k uint64) (int32, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	b, ok := x.batch[k]
	return b, ok
}

// totals are the resources of the accepted batches, and of
// compartmentTypes among them.
func (x *keyIndex) totals() (all, inComp int64) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, c := range x.counts[:x.acked] {
		all += c.all
		inComp += c.inComp
	}
	return all, inComp
}

// exportCheck checks one export's lines against the index: each a resource
// of a type asked for, sent by the soak, at most once; and, once every
// file is read, every resource accepted before the kick-off present. With
// compartment, the kick-off asked for compartmentTypes only. With
// initialOnly (the initial load's Group), only the initial load's
// resources may appear, so the export must equal them.
type exportCheck struct {
	idx         *keyIndex
	compartment bool
	initialOnly bool
	acked       int // batches accepted before the kick-off

	mu       sync.Mutex
	seen     map[uint64]struct{}
	perBatch map[int32]int64
	chain    int64 // the chained checks' resources, left to them
}

func newExportCheck(idx *keyIndex, compartment, initialOnly bool) *exportCheck {
	return &exportCheck{idx: idx, compartment: compartment, initialOnly: initialOnly, acked: idx.accepted(),
		seen: map[uint64]struct{}{}, perBatch: map[int32]int64{}}
}

// line checks one exported line; lines of different files may come
// concurrently.
func (c *exportCheck) line(b []byte) error {
	hd, err := fhir.Inspect(b, true)
	if err != nil {
		return fmt.Errorf("a line is not a resource: %w", err)
	}
	if strings.HasPrefix(hd.ID, soakChainPrefix) {
		c.mu.Lock()
		c.chain++
		c.mu.Unlock()
		return nil
	}
	ref := hd.ResourceType + "/" + hd.ID
	if c.compartment && !compartmentTypes[hd.ResourceType] {
		return fmt.Errorf("%s is of a type the kick-off did not ask for", ref)
	}
	k := keyOf(hd.ResourceType, hd.ID)
	batch, ok := c.idx.lookup(k)
	if !ok {
		return fmt.Errorf("%s was never written", ref)
	}
	if c.initialOnly && batch != 0 {
		return fmt.Errorf("%s (ingest batch %d) is not a resource of the Group's members", ref, batch)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.seen[k]; dup {
		return fmt.Errorf("%s is exported twice", ref)
	}
	c.seen[k] = struct{}{}
	c.perBatch[batch]++
	return nil
}

// finish checks that every resource accepted before the kick-off, of the
// types asked for, was exported. It returns the resources checked.
func (c *exportCheck) finish() (int64, error) {
	c.idx.mu.RLock()
	defer c.idx.mu.RUnlock()
	var errs []error
	last := c.acked
	if c.initialOnly {
		last = 1
	}
	for b := 0; b < last; b++ {
		want := c.idx.counts[b].all
		if c.compartment {
			want = c.idx.counts[b].inComp
		}
		if got := c.perBatch[int32(b)]; got != want {
			errs = append(errs, fmt.Errorf("ingest batch %d (accepted before the kick-off): %d of its %d resources exported", b, got, want))
		}
		if len(errs) == 5 {
			errs = append(errs, errors.New("and maybe more"))
			break
		}
	}
	return int64(len(c.seen)), errors.Join(errs...)
}
