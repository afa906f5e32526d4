package flatfhir_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestDebugListenServesProfiles: with FLATFHIR_DEBUG_LISTEN set, a
// process serves its runtime profiles there, apart from the API, which
// does not serve them.
func TestDebugListenServesProfiles(t *testing.T) {
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1, DebugListen: "127.0.0.1:0",
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1,
	}
	ctx, cancel := context.WithCancel(t.Context())
	e, err := flatfhir.Start(ctx, cfg, flatfhir.Tuning{}, testenv.Logger(t))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine stopped with: %v", err)
		}
	}()
	if e.DebugAddr() == "" {
		t.Fatal("no debug server")
	}
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("http://" + e.DebugAddr() + "/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Errorf("goroutine profile: %d %.200s", code, body)
	}
	if code, body := get("http://" + e.DebugAddr() + "/debug/pprof/profile?seconds=1"); code != 200 || len(body) == 0 {
		t.Errorf("CPU profile: %d, %d bytes", code, len(body))
	}
	if code, _ := get(e.APIURL() + "/debug/pprof/"); code == 200 {
		t.Error("the API serves the profiles too")
	}
}
