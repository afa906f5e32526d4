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
	flag.IntVar(&opts.Runs, "runs", opts.Runs, "export runs; the median is reported")
	flag.Float64Var(&opts.ChangeFraction, "change", opts.ChangeFraction, "fraction of the store changed, then exported with _since (0 skips it)")
	flag.IntVar(&opts.ChainRounds, "chain-rounds", 0, "rounds of the chained-export check (DESIGN.md invariant 1) on the loaded store; 0 skips it")
	flag.IntVar(&opts.ChainChanges, "chain-changes", opts.ChainChanges, "changes per chained-export round")
	flag.IntVar(&opts.ClientRuns, "client-runs", 0, "system exports timed through a client that honours Retry-After exactly; 0 skips it")
	flag.BoolVar(&opts.Gzip, "gzip", false, "send ingest bodies gzip-compressed")
	flag.BoolVar(&opts.Keep, "keep", false, "keep the temporary directory (data, logs, binary)")
	flag.IntVar(&opts.Ingesters, "ingesters", 1, "ingester processes (they share the 16 partitions of CHANGES and insert in parallel)")
	flag.BoolVar(&opts.Cluster, "cluster", false, "run the engine on a local cluster as make run-cluster does (2x2 ClickHouse, 3 NATS nodes, a process per role)")
	flag.StringVar(&opts.ProfileDir, "profile", "", "write CPU profiles of the ingest and the first export (the harness and every engine process) into this directory, and name each process's top functions")
	flag.BoolVar(&opts.KillWriter, "kill-writer", false, "after the timed exports, run one during which the writer process is killed (SIGKILL) and started again, and report its extra seconds")
	flag.BoolVar(&opts.FileGzip, "file-gzip", false, "writers store export files gzip-compressed (FLATFHIR_FILE_COMPRESSION=gzip)")
	flag.DurationVar(&opts.Soak, "soak", 0, "instead of the timed exports, a soak of this length (e.g. 15m) after the ingest: continuous ingest, FHIR writes, exports at all three levels, _since chains, pollers and cancellations, every export verified, every process sampled")
	flag.IntVar(&opts.SoakIngestRate, "soak-ingest-rate", opts.SoakIngestRate, "resources a second the soak ingests")
	flag.DurationVar(&opts.SoakSampleEvery, "soak-sample", opts.SoakSampleEvery, "how often the soak samples every process's memory and goroutines")
	flag.StringVar(&opts.SoakHTML, "soak-html", "soak.html", "where the soak writes its report with plots (empty: nowhere)")
	jsonPath := flag.String("json", "", "also write the figures as JSON to this file")
	flag.Parse()
	opts.Progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
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
