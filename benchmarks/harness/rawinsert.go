package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/flatfhir/flatfhir/shared/chstore"
)

// rawInsert measures the insert limit of ingest on the same rows:
// clickhouse-client inserts every stored version, in ClickHouse's Native
// format, into a scratch copy of the tables made with the engine's DDL,
// its change log feed included. It runs Runs times, each into empty
// tables, and returns the median. One server only: on a cluster it
// returns a zero Rate and says why.
func (h *harness) rawInsert(ctx context.Context) (Rate, error) {
	if h.ch == nil {
		h.warn("raw insert not measured on a cluster (it would need one client per shard)")
		return Rate{}, nil
	}
	client, args := "clickhouse-client", []string{}
	if _, err := exec.LookPath(client); err != nil {
		client, args = "clickhouse", []string{"client"} // current releases: one binary
		if _, err := exec.LookPath(client); err != nil {
			h.warn("raw insert not measured: no clickhouse-client on PATH")
			return Rate{}, nil
		}
	}
	host, port, err := net.SplitHostPort(h.ch.Addr())
	if err != nil {
		return Rate{}, err
	}
	run := func(query, in, out string) error {
		cmd := exec.CommandContext(ctx, client, append(args, "--host", host, "--port", port, "--query", query)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if in != "" {
			f, err := os.Open(in)
			if err != nil {
				return err
			}
			defer f.Close()
			cmd.Stdin = f
		}
		if out != "" {
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			defer f.Close()
			cmd.Stdout = f
		}
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("clickhouse-client %q: %w: %s", query, err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	dump := filepath.Join(h.dir, "versions.native")
	defer os.Remove(dump)
	if err := run("SELECT "+chstore.Columns+" FROM "+h.store.TableName()+" FORMAT Native", "", dump); err != nil {
		return Rate{}, err
	}
	info, err := os.Stat(dump)
	if err != nil {
		return Rate{}, err
	}
	scratch := h.report.Setup.Database + "_rawinsert"
	drop := func() error { return run("DROP DATABASE IF EXISTS "+scratch, "", "") }
	defer drop()
	var rates []Rate
	for i := 1; i <= h.opts.Runs; i++ {
		fmt.Fprintf(h.opts.Progress, "bulkbench: raw clickhouse-client insert %d of %d\n", i, h.opts.Runs)
		if err := drop(); err != nil {
			return Rate{}, err
		}
		s, err := chstore.Open(ctx, chstore.Config{Addr: []string{h.ch.Addr()}, Database: scratch}, h.log)
		if err != nil {
			return Rate{}, fmt.Errorf("create the scratch tables: %w", err)
		}
		_ = s.Close()
		table := scratch + "." + chstore.Table
		start := time.Now()
		if err := run("INSERT INTO "+table+" ("+chstore.Columns+") FORMAT Native", dump, ""); err != nil {
			return Rate{}, err
		}
		d := time.Since(start)
		for _, t := range []string{table, scratch + "." + chstore.ChangesTable} {
			var n uint64
			if err := h.store.Conn().QueryRow(ctx, "SELECT count() FROM "+t).Scan(&n); err != nil {
				return Rate{}, err
			}
			if int64(n) != h.report.Ingest.Resources {
				return Rate{}, fmt.Errorf("the raw insert left %d rows in %s, want %d", n, t, h.report.Ingest.Resources)
			}
		}
		rates = append(rates, newRate(d, h.report.Ingest.Resources, info.Size()))
	}
	return medianRate(rates), nil
}
