package flatfhir_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// stopOrder records the services in the order the engine reports them
// stopped.
type stopOrder struct {
	mu    *sync.Mutex
	names *[]string
	attrs []slog.Attr
}

func (h stopOrder) Enabled(context.Context, slog.Level) bool { return true }
func (h stopOrder) WithGroup(string) slog.Handler            { return h }
func (h stopOrder) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(slices.Clone(h.attrs), as...)
	return h
}

func (h stopOrder) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "service stopped" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "service" {
			h.mu.Lock()
			*h.names = append(*h.names, a.Value.String())
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

// TestE2EShutdownStopsTheAPIFirstThenTheWorkersThenTheIngester: the
// documented shutdown order of Engine.Run. The API stops taking work (and
// answers what is in flight) before the planner and writers stop, and the
// ingester, which applies what the API accepted, stops last.
func TestE2EShutdownStopsTheAPIFirstThenTheWorkersThenTheIngester(t *testing.T) {
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 2, Replicas: 1,
	}
	var mu sync.Mutex
	var names []string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e, err := flatfhir.Start(ctx, cfg, flatfhir.Tuning{}, slog.New(stopOrder{mu: &mu, names: &names}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	// The engine serves before it is stopped.
	if resp, _ := do(t, "GET", e.APIURL()+"/metadata", nil); resp.StatusCode != 200 {
		t.Fatalf("metadata: %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("engine stopped with: %v", err)
	}
	rank := func(name string) int {
		switch {
		case name == "api":
			return 0
		case name == "planner" || strings.HasPrefix(name, "writer"):
			return 1
		case name == "ingester":
			return 2
		}
		t.Fatalf("unknown service %q stopped", name)
		return -1
	}
	if len(names) != 5 || !slices.IsSortedFunc(names, func(a, b string) int { return rank(a) - rank(b) }) {
		t.Errorf("services stopped in the order %v, want the api, then the planner and 2 writers, then the ingester", names)
	}
}
