package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	client, err := h.clickhouseClient()
	if err != nil {
		h.warn("raw insert not measured: %v", err)
		return Rate{}, nil
	}
	run := func(query, in, out string) error {
		var stdin io.Reader
		var stdout io.Writer
		if in != "" {
			f, err := os.Open(in)
			if err != nil {
				return err
			}
			defer f.Close()
			stdin = f
		}
		if out != "" {
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			defer f.Close()
			stdout = f
		}
		return client(ctx, query, stdin, stdout)
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

// clickhouseClient returns a function that runs one query with
// clickhouse-client on the harness's server, with stdin and stdout (either
// may be nil), or an error when there is no client.
func (h *harness) clickhouseClient() (func(ctx context.Context, query string, stdin io.Reader, stdout io.Writer) error, error) {
	if h.ch == nil {
		return nil, errors.New("on a cluster it would need one client per shard")
	}
	client, args := "clickhouse-client", []string{}
	if _, err := exec.LookPath(client); err != nil {
		client, args = "clickhouse", []string{"client"} // current releases: one binary
		if _, err := exec.LookPath(client); err != nil {
			return nil, errors.New("no clickhouse-client on PATH")
		}
	}
	host, port, err := net.SplitHostPort(h.ch.Addr())
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, query string, stdin io.Reader, stdout io.Writer) error {
		cmd := exec.CommandContext(ctx, client, append(args, "--host", host, "--port", port, "--query", query)...)
		var stderr strings.Builder
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("clickhouse-client %q: %w: %s", query, err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}, nil
}

// rawReadClient measures the read limit of an export: clickhouse-client
// reads every body (SELECT body ... FORMAT TSVRaw, one line each, as in an
// export file) into a sink that counts lines and bytes. One server only.
func (h *harness) rawReadClient(ctx context.Context) (Rate, error) {
	client, err := h.clickhouseClient()
	if err != nil {
		return Rate{}, errNoClient{err}
	}
	var sink lineCounter
	start := time.Now()
	if err := client(ctx, "SELECT body FROM "+h.store.TableName()+" FORMAT TSVRaw", nil, &sink); err != nil {
		return Rate{}, err
	}
	d := time.Since(start)
	if sink.lines != h.report.Ingest.Resources {
		return Rate{}, fmt.Errorf("clickhouse-client read %d bodies, want the %d ingested", sink.lines, h.report.Ingest.Resources)
	}
	return newRate(d, sink.lines, sink.bytes), nil
}

// errNoClient says why the clickhouse-client read was not measured.
type errNoClient struct{ error }

// lineCounter counts the lines and bytes written to it.
type lineCounter struct{ lines, bytes int64 }

func (c *lineCounter) Write(p []byte) (int, error) {
	c.bytes += int64(len(p))
	c.lines += int64(bytes.Count(p, []byte{'\n'}))
	return len(p), nil
}
