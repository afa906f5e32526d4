package api

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"mime"
	"slices"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// attachment serves GET and HEAD [base]/files/{job}/attachments/Binary/{id}
// under the authorization of the export's files: the Binary's content as of
// transactionTime, when an attachment index of the export names it and it
// is one of the export's patients' (any Binary at system level). Anything
// else is a 404. ADR 0006 has the rules and why.
func (s *Server) attachment(c *fiber.Ctx) error {
	job, err := s.loadJob(c)
	if err != nil {
		return err
	}
	id := c.Params("id")
	if job.Status != streams.JobComplete {
		return notFound("export %s is not complete: it has no attachments yet", job.JobID)
	}
	if !fhir.ValidID(id) {
		return notFound("export %s has no attachment Binary/%q: not a valid id", job.JobID, id)
	}
	ctx := c.UserContext()
	named, err := s.attachmentNamed(ctx, job, id)
	if err != nil {
		return err
	}
	if !named {
		return notFound("export %s has no attachment Binary/%s: no attachment in its output names that Binary", job.JobID, id)
	}
	until := chstore.Micros(job.TransactionTime)
	body, ok, err := s.deps.Store.ReadOne(ctx, "Binary", id, until)
	if err != nil {
		return transient("Binary/%s could not be read; retry: %v", id, err)
	}
	if !ok {
		return notFound("export %s has no attachment Binary/%s: it did not exist at the export's transactionTime", job.JobID, id)
	}
	var b struct {
		ContentType     string `json:"contentType"`
		SecurityContext *struct {
			Reference string `json:"reference"`
		} `json:"securityContext"`
		Data string `json:"data"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return broken("Binary/%s is stored malformed: %v", id, err)
	}
	var security string
	if b.SecurityContext != nil {
		security = b.SecurityContext.Reference
	}
	covered, err := s.binaryCovered(ctx, job, security)
	if err != nil {
		return err
	}
	if !covered {
		return notFound("export %s has no attachment Binary/%s: the Binary belongs to none of the export's patients", job.JobID, id)
	}
	if b.Data == "" {
		return notFound("Binary/%s has no content on this server (no data), so there is nothing to download", id)
	}
	content, err := base64.StdEncoding.DecodeString(b.Data)
	if err != nil {
		return broken("Binary/%s holds data that is not base64: %v", id, err)
	}
	// Keep the export's files from expiring under a client that is still
	// fetching its attachments, as a file download does.
	s.renewLease(job.JobID)

	c.Set(fiber.HeaderContentType, attachmentType(b.ContentType))
	// The content is the client's, not the server's: never sniffed or run
	// as active content on this origin.
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	c.Set(fiber.HeaderContentSecurityPolicy, "sandbox")
	c.Set(fiber.HeaderVary, fiber.HeaderAcceptEncoding)
	if !acceptsGzip(c.Get(fiber.HeaderAcceptEncoding)) || len(content) < 1024 {
		return c.Send(content)
	}
	c.Set(fiber.HeaderContentEncoding, "gzip")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // a valid level never errs
		if _, err := zw.Write(content); err != nil {
			s.deps.Log.Warn("attachment download interrupted", "job", job.JobID, "binary", id, "error", err)
			return
		}
		_ = zw.Close()
	})
	return nil
}

// binaryCovered reports whether an export could hold a Binary whose
// securityContext reference is security: every Binary at system level; at
// Patient and Group level one of the export's patients' Binaries, as the
// planner listed them (streams.PatientsObject).
func (s *Server) binaryCovered(ctx context.Context, job streams.Job, security string) (bool, error) {
	if job.Level == streams.LevelSystem {
		return true, nil
	}
	patient, ok := compartment.ReferencedPatientID(security)
	if !ok {
		return false, nil
	}
	if job.Level != streams.LevelGroup && len(job.Patients) == 0 {
		return true, nil // any patient's
	}
	patients, err := streams.LoadPatients(ctx, s.files, job.JobID)
	if errors.Is(err, streams.ErrNoPatientList) {
		return false, nil
	}
	if err != nil {
		return false, transient("the patients of export %s could not be read; retry: %v", job.JobID, err)
	}
	_, found := slices.BinarySearch(patients, patient)
	return found, nil
}

// attachmentType is the Content-Type for a Binary's contentType: as
// stored when it is a well-formed media type, else
// application/octet-stream.
func attachmentType(ct string) string {
	ct = strings.TrimSpace(ct)
	if ct == "" || strings.ContainsAny(ct, "\r\n") {
		return fiber.MIMEOctetStream
	}
	if _, _, err := mime.ParseMediaType(ct); err != nil {
		return fiber.MIMEOctetStream
	}
	return ct
}
