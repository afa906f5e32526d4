package harness

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/bulkclient/chain"
	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/natsembed"
	"github.com/flatfhir/flatfhir/shared/synth"
	"github.com/flatfhir/flatfhir/streams"
)

// roles are the engine processes, in start order; they stop in reverse.
var roles = []string{flatfhir.RoleIngester, flatfhir.RolePlanner, flatfhir.RoleWriter, flatfhir.RoleAPI}

// harness is the state of one Run.
type harness struct {
	opts   Options
	log    *slog.Logger
	dir    string
	report *Report

	ch       *chserver.Server
	cluster  *flatfhir.Cluster // a -cluster run's servers and processes
	nats     *natsembed.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	store    *chstore.Store
	children []*child
	childMu  sync.Mutex // guards children while one is replaced (the writer kill)
	// wireBytes counts the bytes downloads received, compressed or not.
	wireBytes atomic.Int64
	base      string

	client         *http.Client // small requests
	ingestClient   *http.Client
	downloadClient *http.Client
}

// Run performs the whole benchmark and returns its report. Any failed
// verification is an error; the report is returned as far as it got.
func Run(ctx context.Context, opts Options) (_ *Report, err error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	h := &harness{
		opts:   opts,
		log:    slog.New(slog.NewTextHandler(opts.Progress, &slog.HandlerOptions{Level: slog.LevelWarn})),
		report: &Report{StartedAt: time.Now().UTC()},
	}
	transport := func() *http.Transport {
		return &http.Transport{
			Proxy:               nil, // everything is on 127.0.0.1
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			DisableCompression:  true, // count the NDJSON bytes as served
			MaxIdleConnsPerHost: 8,
		}
	}
	h.client = &http.Client{Transport: transport(), Timeout: time.Minute}
	h.ingestClient = &http.Client{Transport: transport(), Timeout: 15 * time.Minute}
	h.downloadClient = &http.Client{Transport: transport(), Timeout: 15 * time.Minute}

	if h.dir, err = os.MkdirTemp("", "bulkbench-"); err != nil {
		return nil, err
	}
	defer func() {
		// After an interrupt the logs tell nothing new.
		h.shutdown(err, err != nil && ctx.Err() == nil)
		if opts.Keep {
			h.report.KeptDir = h.dir
			fmt.Fprintf(opts.Progress, "bulkbench: kept %s\n", h.dir)
		} else {
			_ = os.RemoveAll(h.dir)
		}
	}()
	if err := h.setUp(ctx); err != nil {
		return h.report, err
	}
	if err := h.measure(ctx); err != nil {
		return h.report, err
	}
	return h.report, nil
}

