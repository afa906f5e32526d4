package harness

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flatfhir/flatfhir/shared/bulkclient/chain"
)

// MB is the unit of the MB/s figures: 10^6 bytes.
const MB = 1e6

// MiB is the unit of the memory figures: 2^20 bytes.
const MiB = 1 << 20

// Rate is a timed transfer of Resources resources and Bytes bytes.
type Rate struct {
	Seconds         float64 `json:"seconds"`
	Resources       int64   `json:"resources"`
	Bytes           int64   `json:"bytes"`
	ResourcesPerSec float64 `json:"resourcesPerSec"`
	MBPerSec        float64 `json:"mbPerSec"`
}

func newRate(d time.Duration, resources, bytes int64) Rate {
	r := Rate{Seconds: d.Seconds(), Resources: resources, Bytes: bytes}
	if r.Seconds > 0 {
		r.ResourcesPerSec = float64(resources) / r.Seconds
		r.MBPerSec = float64(bytes) / MB / r.Seconds
	}
	return r
}

// Setup describes what was measured and on what.
type Setup struct {
	Patients           int     `json:"patients"`
	EstimatedResources int     `json:"estimatedResources"`
	Writers            int     `json:"writers"`
	Ingesters          int     `json:"ingesters"`
	Runs               int     `json:"runs"`
	Gzip               bool    `json:"gzip"`
	ChunkResources     int     `json:"chunkResources"`
	DownloadParallel   int     `json:"downloadParallel"`
	PollIntervalMillis int64   `json:"pollIntervalMillis"`
	ClickHouseVersion  string  `json:"clickhouseVersion"`
	ClickHouseAddr     string  `json:"clickhouseAddr"`
	NATSURL            string  `json:"natsUrl"`
	APIBase            string  `json:"apiBase"`
	Database           string  `json:"database"`
	BuildSeconds       float64 `json:"buildSeconds"`
	GoVersion          string  `json:"goVersion"`
	CPUs               int     `json:"cpus"`
	// FileGzip: the writers stored the files gzip-compressed.
	FileGzip bool `json:"fileGzip"`
	// Cluster is the layout of a -cluster run: ClickHouse shards (";")
	// of replicas (","); empty on one server.
	Cluster string `json:"cluster,omitempty"`
}

// IngestResult is the ingest of the whole data set.
type IngestResult struct {
	Resources int64 `json:"resources"`
	// NDJSONBytes is the uncompressed body size; WireBytes what was sent
	// (smaller with gzip). The MB/s figures use NDJSONBytes.
	NDJSONBytes int64            `json:"ndjsonBytes"`
	WireBytes   int64            `json:"wireBytes"`
	Requests    int              `json:"requests"`
	PerType     map[string]int64 `json:"perType"`
	// Accepted runs from the first request to the last 200 answer: every
	// change is durably in the CHANGES stream.
	Accepted Rate `json:"accepted"`
	// Queryable runs from the first request until every row is in
	// ClickHouse (count() of resource_versions equals the total).
	Queryable Rate `json:"queryable"`
	// RawInsert is clickhouse-client inserting the same rows (Native
	// format, the median of Runs) into a scratch copy of the tables, change
	// log feed included: the insert limit. Bytes are the Native dump's.
	// Zero on a cluster.
	RawInsert Rate `json:"rawInsert"`
	// RatioQueryableToRawInsert is queryable resources/s divided by
	// RawInsert's.
	RatioQueryableToRawInsert float64 `json:"ratioQueryableToRawInsert"`
}

