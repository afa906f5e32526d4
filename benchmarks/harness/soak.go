package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
	"github.com/flatfhir/flatfhir/shared/bulkclient/chain"
	"github.com/flatfhir/flatfhir/shared/synth"
	"github.com/flatfhir/flatfhir/streams"
)

// soakRetention is FLATFHIR_RETENTION during a soak: short, so that the
// janitor removes the exports nobody released within the soak's end.
const soakRetention = 30 * time.Second

// soakBatchPatients is the size of one of the soak's ingest batches (about
// 500 resources).
const soakBatchPatients = 10

// SoakResult is what a soak did and found.
type SoakResult struct {
	// Seconds is the length of the load, InitialResources the store's
	// size before it.
	Seconds          float64 `json:"seconds"`
	InitialResources int64   `json:"initialResources"`
	// Ingest is the continuous ingest of new patients.
	Ingest SoakIngest `json:"ingest"`
	// Exports are the verified exports, by level.
	Exports []SoakExports `json:"exports"`
	// Cancelled counts exports kicked off and cancelled with DELETE (each
	// then answered 404).
	Cancelled int `json:"cancelled"`
	// Polls are the status pollers' requests.
	Polls SoakPolls `json:"polls"`
	// Chain sums the chained-export checks (FHIR writes, transactions,
	// Group changes and _since chains, each replayed exactly).
	Chain SoakChain `json:"chain"`
	// Final is the exact system export after the load stopped.
	Final SoakFinal `json:"final"`
	// Before and After are the stores' state before the load and once the
	// janitor ran; BaselineSeconds how long after the load that took.
	Before          StoreState `json:"before"`
	After           StoreState `json:"after"`
	BaselineSeconds float64    `json:"baselineSeconds"`
	// Samples are every process's memory and goroutines over time, and
	// Trends what they say.
	Samples []Sample `json:"samples"`
	Trends  []Trend  `json:"trends"`
	// Logs counts the warnings and errors of the engine's logs.
	Logs []LogCount `json:"logs"`
	// Failures are what the soak found wrong; none when it passed.
	Failures []string `json:"failures,omitempty"`
	// HTML is the report with its plots, when one was written.
	HTML string `json:"html,omitempty"`
}

// SoakIngest is the soak's ingest.
type SoakIngest struct {
	Batches   int     `json:"batches"`
	Resources int64   `json:"resources"`
	PerSec    float64 `json:"resourcesPerSec"`
}

// SoakExports are the exports of one level, each verified.
type SoakExports struct {
	Level     string `json:"level"`
	Completed int    `json:"completed"`
	// Released by DELETE; the others were left to the janitor.
	Released  int     `json:"released"`
	Resources int64   `json:"resources"`
	Median    float64 `json:"medianSeconds"`
	Max       float64 `json:"maxSeconds"`
	seconds   []float64
}

// SoakPolls are the pollers' status requests.
type SoakPolls struct {
	Requests int            `json:"requests"`
	ByStatus map[string]int `json:"byStatus"`
	P50      float64        `json:"p50Millis"`
	P95      float64        `json:"p95Millis"`
	P99      float64        `json:"p99Millis"`
}

// SoakChain sums the chained-export checks.
type SoakChain struct {
	Runs       int `json:"runs"`
	Rounds     int `json:"rounds"`
	Changes    int `json:"changes"`
	Concurrent int `json:"concurrentWrites"`
	Straddled  int `json:"straddled"`
}

// SoakFinal is the last export.
type SoakFinal struct {
	Resources int64   `json:"resources"`
	Expected  int64   `json:"expected"`
	Seconds   float64 `json:"seconds"`
	Exact     bool    `json:"exact"`
}

// soakRun is a soak in progress.
type soakRun struct {
	h     *harness
	res   *SoakResult
	idx   *keyIndex
	group string // the initial load's Group
	stop  chan struct{}
	fail  context.CancelCauseFunc
	start time.Time

	mu        sync.Mutex
	exports   map[string]*SoakExports
	live      map[string]bool // status URLs of exports in progress
	latencies []float64
	ingested  atomic.Int64
	completed atomic.Int64
}

