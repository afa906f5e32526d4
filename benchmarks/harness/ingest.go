package harness

import (
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/flatfhir/flatfhir/shared/synth"
)

// countingWriter counts what passes through to w.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// chunkBody is the body of one ingest request being generated: NDJSON
// lines into a pipe, optionally through gzip.
type chunkBody struct {
	pw    *io.PipeWriter
	wire  *countingWriter
	gz    *gzip.Writer
	buf   *bufio.Writer
	lines int
	raw   int64
	// counted receives (lines, raw bytes, wire bytes) once the body is complete.
	counted chan [3]int64
}

func newChunkBody(pw *io.PipeWriter, gz bool) *chunkBody {
	c := &chunkBody{pw: pw, wire: &countingWriter{w: pw}, counted: make(chan [3]int64, 1)}
	var w io.Writer = c.wire
	if gz {
		// BestSpeed keeps the generating side cheap: the harness shares the
		// machine with the engine.
		c.gz, _ = gzip.NewWriterLevel(c.wire, gzip.BestSpeed)
		w = c.gz
	}
	c.buf = bufio.NewWriterSize(w, 256<<10)
	return c
}

func (c *chunkBody) line(body []byte) error {
	if _, err := c.buf.Write(body); err != nil {
		return err
	}
	if err := c.buf.WriteByte('\n'); err != nil {
		return err
	}
	c.lines++
	c.raw += int64(len(body)) + 1
	return nil
}

func (c *chunkBody) finish() error {
	err := c.buf.Flush()
	if err == nil && c.gz != nil {
		err = c.gz.Close()
	}
	if err != nil {
		c.pw.CloseWithError(err)
		return err
	}
	c.counted <- [3]int64{int64(c.lines), c.raw, c.wire.n}
	return c.pw.Close()
}

// request is one ingest request handed from the generator to the poster.
type request struct {
	body    *io.PipeReader
	counted chan [3]int64
}

// ingest generates the data set and posts it in chunks, one request at a
// time, then waits until every row is queryable.
func (h *harness) ingest(ctx context.Context) (IngestResult, error) {
	res := IngestResult{PerType: map[string]int64{}}
	genCtx, stopGen := context.WithCancel(ctx)
	defer stopGen()
	reqs := make(chan request)
	genDone := make(chan error, 1)
	start := time.Now()
	go func() {
		defer close(reqs)
		var cur *chunkBody
		err := synth.Generate(genCtx, synth.Config{Patients: h.opts.Patients, Seed: h.opts.Seed}, func(typ string, body []byte) error {
			if cur == nil {
				pr, pw := io.Pipe()
				cur = newChunkBody(pw, h.opts.Gzip)
				select {
				case reqs <- request{body: pr, counted: cur.counted}:
				case <-genCtx.Done():
					return genCtx.Err()
				}
			}
			res.PerType[typ]++
			if err := cur.line(body); err != nil {
				return err
			}
			if cur.lines >= h.opts.ChunkResources {
				err := cur.finish()
				cur = nil
				return err
			}
			return nil
		})
		if err == nil && cur != nil {
			err = cur.finish()
		} else if err != nil && cur != nil {
			cur.pw.CloseWithError(err)
		}
		genDone <- err
	}()

	var postErr error
	for r := range reqs {
		if postErr != nil {
			r.body.CloseWithError(postErr)
			continue
		}
		n, raw, wire, err := h.post(ctx, r)
		if err != nil {
			postErr = fmt.Errorf("ingest request %d: %w", res.Requests+1, err)
			r.body.CloseWithError(postErr)
			stopGen()
			continue
		}
		res.Requests++
		res.Resources += n
		res.NDJSONBytes += raw
		res.WireBytes += wire
		fmt.Fprintf(h.opts.Progress, "bulkbench: ingest %s resources accepted (%.0f/s)\n",
			group(res.Resources), float64(res.Resources)/time.Since(start).Seconds())
	}
	genErr := <-genDone
	if postErr != nil {
		return res, postErr
	}
	if genErr != nil {
		return res, fmt.Errorf("generate: %w", genErr)
	}
	res.Accepted = newRate(time.Since(start), res.Resources, res.NDJSONBytes)

	if err := h.waitQueryable(ctx, res.Resources); err != nil {
		return res, err
	}
	res.Queryable = newRate(time.Since(start), res.Resources, res.NDJSONBytes)
	return res, nil
}

// post sends one chunk and checks that every resource of it was accepted.
func (h *harness) post(ctx context.Context, r request) (n, raw, wire int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/$ingest", r.body)
	if err != nil {
		return 0, 0, 0, err
	}
	req.Header.Set("Content-Type", "application/fhir+ndjson")
	if h.opts.Gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := h.ingestClient.Do(req)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return 0, 0, 0, fmt.Errorf("POST /$ingest: %s: %s", resp.Status, out)
	}
	var counts [3]int64
	select {
	case counts = <-r.counted:
	case <-ctx.Done():
		return 0, 0, 0, ctx.Err()
	case <-time.After(time.Minute):
		return 0, 0, 0, fmt.Errorf("POST /$ingest answered 200 (%s) before its body was complete", out)
	}
	if want := fmt.Sprintf("accepted %d resources", counts[0]); !strings.Contains(string(out), want) {
		return 0, 0, 0, fmt.Errorf("POST /$ingest of %d resources answered %s, which does not say %q", counts[0], out, want)
	}
	return counts[0], counts[1], counts[2], nil
}

// waitQueryable polls count() of the table until it holds total rows.
func (h *harness) waitQueryable(ctx context.Context, total int64) error {
	deadline := time.Now().Add(h.opts.ExportTimeout)
	q := "SELECT count() FROM " + h.store.TableName()
	var last uint64
	for {
		if err := h.childrenAlive(); err != nil {
			return err
		}
		var n uint64
		for _, conn := range h.store.ShardConns() {
			var part uint64
			if err := conn.QueryRow(ctx, q).Scan(&part); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
			n += part
		}
		switch {
		case int64(n) == total:
			return nil
		case int64(n) > total:
			return fmt.Errorf("%s holds %d rows, more than the %d resources ingested: rows were inserted twice (%s)", h.store.TableName(), n, total, h.twiceStored(ctx))
		}
		if n != last {
			last = n
			fmt.Fprintf(h.opts.Progress, "bulkbench: %s of %s rows queryable\n", group(int64(n)), group(total))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d rows queryable after %s", n, total, h.opts.ExportTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// twiceStored names a few versions stored more than once, with the parts
// holding them, for the failure message.
func (h *harness) twiceStored(ctx context.Context) string {
	q := "SELECT seq, type, id, groupArray(_part) FROM " + h.store.TableName() +
		" GROUP BY seq, type, id HAVING count() > 1 ORDER BY seq LIMIT 5"
	var out []string
	for i, conn := range h.store.ShardConns() {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			return err.Error()
		}
		for rows.Next() {
			var seq uint64
			var typ, id string
			var parts []string
			if err := rows.Scan(&seq, &typ, &id, &parts); err != nil {
				rows.Close()
				return err.Error()
			}
			out = append(out, fmt.Sprintf("shard %d: change %d %s/%s in parts %v", i+1, seq, typ, id, parts))
		}
		rows.Close()
	}
	return strings.Join(out, "; ")
}
