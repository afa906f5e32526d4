package flatfhir_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/bulkclient/chain"
)

// TestE2EChainedSinceExportsReproduceTheSource is DESIGN.md invariant 1 at
// a modest size: a full export, then exports with _since = the previous
// transactionTime, applied in turn to a replica, reproduce the source
// exactly after every round. Rounds of creates, updates, deletes and Group
// membership changes (a third of them in transaction Bundles) come between
// exports; a concurrent writer updates other resources while each export
// runs, so some of its writes fall before and some after transactionTime.
// bulkbench runs the same check at a large size (-chain-rounds).
func TestE2EChainedSinceExportsReproduceTheSource(t *testing.T) {
	base := startEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := chain.Run(ctx, chain.Config{
		Base: base, Rounds: 6, Changes: 24, Pool: 10, Concurrent: 40, Seed: 7, Prefix: "c",
		Timeout: 2 * time.Minute, Progress: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rounds != 6 || rep.Transactions == 0 || rep.GroupChanges == 0 || rep.Compared == 0 {
		t.Errorf("the run did not exercise every kind of change: %+v", rep)
	}
	if rep.Straddled == 0 {
		t.Errorf("no concurrent write landed after a transactionTime: the run did not exercise writes during exports (%+v)", rep)
	}
}

// testWriter sends progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
