package api

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nuid"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// writeTimeout bounds how long a FHIR write waits for its change to be
// ingested, so that its response carries the stored version.
const writeTimeout = 30 * time.Second

// resourceType reads and checks the {type} path segment.
func resourceType(c *fiber.Ctx) (string, error) {
	typ := c.Params("type")
	if !fhir.IsResourceType(typ) {
		return "", notFound("%q is not an R4 resource type", typ)
	}
	return typ, nil
}

// readResource serves GET [base]/{type}/{id}: the current version, 410 for
// a deleted resource, 404 for one never stored.
func (s *Server) readResource(c *fiber.Ctx) error {
	typ, err := resourceType(c)
	if err != nil {
		return err
	}
	id := c.Params("id")
	if !fhir.ValidID(id) {
		return notFound("%s/%s does not exist", typ, id)
	}
	if err := s.caughtUp(c.UserContext()); err != nil {
		return err
	}
	body, ok, err := s.deps.Store.ReadOne(c.UserContext(), typ, id, math.MaxUint64)
	if err != nil {
		return transient("%s/%s could not be read; retry: %v", typ, id, err)
	}
	if !ok {
		return notFound("%s/%s does not exist or was deleted", typ, id)
	}
	return s.sendResource(c, fiber.StatusOK, typ, body)
}

// version is what a stored resource says about itself.
type version struct {
	id, versionID string
	lastUpdated   time.Time // zero when unknown
}