// setUp builds the engine, starts ClickHouse, NATS and the four roles, and
// waits until every role is ready.
func (h *harness) setUp(ctx context.Context) error {
	o := h.opts
	s := &h.report.Setup
	*s = Setup{
		Patients: o.Patients, EstimatedResources: synth.Estimate(synth.Config{Patients: o.Patients, Seed: o.Seed}),
		Writers: o.Writers, Ingesters: o.Ingesters, Runs: o.Runs, Gzip: o.Gzip, ChunkResources: o.ChunkResources,
		DownloadParallel: o.DownloadParallel, PollIntervalMillis: o.PollInterval.Milliseconds(),
		GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), FileGzip: !o.FilePlain,
	}
	root := o.RepoRoot
	if root == "" {
		var err error
		if root, err = findRepoRoot(ctx); err != nil {
			return err
		}
	}
	if o.ProfileDir != "" {
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return fmt.Errorf("profile directory: %w", err)
		}
	}
	for _, sub := range []string{"bin", "logs", "clickhouse", "nats"} {
		if err := os.MkdirAll(filepath.Join(h.dir, sub), 0o755); err != nil {
			return err
		}
	}
	fmt.Fprintf(o.Progress, "bulkbench: building the engine in %s\n", root)
	bin := filepath.Join(h.dir, "bin", "flatfhir")
	t := time.Now()
	if err := buildEngine(ctx, root, bin); err != nil {
		return err
	}
	s.BuildSeconds = time.Since(t).Seconds()

	if o.Cluster {
		return h.setUpCluster(ctx, bin)
	}
	var err error
	if h.ch, err = chserver.Start(ctx, chserver.Config{Dir: filepath.Join(h.dir, "clickhouse")}, h.log); err != nil {
		return fmt.Errorf("start clickhouse: %w", err)
	}
	s.ClickHouseAddr = h.ch.Addr()
	if h.nats, err = natsembed.Start(natsembed.Config{Host: "127.0.0.1", Port: -1, StoreDir: filepath.Join(h.dir, "nats")}); err != nil {
		return fmt.Errorf("start nats: %w", err)
	}
	s.NATSURL = h.nats.URL()
	if h.nc, err = nats.Connect(s.NATSURL, nats.Name("bulkbench")); err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	if h.js, err = jetstream.New(h.nc); err != nil {
		return err
	}
	s.Database = "bulkbench_" + randomHex(6)
	// Opening the store creates the database and table before the roles
	// start, with the engine's own DDL.
	if h.store, err = chstore.Open(ctx, chstore.Config{Addr: []string{s.ClickHouseAddr}, Database: s.Database}, h.log); err != nil {
		return err
	}
	s.ClickHouseVersion = h.store.Version().String()

	port, err := freePort()
	if err != nil {
		return err
	}
	listen := "127.0.0.1:" + strconv.Itoa(port)
	h.base = "http://" + listen
	s.APIBase = h.base
	for _, role := range h.processes() {
		env := map[string]string{
			"FLATFHIR_ROLE":                strings.TrimRight(role, "0123456789"),
			"FLATFHIR_NATS_URL":            s.NATSURL,
			"FLATFHIR_CLICKHOUSE_ADDR":     s.ClickHouseAddr,
			"FLATFHIR_CLICKHOUSE_DATABASE": s.Database,
			"FLATFHIR_LISTEN":              listen,
			"FLATFHIR_WRITERS":             strconv.Itoa(o.Writers),
			"FLATFHIR_LOG_LEVEL":           cmp.Or(o.LogLevel, "warn"),
			// Polls every PollInterval to see completion within one
			// interval: the per-export poll limit would answer 429.
			"FLATFHIR_POLL_RATE": "0",
			// Measures the engine, not token handling (docs/auth.md).
			"FLATFHIR_AUTH":            "off",
			"FLATFHIR_DATA_DIR":        filepath.Join(h.dir, "logs"),
			"FLATFHIR_SAMPLE_PATIENTS": "0",
		}
		env["FLATFHIR_FILE_COMPRESSION"] = fileCompression(o.FilePlain)
		if o.Retention > 0 {
			env["FLATFHIR_RETENTION"] = o.Retention.String()
		}
		// Profiles, and the soak's samples of goroutines and heap.
		if o.ProfileDir != "" || o.Soak > 0 {
			port, err := freePort()
			if err != nil {
				return err
			}
			env["FLATFHIR_DEBUG_LISTEN"] = "127.0.0.1:" + strconv.Itoa(port)
		}
		c, err := startChild(bin, role, env, filepath.Join(h.dir, "logs", role+".log"))
		if err != nil {
			return err
		}
		c.debug = env["FLATFHIR_DEBUG_LISTEN"]
		h.children = append(h.children, c)
	}
	return h.waitReady(ctx)
}