// soak runs the load for Options.Soak, then checks the end state.
func (h *harness) soak(ctx context.Context) (*SoakResult, error) {
	o := h.opts
	res := &SoakResult{Polls: SoakPolls{ByStatus: map[string]int{}}}
	s := &soakRun{h: h, res: res, idx: newKeyIndex(), stop: make(chan struct{}),
		exports: map[string]*SoakExports{}, live: map[string]bool{}}
	// The initial load, as ingest sent it.
	initial, err := generateBatch(ctx, synth.Config{Patients: o.Patients, Seed: o.Seed}, nil)
	if err != nil {
		return res, err
	}
	if initial.all != h.report.Ingest.Resources {
		return res, fmt.Errorf("the initial load has %d resources, the ingest sent %d", initial.all, h.report.Ingest.Resources)
	}
	s.group = initial.group
	res.InitialResources = initial.all
	if _, err := s.idx.add(initial); err != nil {
		return res, err
	}
	s.idx.ack(0)
	if res.Before, err = h.storeState(ctx); err != nil {
		return res, err
	}

	fmt.Fprintf(o.Progress, "bulkbench: soak for %s: ingest (%d resources/s), FHIR writes, exports at three levels, _since chains, pollers, cancellations\n", o.Soak, o.SoakIngestRate)
	sampler := h.startSampler(o.SoakSampleEvery, &s.ingested, &s.completed)
	wctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	s.fail = fail
	s.start = time.Now()
	var wg sync.WaitGroup
	var failMu sync.Mutex
	worker := func(name string, fn func(context.Context) error) {
		wg.Go(func() {
			if err := fn(wctx); err != nil && !errors.Is(err, context.Canceled) {
				failMu.Lock()
				res.Failures = append(res.Failures, name+": "+err.Error())
				failMu.Unlock()
				fail(fmt.Errorf("%s: %w", name, err))
			}
		})
	}
	worker("ingest", s.ingestLoop)
	worker("system exports", func(ctx context.Context) error {
		return s.exportLoop(ctx, "system", "/$export?_outputFormat="+url.QueryEscape("application/fhir+ndjson"), false, false)
	})
	worker("Patient exports", func(ctx context.Context) error {
		return s.exportLoop(ctx, "Patient", "/Patient/$export?_type="+compartmentTypeList, true, false)
	})
	worker("Group exports", func(ctx context.Context) error {
		return s.exportLoop(ctx, "Group", "/Group/"+s.group+"/$export?_type="+compartmentTypeList, true, true)
	})
	worker("chained exports", s.chainLoop)
	worker("cancellations", s.cancelLoop)
	for i := range 4 {
		worker(fmt.Sprintf("poller %d", i+1), s.pollLoop)
	}
	select {
	case <-time.After(o.Soak):
	case <-wctx.Done():
	}
	fmt.Fprintf(o.Progress, "bulkbench: soak load done after %s; finishing the steps in progress\n", time.Since(s.start).Round(time.Second))
	h.saveHeapProfile("harness-heap-end-of-load.pprof")
	close(s.stop)
	wg.Wait()
	res.Seconds = time.Since(s.start).Seconds()
	s.summarize()

	if len(res.Failures) == 0 && ctx.Err() == nil {
		if err := s.final(ctx); err != nil {
			res.Failures = append(res.Failures, "final export: "+err.Error())
		}
	}
	if len(res.Failures) == 0 && ctx.Err() == nil {
		if err := s.baseline(ctx); err != nil {
			res.Failures = append(res.Failures, "baseline: "+err.Error())
		}
	}
	res.Samples = sampler.stop()
	res.Trends = trends(res.Samples, res.Seconds)
	for _, t := range res.Trends {
		if t.Checked && !t.Flat {
			res.Failures = append(res.Failures, fmt.Sprintf("%s is not flat: %s", t.Process, t.Why))
		}
	}
	res.Logs = h.scanLogs()
	for _, l := range res.Logs {
		if l.Unexpected {
			res.Failures = append(res.Failures, fmt.Sprintf("%s logged %d× %s %q", l.Process, l.Count, l.Level, l.Message))
		}
	}
	if o.SoakHTML != "" {
		if err := writeSoakHTML(o.SoakHTML, h.report, res); err != nil {
			h.warn("soak report: %v", err)
		} else {
			res.HTML = o.SoakHTML
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if len(res.Failures) > 0 {
		return res, fmt.Errorf("%d failures, the first: %s", len(res.Failures), res.Failures[0])
	}
	return res, nil
}

// stopping reports whether the soak's time is up.
func (s *soakRun) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// pause waits d, or less when the soak ends.
func (s *soakRun) pause(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stop:
		return nil
	case <-time.After(d):
		return nil
	}
}

// ingestLoop ingests new batches of patients, one request at a time, at
// most SoakIngestRate resources a second.
func (s *soakRun) ingestLoop(ctx context.Context) error {
	o := s.h.opts
	start := time.Now()
	var sent int64
	for k := uint64(1); !s.stopping(); k++ {
		var body strings.Builder
		b, err := generateBatch(ctx, synth.Config{Patients: soakBatchPatients, Seed: soakSeedBase + k}, &body)
		if err != nil {
			return err
		}
		n, err := s.idx.add(b)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.h.base+"/$ingest", strings.NewReader(body.String()))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/fhir+ndjson")
		resp, out, err := s.h.doWith(s.h.ingestClient, req)
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("batch %d: %v %s", n, err, statusOf(resp, out))
		}
		s.idx.ack(n)
		s.res.Ingest.Batches++
		s.res.Ingest.Resources += b.all
		s.ingested.Add(b.all)
		sent += b.all
		if err := s.pause(ctx, time.Until(start.Add(time.Duration(float64(sent)/float64(o.SoakIngestRate)*float64(time.Second))))); err != nil {
			return err
		}
	}
	s.res.Ingest.PerSec = float64(s.res.Ingest.Resources) / time.Since(start).Seconds()
	return nil
}

// client is the strict Bulk Data client the soak's exports use: it honours
// Retry-After up to a second.
func (s *soakRun) client() *bulkclient.Client {
	return &bulkclient.Client{HTTP: s.h.downloadClient, MaxRetryAfter: time.Second}
}

// exportLoop runs exports of path one after the other, each checked
// against what the soak wrote; one in four is left to the janitor.
func (s *soakRun) exportLoop(ctx context.Context, level, path string, compartment, initialOnly bool) error {
	c := s.client()
	for n := 1; !s.stopping(); n++ {
		start := time.Now()
		check := newExportCheck(s.idx, compartment, initialOnly)
		status, err := c.Kickoff(ctx, s.h.base+path)
		if err != nil {
			return err
		}
		s.track(status, true)
		m, _, err := c.Await(ctx, status)
		s.track(status, false)
		if err != nil {
			return fmt.Errorf("export %s: %w", status, err)
		}
		if len(m.Error) > 0 || len(m.Deleted) > 0 {
			return fmt.Errorf("export %s: %d error and %d deleted files, want none", status, len(m.Error), len(m.Deleted))
		}
		if _, err := c.DownloadAll(ctx, m, s.h.opts.DownloadParallel, func(bulkclient.Kind, bulkclient.File) (func([]byte) error, error) {
			return check.line, nil
		}); err != nil {
			return fmt.Errorf("export %s: %w", status, err)
		}
		got, err := check.finish()
		if err != nil {
			return fmt.Errorf("export %s: %w", status, err)
		}
		released := n%4 != 0
		if released {
			if err := c.Delete(ctx, status); err != nil {
				return fmt.Errorf("export %s: %w", status, err)
			}
		}
		s.completed.Add(1)
		s.mu.Lock()
		e := s.exports[level]
		if e == nil {
			e = &SoakExports{Level: level}
			s.exports[level] = e
		}
		e.Completed++
		if released {
			e.Released++
		}
		e.Resources += got
		e.seconds = append(e.seconds, time.Since(start).Seconds())
		s.mu.Unlock()
	}
	return nil
}

