package ingester_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/ingester"
)

// TestIngestersTakeTurns: two ingesters on one stream store every change
// exactly once (one holds the lease, the other stands by), and when the
// active one stops, the standby carries on from the watermark.
func TestIngestersTakeTurns(t *testing.T) {
	e := newEnv(t)
	cfg := ingester.DefaultConfig()
	cfg.BatchSize = 50 // many inserts, many chances to collide
	cfg.LeaseTTL = time.Second
	stopA := start(t, e, cfg)
	start(t, e, cfg)
	for i := range 1000 {
		put(t, e, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d","gender":"other"}`, i))
	}
	caughtUp(t, e, flush(t, e), 30*time.Second)
	stopA() // if A was the active one, B takes over; if not, nothing changes
	for i := range 500 {
		put(t, e, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d","gender":"female"}`, i))
	}
	last := flush(t, e)
	caughtUp(t, e, last, 30*time.Second)
	stored := rows(t, e)
	if len(stored) != int(last) {
		t.Errorf("%d versions stored for %d changes", len(stored), last)
	}
	for i, r := range stored {
		if r.seq != uint64(i+1) {
			t.Fatalf("stored version %d has seq %d: a change stored twice or missed", i, r.seq)
		}
	}
}
