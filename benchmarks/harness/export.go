package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/klauspost/compress/gzip"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
	"github.com/flatfhir/flatfhir/streams"
)

// manifest is the complete-status body of an export, as the strict client
// reads it, and manifestItem one of its files.
type (
	manifest     = bulkclient.Manifest
	manifestItem = bulkclient.File
)

// export runs one system-level export, downloads and verifies every file.
func (h *harness) export(ctx context.Context, run int) (RunResult, error) {
	return h.exportWith(ctx, run, nil)
}

// exportWith is export, calling during(start) in its own goroutine once the
// export is kicked off; the export waits for it before it returns.
func (h *harness) exportWith(ctx context.Context, run int, during func(start time.Time) error) (_ RunResult, err error) {
	res := RunResult{Run: run}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/$export", nil)
	if err != nil {
		return res, err
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	resp, body, err := h.do(req)
	if err != nil {
		return res, fmt.Errorf("kick-off: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return res, fmt.Errorf("kick-off: %s: %s", resp.Status, body)
	}
	res.StatusURL = resp.Header.Get("Content-Location")
	if !strings.HasPrefix(res.StatusURL, h.base+"/") {
		return res, fmt.Errorf("kick-off: Content-Location %q is not a URL on %s", res.StatusURL, h.base)
	}
	if during != nil {
		done := make(chan error, 1)
		go func() { done <- during(start) }()
		defer func() {
			if derr := <-done; derr != nil && err == nil {
				err = derr
			}
		}()
	}

	m, polls, err := h.await(ctx, res.StatusURL)
	res.Polls = polls
	if err != nil {
		return res, err
	}
	toManifest := time.Since(start)
	res.TransactionTime = m.TransactionTime
	if len(m.Error) != 0 || len(m.Deleted) != 0 {
		return res, fmt.Errorf("export %s: manifest lists %d error and %d deleted files, want none", res.StatusURL, len(m.Error), len(m.Deleted))
	}
	res.Files = len(m.Output)

	h.wireBytes.Store(0)
	exported, bytes, err := h.downloadAll(ctx, m)
	res.WireBytes = h.wireBytes.Load()
	if err != nil {
		return res, fmt.Errorf("export %s: %w", res.StatusURL, err)
	}
	toDownloaded := time.Since(start)
	if err := h.verifyTotals(exported); err != nil {
		return res, fmt.Errorf("export %s: %w", res.StatusURL, err)
	}
	res.Verified = true
	total := h.report.Ingest.Resources
	res.ToManifest = newRate(toManifest, total, bytes)
	res.ToDownloaded = newRate(toDownloaded, total, bytes)
	return res, nil
}

// await polls the status URL with the strict client until the manifest
// arrives: at the server's Retry-After when that is shorter than the poll
// interval, otherwise at the poll interval, so that completion is seen
// within one interval. It gives up when a child process dies.
func (h *harness) await(ctx context.Context, status string) (manifest, int, error) {
	ctx, cancel := context.WithTimeout(ctx, h.opts.ExportTimeout)
	defer cancel()
	lastProgress := ""
	c := &bulkclient.Client{HTTP: h.client, MaxRetryAfter: h.opts.PollInterval,
		OnProgress: func(p bulkclient.Progress) {
			if p.XProgress != lastProgress {
				lastProgress = p.XProgress
				fmt.Fprintf(h.opts.Progress, "bulkbench: export %s\n", p.XProgress)
			}
		},
		Sleep: func(ctx context.Context, d time.Duration) error {
			if err := h.childrenAlive(); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
				return nil
			}
		},
	}
	m, st, err := c.Await(ctx, status)
	if err != nil {
		return m, st.Polls, fmt.Errorf("export %s (%s): %w", status, lastProgress, err)
	}
	return m, st.Polls, nil
}

// downloadAll fetches every output file, DownloadParallel at a time, and
// checks each against its manifest count. It returns the resources per
// type and the bytes downloaded.
func (h *harness) downloadAll(ctx context.Context, m manifest) (map[string]int64, int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu       sync.Mutex
		perType  = map[string]int64{}
		total    int64
		firstErr error
		wg       sync.WaitGroup
	)
	items := make(chan manifestItem)
	for range h.opts.DownloadParallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range items {
				lines, n, err := h.download(ctx, it)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
					cancel(err)
				}
				perType[it.Type] += lines
				total += n
				mu.Unlock()
			}
		}()
	}
