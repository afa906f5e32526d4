// Command bulkbench measures flatfhir end to end on this machine: ingest,
// export, the raw ClickHouse read rate of the same rows, and peak memory.
// See ../../README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/flatfhir/flatfhir/benchmarks/harness"
)

func main() {
	opts := harness.DefaultOptions()
	flag.IntVar(&opts.Patients, "patients", opts.Patients, "synthetic patients to generate (about 50 resources each)")
	flag.IntVar(&opts.Writers, "writers", opts.Writers, "writer instances in the writer process (FLATFHIR_WRITERS)")
	flag.StringVar(&opts.LogLevel, "engine-log-level", "warn", "the engine processes' log level (FLATFHIR_LOG_LEVEL); debug times each export task, kept with -keep")
	flag.IntVar(&opts.Runs, "runs", opts.Runs, "export runs; the median is reported")
	flag.Float64Var(&opts.ChangeFraction, "change", opts.ChangeFraction, "fraction of the store changed, then exported with _since (0 skips it)")
	flag.IntVar(&opts.ChainRounds, "chain-rounds", 0, "rounds of the chained-export check (DESIGN.md invariant 1) on the loaded store; 0 skips it")
	flag.IntVar(&opts.ChainChanges, "chain-changes", opts.ChainChanges, "changes per chained-export round")
	flag.IntVar(&opts.ClientRuns, "client-runs", 0, "system exports timed through a client that honours Retry-After exactly; 0 skips it")
	flag.BoolVar(&opts.Gzip, "gzip", false, "send ingest bodies gzip-compressed")
	flag.BoolVar(&opts.Keep, "keep", false, "keep the temporary directory (data, logs, binary)")
	flag.IntVar(&opts.Ingesters, "ingesters", 1, "ingester processes (they share the 16 partitions of CHANGES and insert in parallel)")
	flag.BoolVar(&opts.Cluster, "cluster", false, "run the engine on a local cluster as make run-cluster does (2x2 ClickHouse, 3 NATS nodes, a process per role)")
	flag.StringVar(&opts.ProfileDir, "profile", "", "write CPU profiles of the ingest and the first export (the harness and every engine process) into this directory, and name each process's top functions; in a soak, each engine process's heap profile at its largest live heap")
	flag.BoolVar(&opts.KillWriter, "kill-writer", false, "after the timed exports, run one during which the writer process is killed (SIGKILL) and started again, and report its extra seconds")
	flag.BoolVar(&opts.FilePlain, "file-plain", false, "writers store export files plain (FLATFHIR_FILE_COMPRESSION=none), not gzip-compressed")
	flag.DurationVar(&opts.Soak, "soak", 0, "instead of the timed exports, a soak of this length (e.g. 15m) after the ingest: continuous ingest, FHIR writes, exports at all three levels, _since chains, pollers and cancellations, every export verified, every process sampled")
	flag.IntVar(&opts.SoakIngestRate, "soak-ingest-rate", opts.SoakIngestRate, "resources a second the soak ingests")
	flag.DurationVar(&opts.SoakSampleEvery, "soak-sample", opts.SoakSampleEvery, "how often the soak samples every process's memory and goroutines")
	flag.StringVar(&opts.SoakHTML, "soak-html", "soak.html", "where the soak writes its report with plots (empty: nowhere)")
	jsonPath := flag.String("json", "", "also write the figures as JSON to this file")
	to := harness.DefaultTargetOptions()
	flag.StringVar(&to.URL, "target", "", "instead of starting the engine, run the export side against this Bulk Data v2 server's FHIR base: clients, pollers, latencies, an HTML report (the -target-* flags)")
	flag.DurationVar(&to.Duration, "target-duration", to.Duration, "how long -target's clients keep kicking off exports")
	flag.IntVar(&to.Clients, "target-clients", to.Clients, "-target's clients exporting at once, one export after another each")
	flag.IntVar(&to.Pollers, "target-pollers", to.Pollers, "-target's extra pollers of the exports under way")
	flag.DurationVar(&to.PollEvery, "target-poll-every", to.PollEvery, "each extra poller's pause between polls")
	flag.StringVar(&to.Mix, "target-mix", to.Mix, "-target's levels and their weights")
	flag.StringVar(&to.Group, "target-group", "", "the Group of group-level exports (default: the first GET /Group lists)")
	flag.StringVar(&to.Types, "target-type", "", "_type of every -target export (default: all)")
	flag.IntVar(&to.Parallel, "target-parallel", to.Parallel, "downloads at once per -target client")
	flag.StringVar(&to.ClientID, "target-client", "", "SMART Backend Services client_id for -target (with -target-key)")
	flag.StringVar(&to.KeyFile, "target-key", "", "the -target client's private key (PEM, ES384 or RS384)")
	flag.StringVar(&to.KeyID, "target-kid", "", "the -target client's key id (default: the key's RFC 7638 thumbprint, as flatfhir clients keygen names keys)")
	flag.StringVar(&to.Scope, "target-scope", to.Scope, "scopes the -target client asks for")
	flag.StringVar(&to.HTML, "target-html", to.HTML, "where -target writes its report with plots (empty: nowhere)")
	flag.IntVar(&to.IngestPatients, "target-ingest", 0, "first load this many generated patients (about 50 resources each) into a flatfhir -target with $ingest")
	flag.StringVar(&to.AdminToken, "target-admin-token", os.Getenv("FLATFHIR_ADMIN_TOKEN"), "the operator credential -target-ingest sends (default: $FLATFHIR_ADMIN_TOKEN)")
	flag.Parse()
	opts.Progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if to.URL != "" {
		to.Progress = os.Stderr
		r, err := harness.RunTarget(ctx, to)
		if r != nil {
			_ = r.WriteTable(os.Stdout)
			if *jsonPath != "" {
				if err := r.WriteJSON(*jsonPath); err != nil {
					fmt.Fprintln(os.Stderr, "bulkbench: write json:", err)
				}
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bulkbench: FAILED:", err)
			os.Exit(1)
		}
		return
	}
	report, err := harness.Run(ctx, opts)
	if err != nil {
		// A failed soak's figures say what went wrong, and when.
		if report != nil && report.Soak != nil {
			_ = report.WriteTable(os.Stderr)
			if *jsonPath != "" {
				_ = report.WriteJSON(*jsonPath)
			}
		}
		fmt.Fprintln(os.Stderr, "bulkbench: FAILED:", err)
		os.Exit(1)
	}
	if err := report.WriteTable(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bulkbench:", err)
		os.Exit(1)
	}
	if *jsonPath != "" {
		if err := report.WriteJSON(*jsonPath); err != nil {
			fmt.Fprintln(os.Stderr, "bulkbench: write json:", err)
			os.Exit(1)
		}
	}
}