// RunResult is one export run and the raw read that followed it.
type RunResult struct {
	Run             int    `json:"run"`
	StatusURL       string `json:"statusUrl"`
	TransactionTime string `json:"transactionTime"`
	Files           int    `json:"files"`
	Polls           int    `json:"polls"`
	// ToManifest runs from the kick-off request to the 200 status answer
	// with the manifest; ToDownloaded until every file is downloaded.
	// Bytes are the downloaded NDJSON bytes in both.
	ToManifest   Rate `json:"kickoffToManifest"`
	ToDownloaded Rate `json:"kickoffToDownloaded"`
	// Raw is SELECT id, body of the whole table straight from ClickHouse;
	// Bytes count each body plus a newline, as in an export file.
	Raw Rate `json:"rawRead"`
	// WireBytes is what the downloads received: the files gzip-encoded.
	WireBytes int64 `json:"wireBytes"`
	// RawClient is clickhouse-client reading every body as TSVRaw into a
	// sink: the read limit, without a Go driver's decoding.
	RawClient Rate `json:"rawReadClient"`
	// The ratios are export resources/s divided by raw resources/s.
	RatioManifest         float64 `json:"ratioManifestToRaw"`
	RatioDownloaded       float64 `json:"ratioDownloadedToRaw"`
	RatioManifestClient   float64 `json:"ratioManifestToRawClient"`
	RatioDownloadedClient float64 `json:"ratioDownloadedToRawClient"`
	Verified              bool    `json:"verified"`
}

// Medians are the medians over the runs.
type Medians struct {
	ToManifest            Rate    `json:"kickoffToManifest"`
	ToDownloaded          Rate    `json:"kickoffToDownloaded"`
	Raw                   Rate    `json:"rawRead"`
	RawClient             Rate    `json:"rawReadClient"`
	RatioManifest         float64 `json:"ratioManifestToRaw"`
	RatioDownloaded       float64 `json:"ratioDownloadedToRaw"`
	RatioManifestClient   float64 `json:"ratioManifestToRawClient"`
	RatioDownloadedClient float64 `json:"ratioDownloadedToRawClient"`
}

// Memory is the peak resident memory of one process.
type Memory struct {
	Process string  `json:"process"`
	PID     int     `json:"pid"`
	PeakMiB float64 `json:"peakMiB"`
}

// Report is everything one benchmark run measured.
type Report struct {
	StartedAt time.Time    `json:"startedAt"`
	Setup     Setup        `json:"setup"`
	Ingest    IngestResult `json:"ingest"`
	Runs      []RunResult  `json:"runs"`
	Median    Medians      `json:"median"`
	Memory    []Memory     `json:"peakMemory"`
	// Phases are the CPU time of every process during the ingest and the
	// first export run.
	Phases []Phase `json:"phases"`
	// Incremental is the _since measurement, when one was made.
	Incremental *IncrementalResult `json:"incremental,omitempty"`
	// Client is the real-client latency, when it was measured.
	Client *ClientResult `json:"client,omitempty"`
	// WriterKill is the export during which the writer was killed, when
	// one was run.
	WriterKill *KillResult `json:"writerKill,omitempty"`
	// Chain is the chained-export check, when one was run.
	Chain *chain.Report `json:"chain,omitempty"`
	// Soak is the soak, when one was run instead of the timed exports.
	Soak *SoakResult `json:"soak,omitempty"`
	// Verified is true when every run's files matched their manifest
	// counts and held exactly the ingested number of resources per type.
	Verified bool     `json:"verified"`
	Warnings []string `json:"warnings,omitempty"`
	// KeptDir is the temporary directory when it was kept.
	KeptDir string `json:"keptDir,omitempty"`
}

