package harness

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/flatfhir/flatfhir/shared/synth"
)

// Options configure one benchmark run. Zero values take the defaults of
// [DefaultOptions] where one exists.
type Options struct {
	// Patients is how many synthetic patients to generate (about 50
	// resources each).
	Patients int
	// Writers is FLATFHIR_WRITERS of the writer process.
	Writers int
	// LogLevel is FLATFHIR_LOG_LEVEL of the engine's processes ("warn"
	// when empty); "debug" logs each task's start and end, a timeline of
	// where an export's time goes. The logs are kept with -keep.
	LogLevel string
	// Runs is how many times the export (and the raw read) is repeated.
	Runs int
	// Gzip sends the ingest bodies gzip-compressed.
	Gzip bool
	// Keep leaves the temporary directory (data, logs, binary) in place.
	Keep bool
	// ChangeFraction of the store is changed after the full exports (one
	// in five of those deleted, the rest updated), then exported with
	// _since Runs times; 0 skips the incremental measurement.
	ChangeFraction float64
	// ChainRounds, when positive, runs the chained-export check of DESIGN.md
	// invariant 1 (shared/bulkclient/chain) on the loaded store at the end:
	// that many rounds of ChainChanges changes each, with up to
	// ChainChanges concurrent writes during every export.
	ChainRounds  int
	ChainChanges int
	// ClientRuns, when positive, times that many system exports through a
	// client that honours Retry-After exactly (shared/bulkclient), after
	// the other measurements: the latency a real client sees.
	ClientRuns int
	// Seed of the generator; 0 means 1.
	Seed uint64
	// ChunkResources is how many resources go into one POST /$ingest.
	ChunkResources int
	// DownloadParallel is how many export files are downloaded at once.
	DownloadParallel int
	// PollInterval is the longest wait between two polls of an export's
	// status; the Retry-After the server suggests is honoured only when it
	// is shorter, so that completion is timed to within this interval.
	PollInterval time.Duration
	// ExportTimeout bounds the wait for one export's manifest, and also the
	// wait for ingested data to become queryable.
	ExportTimeout time.Duration
	// RepoRoot is the workspace root holding go.work; empty finds it with
	// go env GOWORK (or by walking up from the working directory).
	RepoRoot string
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
	// Ingesters is how many ingester processes run, sharing the
	// partitions of CHANGES (ADR 0008); 0 means 1.
	Ingesters int
	// Cluster runs the engine as make run-cluster does: 2 ClickHouse
	// shards × 2 replicas, 3 NATS nodes, one process per role instance
	// (2 ingesters, 2 writer processes of Writers/2 writers each).
	Cluster bool
	// ProfileDir, when set, receives CPU profiles of the ingest and the
	// first export run: the harness's own, and every engine process's
	// (served on FLATFHIR_DEBUG_LISTEN), for go tool pprof; the report
	// names each process's top functions. A soak (which has no timed
	// export) also leaves there each engine process's heap profile at its
	// largest live heap (soak-<role>.peak.heap.pprof).
	ProfileDir string
	// KillWriter runs one more export after the timed ones, during which
	// the writer process is killed with SIGKILL and started again at once,
	// as a supervisor would: the report gives the export's extra seconds
	// over the median, and the export is verified like the others.
	KillWriter bool
	// FilePlain has the writers store export files plain
	// (FLATFHIR_FILE_COMPRESSION=none) instead of gzip-compressed, the
	// engine's default (docs/adr/0009).
	FilePlain bool
	// Soak, when positive, replaces the timed exports with a soak of that
	// length after the ingest (soak.go): ingest, FHIR writes, exports at
	// all three levels, _since chains, pollers and cancellations at once,
	// each export verified, every process sampled; then a final exact
	// export and the wait for the janitor to bring the stores back to
	// their baseline.
	Soak time.Duration
	// SoakIngestRate bounds the soak's continuous ingest, in resources a
	// second.
	SoakIngestRate int
	// SoakSampleEvery is how often the soak samples every process.
	SoakSampleEvery time.Duration
	// SoakHTML, when set, receives the soak's report with its plots.
	SoakHTML string
	// Retention is the engine's FLATFHIR_RETENTION; empty leaves its
	// default (24h). The soak shortens it to see the janitor work.
	Retention time.Duration
}