// versionOf reads the id and meta a stored body carries.
func versionOf(body []byte) version {
	var r struct {
		ID   string `json:"id"`
		Meta struct {
			VersionID   string `json:"versionId"`
			LastUpdated string `json:"lastUpdated"`
		} `json:"meta"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return version{}
	}
	v := version{id: r.ID, versionID: r.Meta.VersionID}
	if t, err := fhir.ParseInstant(r.Meta.LastUpdated); err == nil {
		v.lastUpdated = t
	}
	return v
}

// etag is the weak ETag of a version id.
func etag(versionID string) string { return `W/"` + versionID + `"` }

// location is the URL of one version of typ/id.
func (s *Server) location(c *fiber.Ctx, typ, id, versionID string) string {
	return s.baseURL(c) + "/" + typ + "/" + id + "/_history/" + versionID
}

// sendResource answers with a stored resource and its version headers.
func (s *Server) sendResource(c *fiber.Ctx, status int, typ string, body []byte) error {
	v := versionOf(body)
	if v.versionID != "" {
		c.Set(fiber.HeaderETag, etag(v.versionID))
	}
	if !v.lastUpdated.IsZero() {
		c.Set(fiber.HeaderLastModified, v.lastUpdated.Format(http.TimeFormat))
	}
	if status == fiber.StatusCreated && v.id != "" {
		c.Set(fiber.HeaderLocation, s.location(c, typ, v.id, v.versionID))
	}
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	return c.Status(status).Send(body)
}

// checkPut validates a create-or-update of typ/id (an R4 type) with body.
func checkPut(typ, id string, body []byte) error {
	if !fhir.ValidID(id) {
		return badRequest("%q is not a valid FHIR id ([A-Za-z0-9-.]{1,64})", id)
	}
	h, err := fhir.Inspect(body, true)
	if err != nil {
		return badRequest("the body is not a valid resource: %v", err)
	}
	if h.ResourceType != typ || h.ID != id {
		return badRequest("the body is %s/%s but the URL names %s/%s", h.ResourceType, h.ID, typ, id)
	}
	return nil
}

// prepareCreate validates a create of typ (an R4 type) and returns the id
// the server assigns and the body carrying it.
func prepareCreate(typ string, body []byte) (string, []byte, error) {
	h, err := fhir.Inspect(body, false)
	if err != nil {
		return "", nil, badRequest("the body is not a valid resource: %v", err)
	}
	if h.ResourceType != typ {
		return "", nil, badRequest("the body is a %s but the URL names %s", h.ResourceType, typ)
	}
	id := nuid.Next()
	out, err := fhir.SetID(body, id)
	if err != nil {
		return "", nil, badRequest("the body is not a valid resource: %v", err)
	}
	return id, out, nil
}

// maxResource is the largest resource a change message can carry.
func (s *Server) maxResource() int { return int(s.deps.NC.MaxPayload()) - payloadSlack }

// caughtUp waits until every change accepted so far is ingested, so that a
// read or an existence check made after a write (or an $ingest) returned
// sees it.
func (s *Server) caughtUp(ctx context.Context) error {
	seq, err := streams.LastChangeSeq(ctx, s.deps.JS)
	if err != nil {
		return transient("the change stream could not be read; retry: %v", err)
	}
	if seq == 0 {
		return nil // nothing was ever accepted
	}
	if _, err := s.awaitIngest(ctx, seq); err != nil {
		return transient("changes accepted earlier are not yet readable; retry: %v", err)
	}
	return nil
}

// exists reports whether typ/id is stored now and not deleted, counting
// every change accepted before the call.
func (s *Server) exists(ctx context.Context, typ, id string) (bool, error) {
	if err := s.caughtUp(ctx); err != nil {
		return false, err
	}
	_, ok, err := s.deps.Store.ReadOne(ctx, typ, id, math.MaxUint64)
	if err != nil {
		return false, transient("%s/%s could not be read; retry: %v", typ, id, err)
	}
	return ok, nil
}

// putResource serves PUT [base]/{type}/{id}: create or update.
func (s *Server) putResource(c *fiber.Ctx) error {
	typ, err := resourceType(c)
	if err != nil {
		return err
	}
	id := c.Params("id")
	body, err := readBody(c, s.maxResource())
	if err != nil {
		return err
	}
	if err := checkPut(typ, id, body); err != nil {
		return err
	}
	existed, err := s.exists(c.UserContext(), typ, id)
	if err != nil {
		return err
	}
	status := fiber.StatusOK
	if !existed {
		status = fiber.StatusCreated
	}
	return s.write(c, status, typ, id, body)
}

// createResource serves POST [base]/{type}: the server assigns the id.
func (s *Server) createResource(c *fiber.Ctx) error {
	typ, err := resourceType(c)
	if err != nil {
		return err
	}
	body, err := readBody(c, s.maxResource())
	if err != nil {
		return err
	}
	id, body, err := prepareCreate(typ, body)
	if err != nil {
		return err
	}
	return s.write(c, fiber.StatusCreated, typ, id, body)
}

// write publishes a put, waits until it is ingested and answers with the
// stored version.
func (s *Server) write(c *fiber.Ctx, status int, typ, id string, body []byte) error {
	ctx := c.UserContext()
	seq, err := streams.PublishChange(ctx, s.deps.JS, streams.OpPut, typ, id, append([]byte(nil), body...))
	if err != nil {
		return transient("%s/%s was not stored; retry: %v", typ, id, err)
	}
	wm, err := s.awaitIngest(ctx, seq)
	if err != nil {
		c.Set(fiber.HeaderRetryAfter, "5")
		return transient("%s/%s is accepted but not yet readable: %v", typ, id, err)
	}
	stored, ok, err := s.deps.Store.ReadOne(ctx, typ, id, uint64(wm.Stamp.UnixMicro()))
	if err != nil || !ok {
		return transient("%s/%s is stored but could not be read back; retry a read: %v", typ, id, err)
	}
	return s.sendResource(c, status, typ, stored)
}

// deleteResource serves DELETE [base]/{type}/{id}. Deleting a resource
// that does not exist (or no longer does) succeeds without a change.
func (s *Server) deleteResource(c *fiber.Ctx) error {
	typ, err := resourceType(c)
	if err != nil {
		return err
	}
	id := c.Params("id")
	if !fhir.ValidID(id) {
		return badRequest("%q is not a valid FHIR id", id)
	}
	ctx := c.UserContext()
	exists, err := s.exists(ctx, typ, id)
	if err != nil {
		return err
	}
	if !exists {
		// Nothing to delete: no change, so no deletion shows up in
		// incremental exports for a resource nobody had.
		return empty(c, fiber.StatusNoContent)
	}
	seq, err := streams.PublishChange(ctx, s.deps.JS, streams.OpDelete, typ, id, nil)
	if err != nil {
		return transient("%s/%s was not deleted; retry: %v", typ, id, err)
	}
	if _, err := s.awaitIngest(ctx, seq); err != nil {
		c.Set(fiber.HeaderRetryAfter, "5")
		return transient("the deletion of %s/%s is accepted but not yet visible: %v", typ, id, err)
	}
	c.Set(fiber.HeaderETag, etag(strconv.FormatUint(seq, 10)))
	return empty(c, fiber.StatusNoContent)
}

func (s *Server) awaitIngest(ctx context.Context, seq uint64) (streams.Watermark, error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	wm, err := streams.AwaitWatermark(ctx, s.deps.JS, seq)
	if errors.Is(err, context.DeadlineExceeded) {
		return wm, errors.New("the ingester is behind")
	}
	return wm, err
}