// medianOf returns the median of xs (the mean of the middle two for an even
// count).
func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// medianRate takes the median of each figure of rates separately.
func medianRate(rates []Rate) Rate {
	var sec, res, mbs, bytes []float64
	for _, r := range rates {
		sec = append(sec, r.Seconds)
		res = append(res, r.ResourcesPerSec)
		mbs = append(mbs, r.MBPerSec)
		bytes = append(bytes, float64(r.Bytes))
	}
	out := Rate{Seconds: medianOf(sec), ResourcesPerSec: medianOf(res), MBPerSec: medianOf(mbs), Bytes: int64(medianOf(bytes))}
	if len(rates) > 0 {
		out.Resources = rates[0].Resources
	}
	return out
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// computeMedians fills r.Median from r.Runs.
func (r *Report) computeMedians() {
	var man, dl, raw, rawClient []Rate
	for _, run := range r.Runs {
		man, dl, raw = append(man, run.ToManifest), append(dl, run.ToDownloaded), append(raw, run.Raw)
		rawClient = append(rawClient, run.RawClient)
	}
	m := Medians{ToManifest: medianRate(man), ToDownloaded: medianRate(dl), Raw: medianRate(raw), RawClient: medianRate(rawClient)}
	m.RatioManifest = ratio(m.ToManifest.ResourcesPerSec, m.Raw.ResourcesPerSec)
	m.RatioDownloaded = ratio(m.ToDownloaded.ResourcesPerSec, m.Raw.ResourcesPerSec)
	m.RatioManifestClient = ratio(m.ToManifest.ResourcesPerSec, m.RawClient.ResourcesPerSec)
	m.RatioDownloadedClient = ratio(m.ToDownloaded.ResourcesPerSec, m.RawClient.ResourcesPerSec)
	r.Median = m
}

// WriteJSON writes the report as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// group formats n with thousands separators.
func group(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// WriteTable prints the report for a person.
func (r *Report) WriteTable(w io.Writer) error {
	s := r.Setup
	gz := "off"
	if s.Gzip {
		gz = "on"
	}
	fmt.Fprintf(w, "\nflatfhir bulk benchmark  (%s, %d CPUs, ClickHouse %s)\n", s.GoVersion, s.CPUs, s.ClickHouseVersion)
	stored := "plain"
	if s.FileGzip {
		stored = "gzip"
	}
	fmt.Fprintf(w, "  %d patients -> %s resources (estimate %s), %.1f MB NDJSON; gzip %s; %d writers; %d ingesters; %d export runs; files stored %s\n",
		s.Patients, group(r.Ingest.Resources), group(int64(s.EstimatedResources)), float64(r.Ingest.NDJSONBytes)/MB, gz, s.Writers, s.Ingesters, s.Runs, stored)
	if s.Cluster != "" {
		fmt.Fprintf(w, "  engine built in %.1f s; API %s; a cluster: NATS %s; ClickHouse shards %s, database %s\n\n",
			s.BuildSeconds, s.APIBase, s.NATSURL, s.Cluster, s.Database)
	} else {
		fmt.Fprintf(w, "  engine built in %.1f s; API %s; NATS %s (in the harness); ClickHouse %s, database %s\n\n",
			s.BuildSeconds, s.APIBase, s.NATSURL, s.ClickHouseAddr, s.Database)
	}

	const head = "%-40s %9s %13s %8s  %s\n"
	row := func(label string, rt Rate, extra string) {
		fmt.Fprintf(w, "  %-38s %9.2f %13s %8.1f  %s\n", label, rt.Seconds, group(int64(rt.ResourcesPerSec+0.5)), rt.MBPerSec, extra)
	}
	fmt.Fprintf(w, head, fmt.Sprintf("INGEST (%d requests)", r.Ingest.Requests), "seconds", "resources/s", "MB/s", "")
	wire := ""
	if s.Gzip {
		wire = fmt.Sprintf("%.1f MB on the wire", float64(r.Ingest.WireBytes)/MB)
	}
	row("accepted (last POST answered)", r.Ingest.Accepted, wire)
	if r.Ingest.RawInsert.Seconds > 0 {
		row("queryable (all rows in ClickHouse)", r.Ingest.Queryable, fmt.Sprintf("%.2fx the raw insert", r.Ingest.RatioQueryableToRawInsert))
		row("raw insert (clickhouse-client, Native)", r.Ingest.RawInsert, "1.00x")
	} else {
		row("queryable (all rows in ClickHouse)", r.Ingest.Queryable, "(raw insert not measured)")
	}
	fmt.Fprintln(w)
	if r.Soak != nil {
		r.Soak.writeTable(w)
		for _, warn := range r.Warnings {
			fmt.Fprintf(w, "warning: %s\n", warn)
		}
		return nil
	}
	limits := "vs Go scan  vs clickhouse-client"
	if r.Median.RawClient.Seconds == 0 {
		limits = "vs Go scan"
	}
	fmt.Fprintf(w, head, fmt.Sprintf("EXPORT (median of %d runs)", len(r.Runs)), "seconds", "resources/s", "MB/s", limits)
	ratios := func(goScan, client float64) string {
		if r.Median.RawClient.Seconds == 0 {
			return fmt.Sprintf("%9.2fx", goScan)
		}
		return fmt.Sprintf("%9.2fx  %9.2fx", goScan, client)
	}
	row("kick-off -> manifest", r.Median.ToManifest, ratios(r.Median.RatioManifest, r.Median.RatioManifestClient))
	row("kick-off -> all files downloaded", r.Median.ToDownloaded, ratios(r.Median.RatioDownloaded, r.Median.RatioDownloadedClient))
	row("raw read, Go scan (SELECT id, body)", r.Median.Raw, fmt.Sprintf("%9.2fx", 1.0))
	if r.Median.RawClient.Seconds > 0 {
		row("raw read, clickhouse-client TSVRaw", r.Median.RawClient, fmt.Sprintf("%22.2fx", 1.0))
	}

	if len(r.Runs) > 0 && r.Runs[0].WireBytes > 0 {
		run := r.Runs[0]
		fmt.Fprintf(w, "  downloads: %.1f MB of NDJSON as %.1f MB on the wire (Accept-Encoding: gzip; %.1fx smaller)\n",
			float64(run.ToDownloaded.Bytes)/MB, float64(run.WireBytes)/MB, float64(run.ToDownloaded.Bytes)/float64(run.WireBytes))
	}

	fmt.Fprintf(w, "\nEach run (seconds; resources/s):\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "run\tfiles\tto manifest\t\tto downloaded\t\tGo scan\t\tclickhouse-client\t\tdownloaded/client\t\n")
	for _, run := range r.Runs {
		fmt.Fprintf(tw, "%d\t%d\t%.2f\t%s\t%.2f\t%s\t%.2f\t%s\t%.2f\t%s\t%.2fx\t\n", run.Run, run.Files,
			run.ToManifest.Seconds, group(int64(run.ToManifest.ResourcesPerSec+0.5)),
			run.ToDownloaded.Seconds, group(int64(run.ToDownloaded.ResourcesPerSec+0.5)),
			run.Raw.Seconds, group(int64(run.Raw.ResourcesPerSec+0.5)),
			run.RawClient.Seconds, group(int64(run.RawClient.ResourcesPerSec+0.5)), run.RatioDownloadedClient)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if inc := r.Incremental; inc != nil {
		fmt.Fprintf(w, "\nINCREMENTAL (%.2f%% changed: %s updated, %s deleted, applied in %.2f s; _since %s)\n",
			inc.Fraction*100, group(inc.Updated), group(inc.Deleted), inc.ApplySeconds, inc.Since)
		fmt.Fprintf(w, "  %-38s %9s %9s %9s\n", "median of "+fmt.Sprint(len(inc.Runs))+" runs (seconds)", "_since", "full", "ratio")
		fmt.Fprintf(w, "  %-38s %9.2f %9.2f %8.3fx\n", "kick-off -> manifest", inc.MedianToManifest, inc.FullMedianToManifest, ratio(inc.MedianToManifest, inc.FullMedianToManifest))
		fmt.Fprintf(w, "  %-38s %9.2f %9.2f %8.3fx\n", "kick-off -> all files downloaded", inc.MedianToDownloaded, inc.FullMedianToDownloaded, inc.RatioToFull)
		if inc.Verified {
			fmt.Fprintf(w, "  verified: each _since export held exactly the updated resources in output and the deleted ones in deleted.\n")
		}
	}

	if c := r.Client; c != nil {
		fmt.Fprintf(w, "\nA CLIENT HONOURING Retry-After (strict JSON; median of %d system exports)\n", c.Runs)
		fmt.Fprintf(w, "  %-38s %9.2f s   (%d polls, %d throttled)\n", "kick-off -> manifest", c.ToManifest, c.Polls, c.Throttled)
		fmt.Fprintf(w, "  %-38s %9.2f s\n", "kick-off -> last file downloaded", c.ToDownloaded)
	}

	if k := r.WriterKill; k != nil {
		fmt.Fprintf(w, "\nWRITER KILLED (SIGKILL %.2f s after kick-off, started again at once)\n", k.KilledAfter)
		fmt.Fprintf(w, "  %-38s %9.2f s   %+.2f s over the median export\n", "kick-off -> manifest", k.ToManifest, k.ExtraSeconds)
		fmt.Fprintf(w, "  %-38s %9.2f s\n", "kick-off -> all files downloaded", k.ToDownloaded)
		if k.Verified {
			fmt.Fprintf(w, "  verified: every file matched its manifest count and the export held exactly the ingested resources.\n")
		}
	}

	if c := r.Chain; c != nil {
		fmt.Fprintf(w, "\nCHAINED EXPORTS (DESIGN.md invariant 1): %d rounds in %.1f s; %s changes (%d transactions, %d Group changes), %s concurrent writes (%d after their export's transactionTime); %s entries applied; replica equal to the source (%s resources) after every round\n",
			c.Rounds, c.Seconds, group(int64(c.Changes)), c.Transactions, c.GroupChanges, group(int64(c.Concurrent)), c.Straddled, group(int64(c.Applied)), group(int64(c.Compared)))
	}

	for _, ph := range r.Phases {
		fmt.Fprintf(w, "\nCPU during the %s (%.1f s; %d CPUs = %.1f CPU-seconds):\n", ph.Name, ph.Seconds, s.CPUs, ph.Seconds*float64(s.CPUs))
		for _, c := range ph.CPU {
			fmt.Fprintf(w, "  %-38s %9.1f s   %3.0f%% of a CPU\n", c.Process, c.Seconds, 100*c.Seconds/max(ph.Seconds, 1e-9))
			for i := range max(len(c.Top), len(c.TopCode)) {
				var leaf, code string
				if i < len(c.Top) {
					leaf = fmt.Sprintf("%5.1f%%  %s", c.Top[i].Percent, shortFunc(c.Top[i].Function))
				}
				if i < len(c.TopCode) {
					code = fmt.Sprintf("%5.1f%%  %s", c.TopCode[i].Percent, shortFunc(c.TopCode[i].Function))
				}
				fmt.Fprintf(w, "      %-52s %s\n", leaf, code)
			}
		}
	}

	if r.profiled() {
		fmt.Fprintf(w, "(profiled: left, leaf functions; right, the code that called the runtime and standard library)\n")
	}

	fmt.Fprintf(w, "\nPeak memory (VmHWM):\n")
	for _, m := range r.Memory {
		fmt.Fprintf(w, "  %-38s %9.1f MiB   (pid %d)\n", m.Process, m.PeakMiB, m.PID)
	}

	if r.Verified {
		fmt.Fprintf(w, "\nVERIFIED: in every run each file's line count matched the manifest and the export held exactly the %s ingested resources, per type.\n", group(r.Ingest.Resources))
	} else {
		fmt.Fprintf(w, "\nNOT VERIFIED\n")
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	if r.KeptDir != "" {
		fmt.Fprintf(w, "kept: %s (logs in %s)\n", r.KeptDir, r.KeptDir+"/logs")
	}
	return nil
}

// shortFunc drops the module path of a function's name:
// github.com/flatfhir/flatfhir/services/ingester.(*follower).read becomes
// ingester.(*follower).read.
func shortFunc(fn string) string {
	if i := strings.LastIndexByte(fn, '/'); i >= 0 {
		return fn[i+1:]
	}
	return fn
}

// profiled reports whether the phases hold profiles.
func (r *Report) profiled() bool {
	for _, ph := range r.Phases {
		for _, c := range ph.CPU {
			if len(c.Top) > 0 {
				return true
			}
		}
	}
	return false
}