// DefaultOptions are bulkbench's defaults: about a million resources.
func DefaultOptions() Options {
	return Options{
		Patients:         20000,
		Writers:          2,
		Runs:             3,
		ChangeFraction:   0.001,
		ChainChanges:     500,
		Seed:             1,
		ChunkResources:   50000,
		DownloadParallel: 2,
		PollInterval:     100 * time.Millisecond,
		ExportTimeout:    30 * time.Minute,
		SoakIngestRate:   500,
		SoakSampleEvery:  10 * time.Second,
	}
}

func (o *Options) setDefaults() {
	d := DefaultOptions()
	if o.Seed == 0 {
		o.Seed = d.Seed
	}
	if o.ChunkResources == 0 {
		o.ChunkResources = d.ChunkResources
	}
	if o.DownloadParallel == 0 {
		o.DownloadParallel = d.DownloadParallel
	}
	if o.PollInterval == 0 {
		o.PollInterval = d.PollInterval
	}
	if o.ExportTimeout == 0 {
		o.ExportTimeout = d.ExportTimeout
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Ingesters == 0 {
		o.Ingesters = 1
	}
	if o.SoakIngestRate == 0 {
		o.SoakIngestRate = d.SoakIngestRate
	}
	if o.SoakSampleEvery == 0 {
		o.SoakSampleEvery = d.SoakSampleEvery
	}
	if o.Soak > 0 && o.Retention == 0 {
		o.Retention = soakRetention
	}
}

// Validate checks the options after defaults are applied.
func (o Options) Validate() error {
	var errs []error
	if o.Patients < 1 {
		errs = append(errs, fmt.Errorf("patients must be at least 1, got %d", o.Patients))
	}
	if o.Writers < 1 {
		errs = append(errs, fmt.Errorf("writers must be at least 1, got %d", o.Writers))
	}
	if o.Runs < 1 {
		errs = append(errs, fmt.Errorf("runs must be at least 1, got %d", o.Runs))
	}
	if o.ChangeFraction < 0 || o.ChangeFraction > 1 {
		errs = append(errs, fmt.Errorf("change fraction must be in [0, 1], got %g", o.ChangeFraction))
	}
	if o.ChainRounds < 0 || (o.ChainRounds > 0 && o.ChainChanges < 1) {
		errs = append(errs, fmt.Errorf("chain rounds must not be negative and chain changes positive, got %d and %d", o.ChainRounds, o.ChainChanges))
	}
	if o.ChunkResources < 1 || o.DownloadParallel < 1 {
		errs = append(errs, errors.New("chunk size and download parallelism must be positive"))
	}
	if o.PollInterval <= 0 || o.PollInterval > 200*time.Millisecond {
		errs = append(errs, fmt.Errorf("poll interval must be in (0, 200ms], got %s", o.PollInterval))
	}
	if o.KillWriter && o.Cluster {
		errs = append(errs, errors.New("the writer kill runs on one node; make test-cluster kills writers on a cluster"))
	}
	if o.ExportTimeout <= 0 {
		errs = append(errs, errors.New("export timeout must be positive"))
	}
	if o.Soak < 0 || o.Retention < 0 {
		errs = append(errs, errors.New("soak and retention must not be negative"))
	}
	if o.Soak > 0 {
		if o.Cluster {
			errs = append(errs, errors.New("the soak runs on one node"))
		}
		if o.Patients > synth.DefaultGroupSize {
			errs = append(errs, fmt.Errorf("the soak loads at most %d patients first (one Group, whose export it checks exactly), got %d", synth.DefaultGroupSize, o.Patients))
		}
		if o.SoakIngestRate < 1 || o.SoakSampleEvery <= 0 {
			errs = append(errs, errors.New("the soak's ingest rate and sample interval must be positive"))
		}
	}
	return errors.Join(errs...)
}