// track adds or removes an export the pollers may poll.
func (s *soakRun) track(status string, live bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if live {
		s.live[status] = true
	} else {
		delete(s.live, status)
	}
}

// chainLoop runs chained-export checks one after the other, each on ids of
// its own: creates, updates, deletes, transactions and Group changes,
// exported with _since while other writes go on, replayed exactly.
func (s *soakRun) chainLoop(ctx context.Context) error {
	for i := 0; !s.stopping(); i++ {
		rep, err := chain.Run(ctx, chain.Config{
			Base: s.h.base, Rounds: 2, Changes: 100, Pool: 50, Concurrent: 20, Seed: uint64(i + 1),
			Prefix: fmt.Sprintf("%s%d-", soakChainPrefix, i), Timeout: s.h.opts.ExportTimeout,
			Parallel: s.h.opts.DownloadParallel, Client: s.h.downloadClient,
		})
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		s.completed.Add(int64(rep.Rounds))
		s.mu.Lock()
		ch := &s.res.Chain
		ch.Runs++
		ch.Rounds += rep.Rounds
		ch.Changes += rep.Changes
		ch.Concurrent += rep.Concurrent
		ch.Straddled += rep.Straddled
		s.mu.Unlock()
	}
	return nil
}

// cancelLoop kicks off exports at each level and cancels them after a
// random moment, checking that the export is then gone.
func (s *soakRun) cancelLoop(ctx context.Context) error {
	c := s.client()
	rng := rand.New(rand.NewPCG(s.h.opts.Seed, 7))
	paths := []string{"/$export?_outputFormat=ndjson", "/Patient/$export?_outputFormat=ndjson", "/Group/" + s.group + "/$export?_outputFormat=ndjson"}
	for n := 0; !s.stopping(); n++ {
		status, err := c.Kickoff(ctx, s.h.base+paths[n%len(paths)])
		if err != nil {
			return err
		}
		if err := s.pause(ctx, time.Duration(rng.Int64N(int64(2*time.Second)))); err != nil {
			return err
		}
		if err := c.Delete(ctx, status); err != nil {
			return fmt.Errorf("cancel %s: %w", status, err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, status, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/fhir+json")
		resp, body, err := s.h.do(req)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/fhir+json") {
			return fmt.Errorf("status of the cancelled export %s: %s", status, statusOf(resp, body))
		}
		s.mu.Lock()
		s.res.Cancelled++
		s.mu.Unlock()
		if err := s.pause(ctx, time.Second); err != nil {
			return err
		}
	}
	return nil
}

// pollLoop polls the status of exports in progress, as impatient clients
// do, and notes each answer's status and latency. Any answer but 200, 202
// and 404 (an export released meanwhile) is a failure.
func (s *soakRun) pollLoop(ctx context.Context) error {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	for !s.stopping() {
		s.mu.Lock()
		var live []string
		for st := range s.live {
			live = append(live, st)
		}
		s.mu.Unlock()
		if len(live) == 0 {
			if err := s.pause(ctx, 50*time.Millisecond); err != nil {
				return err
			}
			continue
		}
		sort.Strings(live)
		status := live[rng.IntN(len(live))]
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, status, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/fhir+json")
		start := time.Now()
		resp, body, err := s.h.do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("GET %s: %w", status, err)
		}
		ms := float64(time.Since(start).Microseconds()) / 1000
		s.mu.Lock()
		s.res.Polls.Requests++
		s.res.Polls.ByStatus[fmt.Sprint(resp.StatusCode)]++
		s.latencies = append(s.latencies, ms)
		s.mu.Unlock()
		switch resp.StatusCode {
		case http.StatusOK, http.StatusAccepted, http.StatusNotFound:
		default:
			return fmt.Errorf("GET %s: %s", status, statusOf(resp, body))
		}
		if err := s.pause(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// summarize fills in the result's exports and poll latencies.
func (s *soakRun) summarize() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, level := range []string{"system", "Patient", "Group"} {
		e := s.exports[level]
		if e == nil {
			e = &SoakExports{Level: level}
		}
		e.Median = medianOf(e.seconds)
		for _, v := range e.seconds {
			e.Max = max(e.Max, v)
		}
		s.res.Exports = append(s.res.Exports, *e)
	}
	sort.Float64s(s.latencies)
	p := &s.res.Polls
	p.P50, p.P95, p.P99 = percentile(s.latencies, 0.50), percentile(s.latencies, 0.95), percentile(s.latencies, 0.99)
}

// percentile of sorted xs, nearest rank.
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(q*float64(len(xs))+0.5) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// final runs a system export after the load stopped: it must hold exactly
// what the soak wrote, outside the chained checks' own ids.
func (s *soakRun) final(ctx context.Context) error {
	fmt.Fprintf(s.h.opts.Progress, "bulkbench: soak: the final export, checked exactly\n")
	start := time.Now()
	c := s.client()
	check := newExportCheck(s.idx, false, false)
	status, err := c.Kickoff(ctx, s.h.base+"/$export")
	if err != nil {
		return err
	}
	m, _, err := c.Await(ctx, status)
	if err != nil {
		return err
	}
	if _, err := c.DownloadAll(ctx, m, s.h.opts.DownloadParallel, func(bulkclient.Kind, bulkclient.File) (func([]byte) error, error) {
		return check.line, nil
	}); err != nil {
		return err
	}
	got, err := check.finish()
	want, _ := s.idx.totals()
	s.res.Final = SoakFinal{Resources: got, Expected: want, Seconds: time.Since(start).Seconds(), Exact: err == nil && got == want}
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%d resources exported, %d written", got, want)
	}
	return c.Delete(ctx, status)
}

// baseline waits until the janitor has removed every export the soak left
// behind and the stores are back to their state before the load.
func (s *soakRun) baseline(ctx context.Context) error {
	fmt.Fprintf(s.h.opts.Progress, "bulkbench: soak: waiting for the janitor (retention %s)\n", s.h.opts.Retention)
	start := time.Now()
	// An export expires after the retention, and once its files were
	// last downloaded 2 minutes ago; the janitor, sweeping once a minute,
	// then queues its removal, and the sweep after that drops its
	// duplicate-export slot.
	deadline := start.Add(s.h.opts.Retention + 5*time.Minute)
	for {
		after, err := s.h.storeState(ctx)
		if err != nil {
			return err
		}
		s.res.After = after
		if after.backTo(s.res.Before) {
			s.res.BaselineSeconds = time.Since(start).Seconds()
			return nil
		}
		if time.Now().After(deadline) {
			s.h.dumpGoroutines()
			return fmt.Errorf("not back to the state before the load after %s: before %+v, now %+v; left: %s",
				time.Since(start).Round(time.Second), s.res.Before, after, s.h.jobsLeft(ctx))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// StoreState is what exports leave in the stores until they are released
// or expire.
type StoreState struct {
	// Objects and ObjectBytes are the object store's export files and
	// manifests.
	Objects     int    `json:"objects"`
	ObjectBytes uint64 `json:"objectBytes"`
	// Jobs are the export records, and Keys every key of their bucket
	// (records, task results, download leases, duplicate-export slots).
	Jobs int `json:"jobs"`
	Keys int `json:"keys"`
	// Tasks are the messages of the export task stream.
	Tasks uint64 `json:"tasks"`
	// Queries are the queries running in ClickHouse, other than the one
	// asking.
	Queries uint64 `json:"queries"`
}

// backTo reports whether the stores hold what they held before: the same
// files, records, keys and tasks, and no more queries running. A query
// caught running when before was taken (an ingester's insert, a sweep) is
// not one the load left behind.
func (st StoreState) backTo(before StoreState) bool {
	queries := st.Queries
	st.Queries = before.Queries
	return st == before && queries <= before.Queries
}

func (h *harness) storeState(ctx context.Context) (StoreState, error) {
	var st StoreState
	obj, err := h.js.ObjectStore(ctx, streams.ObjectFiles)
	if err != nil {
		return st, err
	}
	infos, err := obj.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		return st, fmt.Errorf("list the export files: %w", err)
	}
	for _, info := range infos {
		st.Objects++
		st.ObjectBytes += info.Size
	}
	kv, err := h.js.KeyValue(ctx, streams.BucketJobs)
	if err != nil {
		return st, err
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return st, err
	}
	for range keys.Keys() {
		st.Keys++
	}
	jobs, err := streams.OpenJobs(ctx, h.js)
	if err != nil {
		return st, err
	}
	ids, err := jobs.IDs(ctx)
	if err != nil {
		return st, err
	}
	st.Jobs = len(ids)
	stream, err := h.js.Stream(ctx, streams.StreamExportTasks)
	if err != nil {
		return st, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return st, err
	}
	st.Tasks = info.State.Msgs
	q := "SELECT count() FROM system.processes WHERE query NOT LIKE '%system.processes%'"
	if err := h.store.Conn().QueryRow(ctx, q).Scan(&st.Queries); err != nil {
		return st, fmt.Errorf("%s: %w", q, err)
	}
	return st, nil
}

// writeTable prints the soak's figures.
func (s *SoakResult) writeTable(w io.Writer) {
	verdict := "PASSED"
	if len(s.Failures) > 0 {
		verdict = fmt.Sprintf("FAILED (%d)", len(s.Failures))
	}
	fmt.Fprintf(w, "SOAK %s: %.0f s of load on a store of %s resources at the start\n", verdict, s.Seconds, group(s.InitialResources))
	for _, f := range s.Failures {
		fmt.Fprintf(w, "  failure: %s\n", f)
	}
	fmt.Fprintf(w, "  ingest          %s resources in %d requests (%.0f/s), every one accepted\n", group(s.Ingest.Resources), s.Ingest.Batches, s.Ingest.PerSec)
	for _, e := range s.Exports {
		fmt.Fprintf(w, "  %-15s %d exports verified (%d released, %d left to the janitor), %s resources; %.1f s median, %.1f s longest\n",
			e.Level+" $export", e.Completed, e.Released, e.Completed-e.Released, group(e.Resources), e.Median, e.Max)
	}
	c := s.Chain
	fmt.Fprintf(w, "  chained checks  %d runs, %d rounds, %s changes, %s concurrent writes (%d after their export's transactionTime), each replica exact\n",
		c.Runs, c.Rounds, group(int64(c.Changes)), group(int64(c.Concurrent)), c.Straddled)
	fmt.Fprintf(w, "  cancellations   %d exports cancelled, each then answered 404\n", s.Cancelled)
	var codes []string
	for code, n := range s.Polls.ByStatus {
		codes = append(codes, fmt.Sprintf("%s: %d", code, n))
	}
	sort.Strings(codes)
	fmt.Fprintf(w, "  status polls    %d (%s); p50 %.0f ms, p95 %.0f ms, p99 %.0f ms (a running export's poll waits up to 1 s for it to complete)\n",
		s.Polls.Requests, strings.Join(codes, ", "), s.Polls.P50, s.Polls.P95, s.Polls.P99)
	if s.Final.Expected > 0 {
		fmt.Fprintf(w, "  final export    %s of %s resources, exact: %v (%.1f s)\n", group(s.Final.Resources), group(s.Final.Expected), s.Final.Exact, s.Final.Seconds)
	}
	fmt.Fprintf(w, "  stores          before: %+v\n                  after:  %+v (%.0f s after the load)\n", s.Before, s.After, s.BaselineSeconds)

	fmt.Fprintf(w, "\nProcesses during the load (medians of its early and late thirds after the warm-up; %d samples in all):\n", len(s.Samples))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  process\tRSS MiB\tlive heap MiB\tgoroutines\tflat\t\n")
	for _, t := range s.Trends {
		flat := "shown only"
		switch {
		case t.Checked && t.Flat:
			flat = "yes"
		case t.Checked:
			flat = "NO: " + t.Why
		case t.Why != "":
			flat = t.Why
		}
		fmt.Fprintf(tw, "  %s\t%.0f -> %.0f\t%.1f -> %.1f\t%.0f -> %.0f\t%s\t\n", t.Process, t.RSSMiB[0], t.RSSMiB[1], t.HeapMiB[0], t.HeapMiB[1], t.Goroutines[0], t.Goroutines[1], flat)
	}
	_ = tw.Flush()

	fmt.Fprintf(w, "\nEngine logs, warnings and errors:\n")
	if len(s.Logs) == 0 {
		fmt.Fprintf(w, "  none\n")
	}
	for _, l := range s.Logs {
		mark := ""
		if l.Unexpected {
			mark = "  UNEXPECTED"
		}
		fmt.Fprintf(w, "  %-10s %-6s %5d× %s%s\n", l.Process, l.Level, l.Count, l.Message, mark)
		if l.Unexpected && l.Example != "" {
			fmt.Fprintf(w, "             first: %s\n", l.Example)
		}
	}
	if s.HTML != "" {
		fmt.Fprintf(w, "\nplots: %s\n", s.HTML)
	}
}

// jobsLeft describes the export records still there, for a failure.
func (h *harness) jobsLeft(ctx context.Context) string {
	jobs, err := streams.OpenJobs(ctx, h.js)
	if err != nil {
		return err.Error()
	}
	ids, err := jobs.IDs(ctx)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, id := range ids[:min(len(ids), 5)] {
		job, _, err := jobs.Get(ctx, id)
		if err != nil {
			out = append(out, id+": "+err.Error())
			continue
		}
		last, _ := jobs.LastDownload(ctx, id)
		out = append(out, fmt.Sprintf("%s (%s, submitted %s, expires %s, last download %s)", id, job.Status,
			job.SubmittedAt.Format(time.TimeOnly), job.ExpiresAt.Format(time.TimeOnly), last.Format(time.TimeOnly)))
	}
	left := fmt.Sprintf("%d exports: %s", len(ids), strings.Join(out, "; "))
	if kv, err := h.js.KeyValue(ctx, streams.BucketJobs); err == nil {
		if keys, err := kv.ListKeys(ctx); err == nil {
			var ks []string
			for k := range keys.Keys() {
				if e, err := kv.Get(ctx, k); err == nil && strings.HasPrefix(k, "active.") {
					_, _, gerr := jobs.Get(ctx, string(e.Value()))
					k += fmt.Sprintf(" (holds %s: %v)", e.Value(), gerr)
				}
				ks = append(ks, k)
			}
			sort.Strings(ks)
			left += fmt.Sprintf("; keys %q", ks[:min(len(ks), 10)])
		}
	}
	if obj, err := h.js.ObjectStore(ctx, streams.ObjectFiles); err == nil {
		if infos, err := obj.List(ctx); err == nil {
			var names []string
			for _, info := range infos {
				names = append(names, info.Name)
			}
			sort.Strings(names)
			left += fmt.Sprintf("; objects %q", names[:min(len(names), 10)])
		}
	}
	return left
}

// dumpGoroutines saves every engine process's goroutines next to its log,
// for a failure that may be a stuck goroutine.
func (h *harness) dumpGoroutines() {
	client := &http.Client{Timeout: 10 * time.Second}
	for _, c := range h.children {
		if c.debug == "" {
			continue
		}
		resp, err := client.Get("http://" + c.debug + "/debug/pprof/goroutine?debug=2")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		path := c.logPath + ".goroutines"
		if err := os.WriteFile(path, b, 0o644); err == nil {
			fmt.Fprintf(h.opts.Progress, "bulkbench: the %s's goroutines: %s\n", c.role, path)
		}
	}
}

// saveHeapProfile writes the harness's heap profile (its NATS server's
// included) into the logs directory, kept with -keep.
func (h *harness) saveHeapProfile(name string) {
	f, err := os.Create(filepath.Join(h.dir, "logs", name))
	if err != nil {
		return
	}
	defer f.Close()
	runtime.GC()
	_ = pprof.WriteHeapProfile(f)
}
