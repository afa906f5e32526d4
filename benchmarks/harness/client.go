package harness

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
)

// ClientResult is how long a real client waits for a whole system export:
// one that honours Retry-After exactly (never polling sooner) and parses
// every body strictly, as the SMART bulk-data-client does. Unlike the runs
// above, its polling is the server's to pace, so this is the latency a
// client sees, not the engine's throughput.
type ClientResult struct {
	Runs int `json:"runs"`
	// Medians over the runs, in seconds.
	ToManifest   float64 `json:"kickoffToManifestSeconds"`
	ToDownloaded float64 `json:"kickoffToDownloadedSeconds"`
	// Polls is the median number of status requests per export; Throttled
	// counts 429 answers over every run (a client honouring Retry-After
	// should see none).
	Polls     int `json:"polls"`
	Throttled int `json:"throttled"`
	// RunsToManifest and RunsToDownloaded are each run's seconds.
	RunsToManifest   []float64 `json:"runsToManifestSeconds"`
	RunsToDownloaded []float64 `json:"runsToDownloadedSeconds"`
}

// clientExports runs n system exports with the strict client, downloading
// every file (checked against its count) DownloadParallel at a time, gzip
// encoded as a client asks for them, and releasing the export.
func (h *harness) clientExports(ctx context.Context, n int) (*ClientResult, error) {
	c := &bulkclient.Client{HTTP: h.downloadClient, MaxRetryAfter: time.Minute}
	res := &ClientResult{Runs: n}
	var polls []int
	for run := 1; run <= n; run++ {
		fmt.Fprintf(h.opts.Progress, "bulkbench: client export %d of %d\n", run, n)
		start := time.Now()
		status, err := c.Kickoff(ctx, h.base+"/$export")
		if err != nil {
			return res, fmt.Errorf("client export %d: %w", run, err)
		}
		m, st, err := c.Await(ctx, status)
		if err != nil {
			return res, fmt.Errorf("client export %d: %w", run, err)
		}
		toManifest := time.Since(start)
		files, err := c.DownloadAll(ctx, m, h.opts.DownloadParallel, func(bulkclient.Kind, bulkclient.File) (func([]byte) error, error) {
			return func([]byte) error { return nil }, nil
		})
		if err != nil {
			return res, fmt.Errorf("client export %d: %w", run, err)
		}
		exported := map[string]int64{}
		for _, f := range files {
			if f.Kind == bulkclient.KindOutput {
				exported[f.File.Type] += int64(f.Lines)
			}
		}
		toDownloaded := time.Since(start)
		if err := h.verifyTotals(exported); err != nil {
			return res, fmt.Errorf("client export %d: %w", run, err)
		}
		if err := c.Delete(ctx, status); err != nil {
			h.warn("client export %d: releasing it: %v", run, err)
		}
		res.RunsToManifest = append(res.RunsToManifest, toManifest.Seconds())
		res.RunsToDownloaded = append(res.RunsToDownloaded, toDownloaded.Seconds())
		polls = append(polls, st.Polls)
		res.Throttled += st.Throttled
	}
	res.ToManifest, res.ToDownloaded = medianOf(res.RunsToManifest), medianOf(res.RunsToDownloaded)
	sort.Ints(polls)
	res.Polls = polls[len(polls)/2]
	return res, nil
}
