package api

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"os"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// lineSlack is the white space a line may carry beyond the resource limit.
const lineSlack = 4096

var ndjsonTypes = map[string]bool{"application/fhir+ndjson": true, "application/ndjson": true, "application/x-ndjson": true, "application/fhir ndjson": true}

// ingest serves POST [base]/$ingest: an NDJSON body of resources of any
// types, optionally gzipped. The body is streamed through validation into
// a spool file; only when every line is valid is anything published, so a
// bad line leaves nothing applied. It answers once every resource is
// durably in CHANGES: a kick-off made after that sees the data.
func (s *Server) ingest(c *fiber.Ctx) error {
	ctx := c.UserContext()
	mt, _, err := mime.ParseMediaType(c.Get(fiber.HeaderContentType))
	if err != nil || !ndjsonTypes[mt] {
		return unsupportedMedia("$ingest takes Content-Type application/fhir+ndjson, not %q", c.Get(fiber.HeaderContentType))
	}
	var body io.Reader = c.Context().RequestBodyStream()
	if body == nil {
		body = bytes.NewReader(c.Body())
	}
	switch enc := strings.ToLower(strings.TrimSpace(c.Get(fiber.HeaderContentEncoding))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			return badRequest("the body is not valid gzip: %v", err)
		}
		defer zr.Close()
		body = zr
	default:
		return unsupportedMedia("Content-Encoding %q is not supported; use gzip or none", enc)
	}
	spool, err := os.CreateTemp(s.cfg.SpoolDir, "flatfhir-ingest-*")
	if err != nil {
		return fmt.Errorf("create ingest spool: %w", err)
	}
	defer func() { spool.Close(); os.Remove(spool.Name()) }()

	maxLine := int(s.deps.NC.MaxPayload()) - 1024
	n, err := validateInto(body, spool, maxLine)
	if err != nil {
		return err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewind ingest spool: %w", err)
	}
	pub := streams.NewChangePublisher(s.deps.JS)
	r := bufio.NewReaderSize(spool, 1<<20)
	for i := 0; i < n; i++ {
		typ, id, line, err := readSpooled(r)
		if err != nil {
			return fmt.Errorf("read ingest spool: %w", err)
		}
		if err := pub.Put(ctx, typ, id, line); err != nil {
			return err
		}
	}
	if err := pub.Wait(ctx); err != nil {
		return err
	}
	s.metrics.ingested.Add(ctx, int64(n))
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	return c.Send(fhir.Outcome(fhir.SeverityInformation, fhir.CodeInformational, fmt.Sprintf("accepted %d resources", n)).JSON())
}

// validateInto checks each NDJSON line of body and spools it as
// "type\tid\tlen\n<line>" records. It returns the number of resources.
func validateInto(body io.Reader, spool io.Writer, maxLine int) (int, error) {
	br := bufio.NewReaderSize(body, 1<<20)
	w := bufio.NewWriterSize(spool, 1<<20)
	var line []byte
	n, lineNo := 0, 0
	for {
		line = line[:0]
		var err error
		for {
			var chunk []byte
			chunk, err = br.ReadSlice('\n')
			line = append(line, chunk...)
			// The limit is on the resource; allow its line ending and some
			// blanks around it, but never read an unbounded line.
			if len(line) > maxLine+lineSlack || len(bytes.TrimSpace(line)) > maxLine && !errors.Is(err, bufio.ErrBufferFull) {
				return 0, tooLarge("line %d: resource larger than %d bytes", lineNo+1, maxLine)
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err != nil && err != io.EOF {
			return 0, badRequest("reading the body after line %d: %v", lineNo, err)
		}
		if len(line) > 0 {
			lineNo++
			trimmed := bytes.TrimSpace(line)
			if len(trimmed) > 0 {
				h, ierr := fhir.Inspect(trimmed, true)
				if ierr != nil {
					return 0, badRequest("line %d: %v; nothing from this request was applied", lineNo, ierr)
				}
				fmt.Fprintf(w, "%s\t%s\t%d\n", h.ResourceType, h.ID, len(trimmed))
				w.Write(trimmed)
				n++
			}
		}
		if err == io.EOF {
			break
		}
	}
	if n == 0 {
		return 0, badRequest("the body holds no resources")
	}
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("write ingest spool: %w", err)
	}
	return n, nil
}

func readSpooled(r *bufio.Reader) (typ, id string, line []byte, err error) {
	head, err := r.ReadString('\n')
	if err != nil {
		return "", "", nil, err
	}
	var size int
	if _, err := fmt.Sscanf(head, "%s\t%s\t%d\n", &typ, &id, &size); err != nil {
		return "", "", nil, err
	}
	line = make([]byte, size)
	_, err = io.ReadFull(r, line)
	return typ, id, line, err
}
