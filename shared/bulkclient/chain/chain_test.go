package chain_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/bulkclient/chain"
)

// config is a small run: four rounds in about a second.
func config(base string) chain.Config {
	return chain.Config{
		Base: base, Rounds: 4, Changes: 30, Pool: 8, Concurrent: 20, Seed: 3, Prefix: "c",
		Timeout: 10 * time.Second, Parallel: 3,
	}
}

// TestChainPassesAgainstACorrectServer runs the check against the fake
// without faults: every round's replica equals the source, and the report
// counts what the server saw.
func TestChainPassesAgainstACorrectServer(t *testing.T) {
	f := newFake(t, noBug)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	rep, err := chain.Run(ctx, config(f.URL))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if rep.Rounds != 4 || len(f.jobs) != 4 {
		t.Errorf("%d rounds, %d exports; want 4 of each", rep.Rounds, len(f.jobs))
	}
	if rep.Changes+rep.Concurrent != f.changes || rep.Transactions != f.transactions {
		t.Errorf("report: %d changes + %d concurrent writes, %d transactions; the server saw %d changes, %d transactions",
			rep.Changes, rep.Concurrent, rep.Transactions, f.changes, f.transactions)
	}
	if rep.Applied != f.served || rep.Compared != f.live {
		t.Errorf("report: %d entries applied, %d resources compared; the server listed %d, held %d at the last transactionTime",
			rep.Applied, rep.Compared, f.served, f.live)
	}
	if rep.Transactions != 4 || rep.GroupChanges == 0 || rep.Concurrent == 0 || rep.Straddled == 0 {
		t.Errorf("the run did not exercise every kind of change: %+v", rep)
	}
	if f.gzipped == 0 {
		t.Error("no file was downloaded gzip-encoded")
	}
}

// TestChainCatchesAFaultyServer runs the check against the fake with a
// fault injected: Run must fail, saying that the replica differs from the
// source and naming a resource the fault left out.
func TestChainCatchesAFaultyServer(t *testing.T) {
	for _, tc := range []struct {
		name string
		bug  bug
		want string // in the error, with a key the bug dropped
	}{
		{"deletions missing from deleted", omitDeletions, "not in the source"},
		{"the change at transactionTime left out", dropBoundary, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.bug)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			rep, err := chain.Run(ctx, config(f.URL))
			if err == nil {
				t.Fatalf("Run accepted a server whose exports leave changes out: %+v", rep)
			}
			msg := err.Error()
			if !strings.Contains(msg, "the replica differs from the source") || !strings.Contains(msg, tc.want) {
				t.Fatalf("Run failed for another reason: %v", err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			named := false
			for _, key := range f.dropped {
				named = named || strings.Contains(msg, key+" ")
			}
			if !named {
				t.Errorf("the error names none of the resources the server left out (%v): %v", f.dropped, err)
			}
			t.Logf("Run failed as it should: %v", err)
		})
	}
}
