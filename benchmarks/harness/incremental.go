package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// IncrementalResult is the nightly-feed measurement: a fraction of the
// store changed (updated or deleted), then a _since export from the last
// full export's transactionTime, timed against the full exports of the
// same store in the same run.
type IncrementalResult struct {
	Fraction float64 `json:"changeFraction"`
	Updated  int64   `json:"updated"`
	Deleted  int64   `json:"deleted"`
	Since    string  `json:"since"`
	// Apply runs from the first change request to the last answer (every
	// change durably accepted).
	ApplySeconds float64          `json:"applySeconds"`
	Runs         []IncrementalRun `json:"runs"`
	// Medians over the runs, and the same figures of the full exports.
	MedianToManifest       float64 `json:"medianSecondsToManifest"`
	MedianToDownloaded     float64 `json:"medianSecondsToDownloaded"`
	FullMedianToManifest   float64 `json:"fullMedianSecondsToManifest"`
	FullMedianToDownloaded float64 `json:"fullMedianSecondsToDownloaded"`
	// RatioToFull is the incremental time over the full export time, to
	// the last file downloaded.
	RatioToFull float64 `json:"ratioToFull"`
	// Verified: every run's output held exactly the updated resources and
	// its deleted files exactly the deleted ones.
	Verified bool `json:"verified"`
}

// IncrementalRun is one _since export.
type IncrementalRun struct {
	Run          int     `json:"run"`
	ToManifest   float64 `json:"secondsToManifest"`
	ToDownloaded float64 `json:"secondsToDownloaded"`
	Files        int     `json:"files"`
	Output       int     `json:"output"`
	DeletedOut   int     `json:"deleted"`
}

// incremental changes Fraction of the store, then runs Runs _since
// exports. since is the transactionTime of the last full export.
func (h *harness) incremental(ctx context.Context, since string) (*IncrementalResult, error) {
	o := h.opts
	res := &IncrementalResult{Fraction: o.ChangeFraction, Since: since}
	n := int64(float64(h.report.Ingest.Resources)*o.ChangeFraction + 0.5)
	if n < 1 {
		n = 1
	}
	// The changed set: a hash-ordered sample across every type, its bodies
	// read back as stored (re-sending one makes a new version). The store
	// holds one version of each resource here, and a top-n sort keeps only
	// n bodies in ClickHouse's memory.
	q := fmt.Sprintf("SELECT type, id, body FROM %s ORDER BY cityHash64(type, id) LIMIT %d", h.store.TableName(), n)
	rows, err := h.store.Conn().Query(ctx, q)
	if err != nil {
		return res, fmt.Errorf("choose the changed resources: %w", err)
	}
	var updates bytes.Buffer
	var deletes []string
	updated := map[string]bool{}
	deleted := map[string]bool{}
	i := 0
	for rows.Next() {
		var typ, id, body string
		if err := rows.Scan(&typ, &id, &body); err != nil {
			rows.Close()
			return res, err
		}
		key := typ + "/" + id
		if i%5 == 4 { // one in five is deleted
			deletes = append(deletes, key)
			deleted[key] = true
		} else {
			updates.WriteString(body)
			updates.WriteByte('\n')
			updated[key] = true
		}
		i++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, err
	}
	res.Updated, res.Deleted = int64(len(updated)), int64(len(deleted))
	fmt.Fprintf(o.Progress, "bulkbench: changing %d resources (%d updates, %d deletes) after %s\n", n, res.Updated, res.Deleted, since)

	start := time.Now()
	if updates.Len() > 0 {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/$ingest", bytes.NewReader(updates.Bytes()))
		if err != nil {
			return res, err
		}
		req.Header.Set("Content-Type", "application/fhir+ndjson")
		resp, body, err := h.doWith(h.ingestClient, req)
		if err != nil || resp.StatusCode != http.StatusOK {
			return res, fmt.Errorf("ingest the updates: %v %s", err, statusOf(resp, body))
		}
	}
	for len(deletes) > 0 {
		k := min(len(deletes), 5000)
		if err := h.deleteAll(ctx, deletes[:k]); err != nil {
			return res, err
		}
		deletes = deletes[k:]
	}
	res.ApplySeconds = time.Since(start).Seconds()

	var toMan, toDl []float64
	for run := 1; run <= o.Runs; run++ {
		fmt.Fprintf(o.Progress, "bulkbench: _since export run %d of %d\n", run, o.Runs)
		r, err := h.sinceExport(ctx, run, since, updated, deleted)
		if err != nil {
			return res, fmt.Errorf("_since export run %d: %w", run, err)
		}
		res.Runs = append(res.Runs, r)
		toMan, toDl = append(toMan, r.ToManifest), append(toDl, r.ToDownloaded)
	}
	res.MedianToManifest, res.MedianToDownloaded = medianOf(toMan), medianOf(toDl)
	res.FullMedianToManifest = h.report.Median.ToManifest.Seconds
	res.FullMedianToDownloaded = h.report.Median.ToDownloaded.Seconds
	res.RatioToFull = ratio(res.MedianToDownloaded, res.FullMedianToDownloaded)
	res.Verified = true
	return res, nil
}

