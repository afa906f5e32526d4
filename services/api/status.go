package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// loadJob returns the job named in the path, or a 404 problem for an
// unknown, cancelled or released one.
func (s *Server) loadJob(c *fiber.Ctx) (streams.Job, error) {
	id := c.Params("job")
	if !streams.ValidJobID(id) {
		return streams.Job{}, notFound("no export %q", id)
	}
	job, _, err := s.jobs.Get(c.UserContext(), id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || err == nil && job.Status == streams.JobCancelled {
		return streams.Job{}, notFound("no export %q: it does not exist, or it was cancelled or deleted", id)
	}
	if err != nil {
		return streams.Job{}, transient("the status of export %s could not be read; retry later: %v", id, err)
	}
	if err := s.authorizeJob(c, job); err != nil {
		return streams.Job{}, err
	}
	return job, nil
}

// manifestJSON is the complete-status body, exactly as the IG shapes it.
type manifestJSON struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	Output              []manifestItem `json:"output"`
	Deleted             []manifestItem `json:"deleted,omitempty"`
	Error               []manifestItem `json:"error"`
}

type manifestItem struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int    `json:"count"`
}

// status serves GET on the polling URL.
func (s *Server) status(c *fiber.Ctx) error {
	job, err := s.loadJob(c)
	if err != nil {
		return err
	}
	if ok, wait := s.polls.allow(job.JobID, s.deps.Now()); !ok {
		return throttled(c, wait, "export "+job.JobID+" is polled too often; wait for Retry-After between polls")
	}
	if !finished(job) && s.cfg.StatusHold > 0 {
		job = s.hold(c.UserContext(), job, s.cfg.StatusHold)
	}
	switch job.Status {
	case streams.JobFailed:
		return jobFailed("export %s failed: %s", job.JobID, job.Error)
	case streams.JobCancelled:
		return notFound("no export %q: it was cancelled or deleted", job.JobID)
	case streams.JobComplete:
	default:
		// In progress: headers only, as the IG shapes it.
		c.Set("X-Progress", progressText(job))
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(retryAfterSeconds(job, s.deps.Now(), s.cfg.RetryAfter, s.cfg.StatusHold)))
		return empty(c, fiber.StatusAccepted)
	}
	obj, err := s.files.GetBytes(c.UserContext(), job.Manifest)
	if err != nil {
		return transient("the manifest of export %s could not be read; retry later: %v", job.JobID, err)
	}
	var m streams.Manifest
	if err := streams.Decode(obj, &m); err != nil {
		return err
	}
	base := s.baseURL(c) + "/files/" + url.PathEscape(job.JobID) + "/"
	items := func(files []streams.ManifestFile) []manifestItem {
		out := make([]manifestItem, 0, len(files))
		for _, f := range files {
			out = append(out, manifestItem{Type: f.Type, URL: base + url.PathEscape(f.Name), Count: f.Count})
		}
		return out
	}
	body := manifestJSON{
		TransactionTime:     fhir.FormatInstant(m.TransactionTime),
		Request:             m.Request,
		RequiresAccessToken: s.cfg.Auth,
		Output:              items(m.Output),
		Deleted:             items(m.Deleted),
		Error:               items(m.Error),
	}
	c.Set(fiber.HeaderExpires, job.ExpiresAt.UTC().Format(http.TimeFormat))
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(fiber.StatusOK).Send(encodeJSON(body))
}

// cancel serves DELETE on the polling URL: it cancels a running export or
// releases a finished one. Planners then remove its tasks and files.
func (s *Server) cancel(c *fiber.Ctx) error {
	job, err := s.loadJob(c)
	if err != nil {
		return err
	}
	ctx := c.UserContext()
	if _, err := s.jobs.Update(ctx, job.JobID, func(j *streams.Job) bool {
		j.Status = streams.JobCancelled
		return true
	}); err != nil {
		return transient("export %s could not be cancelled; retry: %v", job.JobID, err)
	}
	if !finished(job) {
		s.metrics.ended.Add(ctx, 1, streams.ExportAttrs(job.Level, streams.JobCancelled))
	}
	if _, err := s.deps.JS.Publish(ctx, streams.SubjectJobCancel(job.JobID), nil); err != nil {
		return transient("export %s is cancelled but its clean-up could not be queued; retry: %v", job.JobID, err)
	}
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	return c.Status(fiber.StatusAccepted).Send(fhir.Outcome(fhir.SeverityInformation, fhir.CodeInformational,
		"export "+job.JobID+" is cancelled and its files will be deleted").JSON())
}

// acceptsGzip reports whether an Accept-Encoding value allows gzip.
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q := strings.ReplaceAll(strings.ToLower(params), " ", "")
		return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
	}
	return false
}

// encodeJSON marshals v without HTML escaping, so URLs keep their '&'.
func encodeJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the manifest and bundle types always encode
	return bytes.TrimRight(b.Bytes(), "\n")
}