// setUpCluster starts the engine on a local cluster (flatfhir.StartCluster)
// and opens the store over its shards.
func (h *harness) setUpCluster(ctx context.Context, bin string) error {
	s := &h.report.Setup
	port, err := freePort()
	if err != nil {
		return err
	}
	listen := "127.0.0.1:" + strconv.Itoa(port)
	fmt.Fprintf(h.opts.Progress, "bulkbench: starting a cluster (2 shards x 2 replicas, 3 NATS nodes, 6 engine processes)\n")
	h.cluster, err = flatfhir.StartCluster(ctx, flatfhir.ClusterConfig{
		Dir: filepath.Join(h.dir, "cluster"), Binary: bin, Listen: listen,
		Writers: 2, Ingesters: max(2, h.opts.Ingesters),
		Env: []string{
			"FLATFHIR_WRITERS=" + strconv.Itoa(max(1, h.opts.Writers/2)), "FLATFHIR_LOG_LEVEL=warn",
			"FLATFHIR_POLL_RATE=0", "FLATFHIR_SAMPLE_PATIENTS=0", "FLATFHIR_FILE_COMPRESSION=" + fileCompression(h.opts.FilePlain),
		},
	}, h.log)
	if err != nil {
		return fmt.Errorf("start the cluster: %w", err)
	}
	s.Cluster, s.NATSURL, s.Database = h.cluster.ClickHouseShards(), h.cluster.NATSURL(), "flatfhir"
	s.Ingesters = max(2, h.opts.Ingesters)
	h.base = h.cluster.APIURL()
	s.APIBase = h.base
	if h.nc, err = nats.Connect(s.NATSURL, nats.Name("bulkbench")); err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	if h.js, err = jetstream.New(h.nc); err != nil {
		return err
	}
	shards, err := chstore.ParseShards(s.Cluster)
	if err != nil {
		return err
	}
	if h.store, err = chstore.Open(ctx, chstore.Config{Shards: shards, Database: s.Database}, h.log); err != nil {
		return err
	}
	s.ClickHouseVersion = h.store.Version().String()
	return h.waitReady(ctx)
}

// processes names the engine's processes in start order: the roles, with
// Ingesters ingester processes (ingester, ingester2, ...).
func (h *harness) processes() []string {
	var out []string
	for _, role := range roles {
		out = append(out, role)
		if role == flatfhir.RoleIngester {
			for i := 2; i <= h.opts.Ingesters; i++ {
				out = append(out, fmt.Sprintf("%s%d", role, i))
			}
		}
	}
	return out
}

// waitReady waits until the API answers, the planner and the writers pull
// from their consumers, and the ingester has recorded a watermark.
func (h *harness) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Minute)
	var missing string
	for {
		if err := h.childrenAlive(); err != nil {
			return err
		}
		missing = h.notReady(ctx)
		if missing == "" {
			fmt.Fprintf(h.opts.Progress, "bulkbench: engine ready at %s (4 processes, %d writers)\n", h.base, h.opts.Writers)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("engine not ready after 2 minutes: %s", missing)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// notReady names the first role that is not ready yet, or returns "".
func (h *harness) notReady(ctx context.Context) string {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/metadata", nil)
	resp, _, err := h.do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "the api does not answer GET /metadata"
	}
	// Planners and writers pull only when free, so a connected process is
	// the sign of life to look for (on the harness's own NATS server; a
	// cluster's launcher has started every process already).
	if h.nats != nil {
		names, err := h.nats.ClientNames()
		if err != nil {
			return err.Error()
		}
		connected := map[string]bool{}
		for _, n := range names {
			connected[n] = true
		}
		for _, role := range []string{"planner", "writer", "ingester"} {
			if !connected["flatfhir-"+role] {
				return "the " + role + " has not connected to NATS yet"
			}
		}
	}
	if _, err := h.js.Consumer(ctx, streams.StreamExportTasks, streams.ConsumerWriters); err != nil {
		return "no consumer " + streams.ConsumerWriters + " yet"
	}
	// An idle ingester writes nothing: put a mark on the stream and see
	// the watermark pass it.
	mark, err := streams.PublishMark(ctx, h.js)
	if err != nil {
		return err.Error()
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := streams.AwaitWatermark(wctx, h.js, mark); err != nil {
		return "the ingester has not passed a mark yet"
	}
	return ""
}

// measure ingests, exports Runs times and reads peak memory.
func (h *harness) measure(ctx context.Context) error {
	o := h.opts
	fmt.Fprintf(o.Progress, "bulkbench: generating and ingesting %d patients (about %s resources)\n", o.Patients, group(int64(h.report.Setup.EstimatedResources)))
	err := h.measurePhase(ctx, "ingest", true, func(ctx context.Context) error {
		in, err := h.ingest(ctx)
		h.report.Ingest = in
		return err
	})
	if err != nil {
		return err
	}
	if o.Soak > 0 {
		soak, err := h.soak(ctx)
		h.report.Soak = soak
		h.report.Verified = err == nil
		if err != nil {
			return fmt.Errorf("soak: %w", err)
		}
		if err := h.childrenAlive(); err != nil {
			return err
		}
		h.collectMemory()
		return nil
	}
	err = h.measurePhase(ctx, "raw insert", true, func(ctx context.Context) (err error) {
		h.report.Ingest.RawInsert, err = h.rawInsert(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("raw insert: %w", err)
	}
	h.report.Ingest.RatioQueryableToRawInsert = ratio(h.report.Ingest.Queryable.ResourcesPerSec, h.report.Ingest.RawInsert.ResourcesPerSec)
	for run := 1; run <= o.Runs; run++ {
		fmt.Fprintf(o.Progress, "bulkbench: export run %d of %d\n", run, o.Runs)
		var res RunResult
		err := h.measurePhase(ctx, "export", run == 1, func(ctx context.Context) (err error) {
			res, err = h.export(ctx, run)
			return err
		})
		if err != nil {
			return fmt.Errorf("export run %d: %w", run, err)
		}
		if err := h.release(ctx, res.StatusURL); err != nil {
			h.warn("run %d: releasing the export: %v", run, err)
		}
		fmt.Fprintf(o.Progress, "bulkbench: raw reads %d of %d (Go scan, clickhouse-client)\n", run, o.Runs)
		err = h.measurePhase(ctx, "raw read", run == 1, func(ctx context.Context) (err error) {
			res.Raw, err = h.rawRead(ctx)
			return err
		})
		if err != nil {
			return fmt.Errorf("raw read %d: %w", run, err)
		}
		err = h.measurePhase(ctx, "raw read, clickhouse-client", run == 1, func(ctx context.Context) (err error) {
			res.RawClient, err = h.rawReadClient(ctx)
			return err
		})
		var noClient errNoClient
		switch {
		case errors.As(err, &noClient):
			if run == 1 {
				h.warn("raw read with clickhouse-client not measured: %v", noClient.error)
			}
		case err != nil:
			return fmt.Errorf("raw read %d with clickhouse-client: %w", run, err)
		}
		res.RatioManifest = ratio(res.ToManifest.ResourcesPerSec, res.Raw.ResourcesPerSec)
		res.RatioDownloaded = ratio(res.ToDownloaded.ResourcesPerSec, res.Raw.ResourcesPerSec)
		res.RatioManifestClient = ratio(res.ToManifest.ResourcesPerSec, res.RawClient.ResourcesPerSec)
		res.RatioDownloadedClient = ratio(res.ToDownloaded.ResourcesPerSec, res.RawClient.ResourcesPerSec)
		h.report.Runs = append(h.report.Runs, res)
	}
	h.report.computeMedians()
	h.report.Verified = true

	if o.KillWriter {
		k, err := h.writerKill(ctx)
		h.report.WriterKill = k
		if err != nil {
			h.report.Verified = false
			return fmt.Errorf("export with the writer killed: %w", err)
		}
	}

	// Before any change, so that each export holds what was ingested.
	if o.ClientRuns > 0 {
		cr, err := h.clientExports(ctx, o.ClientRuns)
		h.report.Client = cr
		if err != nil {
			h.report.Verified = false
			return err
		}
	}

	if o.ChangeFraction > 0 {
		last := h.report.Runs[len(h.report.Runs)-1].TransactionTime
		inc, err := h.incremental(ctx, last)
		h.report.Incremental = inc
		if err != nil {
			h.report.Verified = false
			return err
		}
	}

	if o.ChainRounds > 0 {
		fmt.Fprintf(o.Progress, "bulkbench: chained exports, %d rounds of %d changes\n", o.ChainRounds, o.ChainChanges)
		rep, err := chain.Run(ctx, chain.Config{
			Base: h.base, Rounds: o.ChainRounds, Changes: o.ChainChanges, Pool: o.ChainChanges,
			Concurrent: o.ChainChanges, Seed: o.Seed, Prefix: "chain-", Timeout: o.ExportTimeout,
			Parallel: o.DownloadParallel, Client: h.downloadClient, Progress: o.Progress,
		})
		h.report.Chain = &rep
		if err != nil {
			h.report.Verified = false
			return fmt.Errorf("chained exports: %w", err)
		}
	}

	if err := h.childrenAlive(); err != nil {
		return err
	}
	h.collectMemory()
	return nil
}

// collectMemory reads every process's peak memory into the report.
func (h *harness) collectMemory() {
	for _, c := range h.children {
		h.addMemory("flatfhir "+c.role, c.pid())
	}
	if h.cluster != nil {
		for _, name := range h.cluster.Processes() {
			h.addMemory("flatfhir "+name, h.cluster.Pid(name))
		}
	}
	for _, pid := range childrenNamed("clickhouse") {
		h.addMemory("clickhouse-server", pid)
	}
	h.addMemory("harness (NATS, generator, client)", os.Getpid())
}

func (h *harness) addMemory(name string, pid int) {
	b, err := peakRSS(pid)
	if err != nil {
		h.warn("peak memory of %s: %v", name, err)
		return
	}
	h.report.Memory = append(h.report.Memory, Memory{Process: name, PID: pid, PeakMiB: float64(b) / MiB})
}

func (h *harness) warn(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	h.report.Warnings = append(h.report.Warnings, msg)
	fmt.Fprintf(h.opts.Progress, "bulkbench: warning: %s\n", msg)
}

// childrenAlive fails when an engine process has exited.
func (h *harness) childrenAlive() error {
	h.childMu.Lock()
	defer h.childMu.Unlock()
	for _, c := range h.children {
		if err := c.exited(); err != nil {
			return err
		}
	}
	return nil
}

// shutdown stops the roles (API first), then NATS and ClickHouse. After a
// failure it can print the end of every role's log first.
func (h *harness) shutdown(failure error, showLogs bool) {
	if showLogs {
		for _, c := range h.children {
			if t := c.tail(2048); t != "" {
				fmt.Fprintf(h.opts.Progress, "bulkbench: --- end of the %s log ---\n%s\n", c.role, t)
			}
		}
	}
	for i := len(h.children) - 1; i >= 0; i-- {
		c := h.children[i]
		if failure != nil {
			_ = c.stop(5 * time.Second)
			continue
		}
		if err := c.stop(20 * time.Second); err != nil {
			h.warn("stopping: %v", err)
		}
	}
	if h.store != nil {
		_ = h.store.Close()
	}
	if h.nc != nil {
		h.nc.Close()
	}
	if h.nats != nil {
		h.nats.Shutdown()
	}
	if h.ch != nil {
		_ = h.ch.Stop()
	}
	if h.cluster != nil {
		if showLogs {
			fmt.Fprintf(h.opts.Progress, "bulkbench: the cluster's logs are in %s\n", filepath.Join(h.dir, "cluster", "logs"))
		}
		h.cluster.Stop()
	}
}

// do sends a small request and reads the whole answer.
func (h *harness) do(req *http.Request) (*http.Response, []byte, error) {
	return h.doWith(h.client, req)
}

// doWith sends a request with client and reads the whole answer.
func (h *harness) doWith(client *http.Client, req *http.Request) (*http.Response, []byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp, b, err
	}
	return resp, b, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 16)
	}
	return hex.EncodeToString(b)
}

// fileCompression is FLATFHIR_FILE_COMPRESSION for the option.
func fileCompression(plain bool) string {
	if plain {
		return "none"
	}
	return "gzip"
}