// deleteAll deletes resources in one transaction Bundle.
func (h *harness) deleteAll(ctx context.Context, keys []string) error {
	type request struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	}
	type entry struct {
		Request request `json:"request"`
	}
	b := struct {
		ResourceType string  `json:"resourceType"`
		Type         string  `json:"type"`
		Entry        []entry `json:"entry"`
	}{ResourceType: "Bundle", Type: "transaction"}
	for _, k := range keys {
		b.Entry = append(b.Entry, entry{request{Method: http.MethodDelete, URL: k}})
	}
	body, err := json.Marshal(b)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Accept", "application/fhir+json")
	resp, out, err := h.doWith(h.ingestClient, req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("delete %d resources in a transaction: %v %s", len(keys), err, statusOf(resp, out))
	}
	return nil
}

// sinceExport runs one _since export and checks it holds exactly the
// changes: the updated resources in output, the deleted in deleted.
func (h *harness) sinceExport(ctx context.Context, run int, since string, updated, deleted map[string]bool) (IncrementalRun, error) {
	r := IncrementalRun{Run: run}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/$export?_since="+url.QueryEscape(since), nil)
	if err != nil {
		return r, err
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	resp, body, err := h.do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		return r, fmt.Errorf("kick-off: %v %s", err, statusOf(resp, body))
	}
	status := resp.Header.Get("Content-Location")
	m, _, err := h.await(ctx, status)
	if err != nil {
		return r, err
	}
	r.ToManifest = time.Since(start).Seconds()
	r.Files = len(m.Output) + len(m.Deleted)
	out, err := h.keysOf(ctx, m.Output, false)
	if err != nil {
		return r, err
	}
	gone, err := h.keysOf(ctx, m.Deleted, true)
	if err != nil {
		return r, err
	}
	r.ToDownloaded = time.Since(start).Seconds()
	r.Output, r.DeletedOut = len(out), len(gone)
	if d := diff(out, updated); d != "" {
		return r, fmt.Errorf("output differs from the updated resources: %s", d)
	}
	if d := diff(gone, deleted); d != "" {
		return r, fmt.Errorf("deleted differs from the deleted resources: %s", d)
	}
	if err := h.release(ctx, status); err != nil {
		h.warn("_since run %d: releasing the export: %v", run, err)
	}
	return r, nil
}

// keysOf downloads files and returns the Type/id of each line: of the
// resource, or of the DELETE request of a deleted-file Bundle.
func (h *harness) keysOf(ctx context.Context, items []manifestItem, deletions bool) (map[string]bool, error) {
	keys := map[string]bool{}
	for _, it := range items {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, it.URL, nil)
		if err != nil {
			return nil, err
		}
		resp, err := h.downloadClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("GET %s: %w", it.URL, err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		lines := 0
		for sc.Scan() {
			var line struct {
				ResourceType string `json:"resourceType"`
				ID           string `json:"id"`
				Entry        []struct {
					Request struct {
						Method string `json:"method"`
						URL    string `json:"url"`
					} `json:"request"`
				} `json:"entry"`
			}
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				resp.Body.Close()
				return nil, fmt.Errorf("%s line %d: %w", it.URL, lines+1, err)
			}
			lines++
			if !deletions {
				keys[line.ResourceType+"/"+line.ID] = true
				continue
			}
			for _, e := range line.Entry {
				if e.Request.Method == http.MethodDelete {
					keys[e.Request.URL] = true
				}
			}
		}
		resp.Body.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("GET %s: %w", it.URL, err)
		}
		if it.Count == nil || lines != *it.Count {
			return nil, fmt.Errorf("%s: %d lines, manifest count %v", it.URL, lines, it.Count)
		}
	}
	return keys, nil
}

// diff describes how got and want differ, "" when they are equal.
func diff(got, want map[string]bool) string {
	var extra, missing []string
	for k := range got {
		if !want[k] {
			extra = append(extra, k)
		}
	}
	for k := range want {
		if !got[k] {
			missing = append(missing, k)
		}
	}
	if len(extra) == 0 && len(missing) == 0 {
		return ""
	}
	sort.Strings(extra)
	sort.Strings(missing)
	clip := func(s []string) string {
		if len(s) > 5 {
			return strings.Join(s[:5], ", ") + fmt.Sprintf(" and %d more", len(s)-5)
		}
		return strings.Join(s, ", ")
	}
	return fmt.Sprintf("%d unexpected (%s), %d missing (%s)", len(extra), clip(extra), len(missing), clip(missing))
}

func statusOf(resp *http.Response, body []byte) string {
	if resp == nil {
		return ""
	}
	if len(body) > 512 {
		body = body[:512]
	}
	return resp.Status + ": " + string(body)
}
