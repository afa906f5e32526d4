package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
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
	obj, err := s.files.Get(c.UserContext(), streams.ObjectName(job.JobID, name))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return notFound("export %s has no file %q", job.JobID, name)
	}
	if err != nil {
		return transient("file %s of export %s could not be read; retry: %v", name, job.JobID, err)
	}
	info, err := obj.Info()
	if err != nil {
		obj.Close()
		return transient("file %s of export %s could not be read; retry: %v", name, job.JobID, err)
	}
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

// readCloser reads from r and closes c when the server is done with it.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }
