package planner

import (
	"testing"
	"time"
)

// SetSlowWatermark makes the planner warn of a kick-off waiting for ingest
// after d, until the test ends. Call it before starting a planner.
func SetSlowWatermark(t testing.TB, d time.Duration) {
	old := slowWatermark
	slowWatermark = d
	t.Cleanup(func() { slowWatermark = old })
}
