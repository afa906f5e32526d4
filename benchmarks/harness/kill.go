package harness

import (
	"context"
	"fmt"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
)

// KillResult is an export during which the writer process was killed with
// SIGKILL and started again at once, as a supervisor (systemd, Kubernetes)
// restarts it.
type KillResult struct {
	// KilledAfter is when the writer was killed, in seconds after the
	// kick-off: 40 % of the median export's time to its manifest, so that
	// tasks are in progress.
	KilledAfter  float64 `json:"killedAfterSeconds"`
	ToManifest   float64 `json:"toManifestSeconds"`
	ToDownloaded float64 `json:"toDownloadedSeconds"`
	// ExtraSeconds is ToManifest minus the median export's.
	ExtraSeconds float64 `json:"extraSeconds"`
	Verified     bool    `json:"verified"`
}

// writerKill runs the export with the writer killed.
func (h *harness) writerKill(ctx context.Context) (*KillResult, error) {
	median := h.report.Median.ToManifest.Seconds
	k := &KillResult{KilledAfter: 0.4 * median}
	fmt.Fprintf(h.opts.Progress, "bulkbench: export with the writer killed %.2f s after the kick-off\n", k.KilledAfter)
	res, err := h.exportWith(ctx, 0, func(start time.Time) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(start.Add(time.Duration(k.KilledAfter * float64(time.Second))))):
		}
		return h.restartRole(flatfhir.RoleWriter)
	})
	if err != nil {
		return k, err
	}
	if err := h.release(ctx, res.StatusURL); err != nil {
		h.warn("writer kill: releasing the export: %v", err)
	}
	k.ToManifest, k.ToDownloaded = res.ToManifest.Seconds, res.ToDownloaded.Seconds
	k.ExtraSeconds = k.ToManifest - median
	k.Verified = res.Verified
	return k, nil
}

// restartRole kills the process of role with SIGKILL, waits for it to be
// gone, and starts it again with the same environment.
func (h *harness) restartRole(role string) error {
	h.childMu.Lock()
	defer h.childMu.Unlock()
	for i, c := range h.children {
		if c.role != role {
			continue
		}
		if err := c.cmd.Process.Kill(); err != nil {
			return fmt.Errorf("kill the %s: %w", role, err)
		}
		<-c.done
		nc, err := startChild(c.bin, c.role, c.env, c.logPath+".restarted")
		if err != nil {
			return err
		}
		nc.debug = c.debug
		h.children[i] = nc
		return nil
	}
	return fmt.Errorf("no %s process", role)
}
