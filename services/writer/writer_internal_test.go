package writer

import (
	"testing"
	"time"
)

// TestRetryDelayBacksOff: failed attempts wait 1 s, then twice as long each
// time, at most 30 s.
func TestRetryDelayBacksOff(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := retryDelay(uint64(i + 1)); got != w {
			t.Errorf("delay after attempt %d = %s, want %s", i+1, got, w)
		}
	}
}