feed:
	for _, it := range m.Output {
		if it.Count == nil {
			mu.Lock()
			if firstErr == nil {
				firstErr = fmt.Errorf("manifest entry %s has no count", it.URL)
			}
			mu.Unlock()
			break
		}
		select {
		case items <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(items)
	wg.Wait()
	return perType, total, firstErr
}

// download streams one file, counting its lines and bytes and checking that
// every line is one JSON object.
func (h *harness) download(ctx context.Context, it manifestItem) (lines, n int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, it.URL, nil)
	if err != nil {
		return 0, 0, err
	}
	// As real clients do: the server sends files stored compressed as
	// they are (docs/adr/0009), and this client decompresses them.
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := h.downloadClient.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("GET %s: %w", it.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, 0, fmt.Errorf("GET %s: %s: %s", it.URL, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/fhir+ndjson" {
		return 0, 0, fmt.Errorf("GET %s: Content-Type %q, want application/fhir+ndjson", it.URL, ct)
	}
	wire := &countingReader{r: resp.Body}
	defer func() { h.wireBytes.Add(wire.n) }()
	var body io.Reader = wire
	switch enc := resp.Header.Get("Content-Encoding"); enc {
	case "":
	case "gzip":
		zr, err := gzip.NewReader(wire)
		if err != nil {
			return 0, 0, fmt.Errorf("GET %s: Content-Encoding gzip: %w", it.URL, err)
		}
		body = zr
	default:
		return 0, 0, fmt.Errorf("GET %s: Content-Encoding %q, asked for gzip", it.URL, enc)
	}
	buf := make([]byte, 256<<10)
	prev := byte('\n') // the byte before the current position
	for {
		k, rerr := body.Read(buf)
		chunk := buf[:k]
		for len(chunk) > 0 {
			if prev == '\n' && chunk[0] != '{' {
				return lines, n, fmt.Errorf("%s: line %d does not start a JSON object", it.URL, lines+1)
			}
			i := bytes.IndexByte(chunk, '\n')
			if i < 0 {
				prev = chunk[len(chunk)-1]
				n += int64(len(chunk))
				break
			}
			last := prev
			if i > 0 {
				last = chunk[i-1]
			}
			if last != '}' {
				return lines, n, fmt.Errorf("%s: line %d does not end a JSON object", it.URL, lines+1)
			}
			lines++
			n += int64(i + 1)
			prev = '\n'
			chunk = chunk[i+1:]
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return lines, n, fmt.Errorf("GET %s: %w", it.URL, rerr)
		}
	}
	if prev != '\n' {
		if prev != '}' {
			return lines, n, fmt.Errorf("%s: last line does not end a JSON object", it.URL)
		}
		lines++ // a last line without a newline
	}
	if lines != int64(*it.Count) {
		return lines, n, fmt.Errorf("%s: manifest count %d, file has %d lines", it.URL, *it.Count, lines)
	}
	return lines, n, nil
}

// verifyTotals compares what an export held with what was ingested.
func (h *harness) verifyTotals(exported map[string]int64) error {
	want := h.report.Ingest.PerType
	var total int64
	var diffs []string
	seen := map[string]bool{}
	for typ, n := range exported {
		total += n
		seen[typ] = true
		if n != want[typ] {
			diffs = append(diffs, fmt.Sprintf("%s %d (ingested %d)", typ, n, want[typ]))
		}
	}
	for typ, n := range want {
		if !seen[typ] {
			diffs = append(diffs, fmt.Sprintf("%s 0 (ingested %d)", typ, n))
		}
	}
	sort.Strings(diffs)
	if total != h.report.Ingest.Resources || len(diffs) > 0 {
		return fmt.Errorf("exported %d resources, ingested %d; per type: %s", total, h.report.Ingest.Resources, strings.Join(diffs, ", "))
	}
	return nil
}

// release deletes the export and waits until its files are gone, so that
// the next run starts from the same state.
func (h *harness) release(ctx context.Context, status string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, status, nil)
	if err != nil {
		return err
	}
	resp, body, err := h.do(req)
	if err != nil {
		return fmt.Errorf("DELETE %s: %w", status, err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("DELETE %s: %s: %s", status, resp.Status, body)
	}
	job := status[strings.LastIndexByte(status, '/')+1:]
	store, err := h.js.ObjectStore(ctx, streams.ObjectFiles)
	if err != nil {
		return err
	}
	prefix := streams.ObjectName(job, "")
	deadline := time.Now().Add(5 * time.Minute)
	for {
		left := 0
		infos, err := store.List(ctx)
		if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
			return fmt.Errorf("list export files: %w", err)
		}
		for _, info := range infos {
			if strings.HasPrefix(info.Name, prefix) {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d files of deleted export %s still stored after 5 minutes", left, job)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// rawRead streams SELECT id, body of the whole table, as the engine's
// writers read (same driver, same block size), counting rows and bytes.
// On a cluster every shard is read at once, each from one replica.
func (h *harness) rawRead(ctx context.Context) (Rate, error) {
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(h.store.BlockSettings()))
	start := time.Now()
	q := "SELECT id, body FROM " + h.store.TableName()
	conns := h.store.ShardConns()
	ns, sizes, errs := make([]int64, len(conns)), make([]int64, len(conns)), make([]error, len(conns))
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns[i], sizes[i], errs[i] = readAll(ctx, conn, q)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Rate{}, err
	}
	var n, bytes int64
	for i := range conns {
		n, bytes = n+ns[i], bytes+sizes[i]
	}
	d := time.Since(start)
	if n != h.report.Ingest.Resources {
		return Rate{}, fmt.Errorf("%s returned %d rows, want the %d ingested", q, n, h.report.Ingest.Resources)
	}
	return newRate(d, n, bytes), nil
}

// readAll streams q (selecting id and body) and counts rows and bytes.
func readAll(ctx context.Context, conn driver.Conn, q string) (n, bytes int64, err error) {
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", q, err)
	}
	defer rows.Close()
	var id string
	var body []byte // as the writers scan
	for rows.Next() {
		if err := rows.Scan(&id, &body); err != nil {
			return 0, 0, fmt.Errorf("%s: scan: %w", q, err)
		}
		n++
		bytes += int64(len(body)) + 1
	}
	if err := rows.Err(); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", q, err)
	}
	return n, bytes, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += int64(k)
	return k, err
}
