package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/klauspost/compress/gzip"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

var fileName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.\-]{0,200}\.ndjson$`)

// leaseEvery is how often a running download renews its lease, which keeps
// the janitor from removing the export's files under it.
const leaseEvery = 30 * time.Second

// file streams one output file of a complete export. It honours a single
// byte Range (206, or 416 when unsatisfiable) and Accept-Encoding: gzip
// (for whole-file requests). A file stored compressed (docs/adr/0009) goes
// as stored to a client that accepts gzip, and decompressed to one that
// does not and to byte ranges, which count the NDJSON's bytes; a file
// stored plain is compressed on the way to a client that accepts gzip.
func (s *Server) file(c *fiber.Ctx) error {
	job, err := s.loadJob(c)
	if err != nil {
		return err
	}
	name := c.Params("name")
	if job.Status != streams.JobComplete || !fileName.MatchString(name) {
		return notFound("export %s has no file %q", job.JobID, name)
	}
	release, err := s.downloads.acquire(c)
	if err != nil {
		return err
	}
	object := streams.ObjectName(job.JobID, name)
	// The object's reads last as long as the download, after this handler
	// returns. Their context needs a deadline of its own: without one the
	// object store gives them its API timeout (5 s), and a download that
	// took longer failed with "nats: timeout".
	rctx, stop := context.WithTimeout(context.WithoutCancel(c.UserContext()), maxDownload)
	// cancel ends the reads and gives the download's slot back.
	cancel := func() { stop(); release() }
	open := func() (jetstream.ObjectResult, error) { return s.files.Get(rctx, object) }
	first, err := open()
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		cancel()
		return notFound("export %s has no file %q", job.JobID, name)
	}
	if err != nil {
		cancel()
		return transient("file %s of export %s could not be read; retry: %v", name, job.JobID, err)
	}
	info, err := first.Info()
	if err != nil {
		first.Close()
		cancel()
		return transient("file %s of export %s could not be read; retry: %v", name, job.JobID, err)
	}
	obj := newResumingReader(first, info.NUID, open, cancel, s.deps.Log.With("job", job.JobID, "file", name))
	form, err := streams.FileFormOf(info)
	if err != nil {
		obj.Close()
		return transient("file %s of export %s could not be read: %v", name, job.JobID, err)
	}
	size := form.Size
	lease := &leasedReader{r: obj, renew: func() { s.renewLease(job.JobID) }}
	lease.renew()
	lease.last = time.Now()
	// plain is the file's NDJSON, decompressed when stored compressed.
	plain := func() (io.Reader, error) {
		if !form.Gzip {
			return lease, nil
		}
		return gzip.NewReader(lease)
	}

	c.Set(fiber.HeaderContentType, "application/fhir+ndjson")
	c.Set(fiber.HeaderAcceptRanges, "bytes")
	c.Set(fiber.HeaderVary, fiber.HeaderAcceptEncoding)
	if rh := c.Get(fiber.HeaderRange); rh != "" {
		start, end, ok, satisfiable := parseRange(rh, size)
		if ok {
			if !satisfiable {
				obj.Close()
				c.Set(fiber.HeaderContentRange, fmt.Sprintf("bytes */%d", size))
				return &problem{fiber.StatusRequestedRangeNotSatisfiable, fhir.SeverityError, fhir.CodeInvalid, fmt.Sprintf("range %q is outside the file's %d bytes", rh, size)}
			}
			body, err := plain()
			if err == nil {
				_, err = io.CopyN(io.Discard, body, start)
			}
			if err != nil {
				obj.Close()
				return transient("file %s of export %s could not be read; retry: %v", name, job.JobID, err)
			}
			c.Set(fiber.HeaderContentRange, fmt.Sprintf("bytes %d-%d/%d", start, end, size))
			c.Status(fiber.StatusPartialContent)
			c.Context().SetBodyStream(readCloser{io.LimitReader(body, end-start+1), obj}, int(end-start+1))
			return nil
		}
		// A multi-range or malformed Range is ignored: the whole file follows.
	}
	gz := acceptsGzip(c.Get(fiber.HeaderAcceptEncoding))
	if gz && form.Gzip {
		// As stored: the download is a copy.
		c.Set(fiber.HeaderContentEncoding, "gzip")
		c.Context().SetBodyStream(readCloser{lease, obj}, int(form.Stored))
		return nil
	}
	body, err := plain()
	if err != nil {
		obj.Close()
		return transient("file %s of export %s could not be read; retry: %v", name, job.JobID, err)
	}
	if !gz {
		c.Context().SetBodyStream(readCloser{body, obj}, int(size))
		return nil
	}
	// A file stored plain: compress while streaming, never holding it whole.
	c.Set(fiber.HeaderContentEncoding, "gzip")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer obj.Close()
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // a valid level never errs
		if _, err := io.Copy(zw, body); err != nil {
			s.deps.Log.Warn("file download interrupted", "job", job.JobID, "file", name, "error", err)
			return
		}
		_ = zw.Close()
	})
	return nil
}

// parseRange reads a single "bytes=a-b", "bytes=a-" or "bytes=-n" range.
// ok is false for anything else (the Range is then ignored).
func parseRange(h string, size int64) (start, end int64, ok, satisfiable bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, false
	}
	var err error
	switch {
	case a == "" && b == "":
		return 0, 0, false, false
	case a == "": // the last n bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false, false
		}
		if n == 0 || size == 0 {
			return 0, 0, true, false
		}
		if n > size {
			n = size
		}
		return size - n, size - 1, true, true
	default:
		if start, err = strconv.ParseInt(a, 10, 64); err != nil || start < 0 {
			return 0, 0, false, false
		}
		end = size - 1
		if b != "" {
			if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
				return 0, 0, false, false
			}
			if end > size-1 {
				end = size - 1
			}
		}
		if start >= size {
			return 0, 0, true, false
		}
		return start, end, true, true
	}
}

// renewLease records that a file of job is being downloaded now.
func (s *Server) renewLease(job string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.jobs.RenewDownload(ctx, job, s.deps.Now()); err != nil {
		s.deps.Log.Warn("download lease not renewed", "job", job, "error", err)
	}
}

// leasedReader renews the download lease while the file is being read.
type leasedReader struct {
	r     io.Reader
	renew func()
	last  time.Time
}

func (l *leasedReader) Read(p []byte) (int, error) {
	if time.Since(l.last) > leaseEvery {
		l.last = time.Now()
		l.renew()
	}
	return l.r.Read(p)
}

// resumeAttempts bounds how often one download opens its object again.
const resumeAttempts = 3

// maxDownload bounds one download's time.
const maxDownload = 24 * time.Hour

// resumingReader reads a stored file. When a read fails midway (a NATS
// reconnect ends the consumer that delivers the object's chunks: "nats:
// timeout"), it opens the object again, skips what it already delivered,
// and carries on, so that the client's download does not end short.
type resumingReader struct {
	cur   jetstream.ObjectResult
	nuid  string // the object's identity: a resumed read must be of the same one
	open  func() (jetstream.ObjectResult, error)
	done  context.CancelFunc // ends the reads' context
	log   *slog.Logger
	off   int64 // bytes delivered
	tries int
}

func newResumingReader(obj jetstream.ObjectResult, nuid string, open func() (jetstream.ObjectResult, error), done context.CancelFunc, log *slog.Logger) *resumingReader {
	return &resumingReader{cur: obj, nuid: nuid, open: open, done: done, log: log}
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		n, err := r.cur.Read(p)
		r.off += int64(n)
		if err == nil || errors.Is(err, io.EOF) || n > 0 {
			return n, err // a failure after n > 0 bytes recurs on the next read
		}
		if r.tries >= resumeAttempts {
			return 0, err
		}
		r.tries++
		r.log.Warn("file read failed midway; reading it again from the same byte",
			slog.Int64("offset", r.off), slog.Int("attempt", r.tries), slog.Any("error", err))
		if rerr := r.resume(); rerr != nil {
			return 0, fmt.Errorf("%w; reading it again: %w", err, rerr)
		}
	}
}

// resume opens the object again and skips the bytes already delivered.
func (r *resumingReader) resume() error {
	_ = r.cur.Close()
	time.Sleep(time.Duration(r.tries) * 500 * time.Millisecond) // a reconnect takes a moment
	obj, err := r.open()
	if err != nil {
		return err
	}
	r.cur = obj
	info, err := obj.Info()
	if err != nil {
		return err
	}
	if info.NUID != r.nuid {
		return errors.New("the file was replaced")
	}
	_, err = io.CopyN(io.Discard, obj, r.off)
	return err
}

func (r *resumingReader) Close() error {
	defer r.done()
	return r.cur.Close()
}

// readCloser reads from r and closes c when the server is done with it.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }
