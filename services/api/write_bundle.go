package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// Bounds of one POST [base].
const (
	// maxBundleBytes is the largest Bundle body read; a transaction must
	// moreover fit one NATS message once resolved (ADR 0003).
	maxBundleBytes = 64 << 20
	// maxBundleEntries bounds the entries of one Bundle.
	maxBundleEntries = 10000
	// payloadSlack is what a change message needs beyond its body.
	payloadSlack = 1024
)

// entryPerms is the permission each method needs on the entry's type, as
// on the single requests' routes.
var entryPerms = map[string]auth.Perm{"GET": auth.PermRead, "PUT": auth.PermUpdate, "POST": auth.PermCreate, "DELETE": auth.PermDelete}

var fhirJSONTypes = map[string]bool{"application/fhir+json": true, "application/json": true, "application/json+fhir": true}

// bundleIn is the part of a batch or transaction Bundle the server reads.
type bundleIn struct {
	ResourceType string    `json:"resourceType"`
	Type         string    `json:"type"`
	Entry        []entryIn `json:"entry"`
}

type entryIn struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Request  *struct {
		Method          string `json:"method"`
		URL             string `json:"url"`
		IfNoneMatch     string `json:"ifNoneMatch"`
		IfModifiedSince string `json:"ifModifiedSince"`
		IfMatch         string `json:"ifMatch"`
		IfNoneExist     string `json:"ifNoneExist"`
	} `json:"request"`
}

// entryOp is one entry, checked and resolved.
type entryOp struct {
	method  string // GET, PUT, POST or DELETE
	typ, id string
	body    []byte // PUT and POST: the resource to store, with its id
	fullURL string
	// existed says whether typ/id was stored before this request's
	// changes (PUT: 200 rather than 201; DELETE: whether there is a change).
	existed bool
	seq     uint64 // of the change that stores it; 0 when none
	err     error  // batch: why this entry failed
	// request is "METHOD url" as the entry asked, for error messages.
	request string
}

func (op *entryOp) key() string { return op.typ + "/" + op.id }

// changes reports whether the entry publishes a change.
func (op *entryOp) changes() bool {
	return op.err == nil && (op.method == "PUT" || op.method == "POST" || op.method == "DELETE" && op.existed)
}

func (op *entryOp) change() streams.Change {
	if op.method == "DELETE" {
		return streams.Change{Op: streams.OpDelete, Type: op.typ, ID: op.id}
	}
	return streams.Change{Op: streams.OpPut, Type: op.typ, ID: op.id, Body: op.body}
}

// bundleOut is a batch-response or transaction-response Bundle.
type bundleOut struct {
	ResourceType string     `json:"resourceType"`
	Type         string     `json:"type"`
	Entry        []entryOut `json:"entry"`
}

type entryOut struct {
	FullURL  string          `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Response entryResponse   `json:"response"`
}

type entryResponse struct {
	Status       string          `json:"status"`
	Location     string          `json:"location,omitempty"`
	Etag         string          `json:"etag,omitempty"`
	LastModified string          `json:"lastModified,omitempty"`
	Outcome      json.RawMessage `json:"outcome,omitempty"`
}

// bundle serves POST [base]: a batch or transaction Bundle. It answers once
// every change is ingested, as single writes do.
func (s *Server) bundle(c *fiber.Ctx) error {
	mt, _, err := mime.ParseMediaType(c.Get(fiber.HeaderContentType))
	if err != nil || !fhirJSONTypes[mt] {
		return unsupportedMedia("POST [base] takes Content-Type application/fhir+json, not %q", c.Get(fiber.HeaderContentType))
	}
	body, err := readBody(c, maxBundleBytes)
	if err != nil {
		return err
	}
	b, err := parseBundle(body)
	if err != nil {
		return err
	}
	ops := make([]*entryOp, len(b.Entry))
	base := s.baseURL(c)
	maxResource := s.maxResource()
	for i, e := range b.Entry {
		op, err := parseEntry(e, base, maxResource)
		if err != nil {
			op = &entryOp{err: err}
		}
		if e.Request != nil {
			op.request = e.Request.Method + " " + e.Request.URL
		}
		if op.err == nil && s.cfg.Auth {
			// Each entry needs what the single request needs.
			if p := scopeRefusal(c, entryPerms[op.method], op.typ); p != nil {
				op.err = p
			}
		}
		ops[i] = op
	}
	var out []entryOut
	if b.Type == "transaction" {
		out, err = s.transaction(c, ops)
	} else {
		out, err = s.batch(c, ops)
	}
	if err != nil {
		return err
	}
	resp := bundleOut{ResourceType: "Bundle", Type: b.Type + "-response", Entry: out}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // resources read back are sent as stored
	if err := enc.Encode(resp); err != nil {
		return fmt.Errorf("encode %s: %w", resp.Type, err)
	}
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	return c.Status(fiber.StatusOK).Send(buf.Bytes())
}

// readBody reads a request body of at most limit bytes. A streamed body
// is read only up to the limit (c.Body would read all of it).
func readBody(c *fiber.Ctx, limit int) ([]byte, error) {
	var body []byte
	if st := c.Context().RequestBodyStream(); st != nil {
		var err error
		if body, err = io.ReadAll(io.LimitReader(st, int64(limit)+1)); err != nil {
			return nil, badRequest("reading the body: %v", err)
		}
	} else {
		body = c.Body()
	}
	if len(body) > limit {
		// The rest of the body is not read: close the connection after
		// the answer rather than parse it as the next request.
		c.Context().SetConnectionClose()
		return nil, tooLarge("the body is larger than %d bytes", limit)
	}
	return body, nil
}

// parseBundle checks that body is a batch or transaction Bundle.
func parseBundle(body []byte) (bundleIn, error) {
	h, err := fhir.Inspect(body, false)
	if err != nil {
		return bundleIn{}, badRequest("the body is not a valid resource: %v", err)
	}
	if h.ResourceType != "Bundle" {
		return bundleIn{}, badRequest("POST [base] takes a Bundle of type batch or transaction, not a %s", h.ResourceType)
	}
	var b bundleIn
	if err := json.Unmarshal(body, &b); err != nil {
		return bundleIn{}, badRequest("the body is not a valid Bundle: %v", err)
	}
	if b.Type != "batch" && b.Type != "transaction" {
		return bundleIn{}, badRequest("POST [base] takes a Bundle of type batch or transaction, not %q", b.Type)
	}
	if len(b.Entry) > maxBundleEntries {
		return bundleIn{}, tooLarge("a Bundle may hold at most %d entries; this one has %d", maxBundleEntries, len(b.Entry))
	}
	return b, nil
}

// parseEntry checks one entry as the matching single request is checked
// and resolves it: a POST gets its id here.
func parseEntry(e entryIn, base string, maxResource int) (*entryOp, error) {
	r := e.Request
	if r == nil || r.Method == "" || r.URL == "" {
		return nil, badRequest("the entry has no request.method and request.url")
	}
	if r.IfNoneMatch != "" || r.IfModifiedSince != "" || r.IfMatch != "" || r.IfNoneExist != "" {
		return nil, notSupported("conditional requests (ifNoneMatch, ifModifiedSince, ifMatch, ifNoneExist) are not supported")
	}
	url := strings.TrimPrefix(r.URL, base+"/")
	if strings.ContainsAny(url, "?#") {
		return nil, notSupported("request.url %q: searches and conditional URLs are not supported", r.URL)
	}
	parts := strings.Split(strings.TrimPrefix(url, "/"), "/")
	op := &entryOp{method: r.Method, typ: parts[0], fullURL: e.FullURL}
	want := 2 // Type/id
	switch r.Method {
	case "POST":
		want = 1 // Type
	case "GET", "PUT", "DELETE":
	default:
		return nil, notSupported("method %q is not supported in a Bundle; use GET, PUT, POST or DELETE", r.Method)
	}
	if len(parts) != want {
		form := "Type/id"
		if want == 1 {
			form = "Type"
		}
		return nil, notSupported("request.url %q: %s takes %s (history, operations and compartments are not supported)", r.URL, r.Method, form)
	}
	if !fhir.IsResourceType(op.typ) {
		return nil, badRequest("request.url %q: %q is not an R4 resource type", r.URL, op.typ)
	}
	if want == 2 {
		op.id = parts[1]
		if !fhir.ValidID(op.id) {
			return nil, badRequest("request.url %q: %q is not a valid FHIR id ([A-Za-z0-9-.]{1,64})", r.URL, op.id)
		}
	}
	if op.method != "PUT" && op.method != "POST" {
		return op, nil
	}
	res := []byte(e.Resource)
	if len(res) == 0 || bytes.Equal(res, []byte("null")) {
		return nil, badRequest("%s %s has no resource", r.Method, r.URL)
	}
	if len(res) > maxResource {
		return nil, tooLarge("the resource is larger than %d bytes", maxResource)
	}
	if op.method == "PUT" {
		if err := checkPut(op.typ, op.id, res); err != nil {
			return nil, err
		}
		op.body = res
		return op, nil
	}
	var err error
	op.id, op.body, err = prepareCreate(op.typ, res)
	return op, err
}

// entryError names entry i in a transaction's refusal.
func entryError(i int, op *entryOp, err error) error {
	var p *problem
	if !errors.As(err, &p) {
		return err
	}
	what := ""
	switch {
	case op == nil:
	case op.request != "":
		what = " (" + op.request + ")"
	case op.method == "POST":
		what = " (POST " + op.typ + ")"
	case op.method != "":
		what = " (" + op.method + " " + op.key() + ")"
	}
	q := *p
	q.msg = fmt.Sprintf("entry %d%s: %s; nothing from this transaction was applied", i, what, p.msg)
	return &q
}

// transaction applies every entry or none: everything is checked first,
// then the changes go out as one message (ADR 0003).
func (s *Server) transaction(c *fiber.Ctx, ops []*entryOp) ([]entryOut, error) {
	ctx := c.UserContext()
	byKey := map[string]int{}
	byURL := map[string]int{}
	for i, op := range ops {
		if op.err != nil {
			err := entryError(i, op, op.err)
			var p *problem
			if errors.As(err, &p) && p.status == fiber.StatusForbidden {
				return nil, insufficient(c, "%s", p.msg)
			}
			return nil, err
		}
		if op.method == "GET" {
			return nil, entryError(i, op, notSupported("GET entries are supported in batch Bundles only"))
		}
		if j, dup := byKey[op.key()]; dup {
			return nil, badRequest("entries %d and %d both change %s; nothing from this transaction was applied", j, i, op.key())
		}
		byKey[op.key()] = i
		if op.fullURL != "" {
			if j, dup := byURL[op.fullURL]; dup {
				return nil, badRequest("entries %d and %d have the same fullUrl %q; nothing from this transaction was applied", j, i, op.fullURL)
			}
			byURL[op.fullURL] = i
		}
	}
	if err := resolveReferences(ops); err != nil {
		return nil, err
	}
	live, err := s.existing(ctx, ops)
	if err != nil {
		return nil, err
	}
	var changes []streams.Change
	for _, op := range ops {
		if op.method != "POST" {
			op.existed = live[op.key()]
		}
		if op.changes() {
			changes = append(changes, op.change())
		}
	}
	var stored version
	if len(changes) > 0 {
		m, err := streams.TransactionMsg(changes)
		if err != nil {
			return nil, fmt.Errorf("build transaction: %w", err)
		}
		if max := s.maxResource(); len(m.Data) > max {
			return nil, tooLarge("the transaction's changes take %d bytes, more than the %d one transaction may hold; split it or use a batch", len(m.Data), max)
		}
		ack, err := s.deps.JS.PublishMsg(ctx, m)
		if err != nil {
			return nil, transient("the transaction was not stored; retry: %v", err)
		}
		wm, err := s.awaitIngest(ctx, ack.Sequence)
		if err != nil {
			c.Set(fiber.HeaderRetryAfter, "5")
			return nil, transient("the transaction is accepted but not yet readable: %v", err)
		}
		for _, op := range ops {
			if op.changes() {
				op.seq = ack.Sequence
			}
		}
		// Every version of a transaction has the same seq and stamp: one
		// read back gives lastModified for all (ADR 0003).
		if stored, err = s.readBackTransaction(ctx, ops, wm); err != nil {
			return nil, err
		}
	}
	out := make([]entryOut, len(ops))
	for i, op := range ops {
		out[i] = s.writeResponse(c, op, stored)
	}
	return out, nil
}

// readBackTransaction reads one resource the transaction put, at wm, and
// checks that it is the transaction's version.
func (s *Server) readBackTransaction(ctx context.Context, ops []*entryOp, wm streams.Watermark) (version, error) {
	for _, op := range ops {
		if !op.changes() || op.method == "DELETE" {
			continue
		}
		body, ok, err := s.deps.Store.ReadOne(ctx, op.typ, op.id, uint64(wm.Stamp.UnixMicro()))
		if err != nil {
			return version{}, transient("the transaction is stored but could not be read back; retry a read: %v", err)
		}
		v := versionOf(body)
		if !ok || v.versionID != strconv.FormatUint(op.seq, 10) {
			return version{}, jobFailed("the transaction was accepted but not stored as sent (%s is not at version %d)", op.key(), op.seq)
		}
		return v, nil
	}
	return version{}, nil
}

// resolveReferences gives the references in a transaction's resources to
// another entry's urn:uuid: or urn:oid: fullUrl that entry's Type/id. A
// urn reference that no entry resolves is an error.
func resolveReferences(ops []*entryOp) error {
	urns := map[string]string{}
	for _, op := range ops {
		if isURN(op.fullURL) {
			urns[op.fullURL] = op.key()
		}
	}
	for i, op := range ops {
		if op.body == nil {
			continue
		}
		var unresolved string
		body, err := fhir.RewriteReferences(op.body, func(ref string) (string, bool) {
			if to, ok := urns[ref]; ok {
				return to, true
			}
			if isURN(ref) && unresolved == "" {
				unresolved = ref
			}
			return "", false
		})
		if err != nil {
			return entryError(i, op, badRequest("the resource is not valid: %v", err))
		}
		if unresolved != "" {
			return entryError(i, op, badRequest("the reference %q names no entry's fullUrl", unresolved))
		}
		op.body = body
	}
	return nil
}

func isURN(s string) bool {
	return strings.HasPrefix(s, "urn:uuid:") || strings.HasPrefix(s, "urn:oid:")
}

// existingBatch is how many resources one existence lookup names.
const existingBatch = 1000

// existing reports which of the resources the valid PUT, DELETE and GET
// entries name exist now, by "Type/id", in a few lookups rather than one
// per entry.
func (s *Server) existing(ctx context.Context, ops []*entryOp) (map[string]bool, error) {
	var refs []chstore.Ref
	seen := map[string]bool{}
	for _, op := range ops {
		if op.err != nil || op.method == "POST" || seen[op.key()] {
			continue
		}
		seen[op.key()] = true
		refs = append(refs, chstore.Ref{Type: op.typ, ID: op.id})
	}
	live := make(map[string]bool, len(refs))
	if len(refs) == 0 {
		return live, nil
	}
	if err := s.caughtUp(ctx); err != nil {
		return nil, err
	}
	for len(refs) > 0 {
		n := min(len(refs), existingBatch)
		found, err := s.deps.Store.ReadRefs(ctx, refs[:n], math.MaxUint64, nil)
		if err != nil {
			return nil, transient("the Bundle's resources could not be read; retry: %v", err)
		}
		for r := range found {
			live[r.Type+"/"+r.ID] = true
		}
		refs = refs[n:]
	}
	return live, nil
}

// batch applies each entry on its own: a failed entry gets its outcome,
// the others go ahead. Writes go out in entry order, reads are answered
// once the writes are ingested.
func (s *Server) batch(c *fiber.Ctx, ops []*entryOp) ([]entryOut, error) {
	ctx := c.UserContext()
	// Whether each resource exists, updated as the entries go.
	live, err := s.existing(ctx, ops)
	if err != nil {
		return nil, err
	}
	var last uint64
	var pubErr error
	for _, op := range ops {
		if op.err != nil || op.method == "GET" {
			continue
		}
		if op.method != "POST" {
			op.existed = live[op.key()]
		}
		if !op.changes() {
			continue
		}
		if pubErr != nil {
			// The bus refused a change: do not wait for it once per entry.
			op.err = transient("%s was not stored; retry: %v", op.key(), pubErr)
			continue
		}
		ch := op.change()
		seq, err := streams.PublishChange(ctx, s.deps.JS, ch.Op, ch.Type, ch.ID, ch.Body)
		if err != nil {
			pubErr = err
			op.err = transient("%s was not stored; retry: %v", op.key(), err)
			continue
		}
		op.seq, last = seq, seq
		live[op.key()] = op.method != "DELETE"
	}
	until := uint64(math.MaxUint64)
	if last > 0 {
		wm, err := s.awaitIngest(ctx, last)
		if err != nil {
			c.Set(fiber.HeaderRetryAfter, "5")
			return nil, transient("the batch's changes are accepted but not yet readable: %v", err)
		}
		until = chstore.Micros(wm.Stamp)
	}
	out := make([]entryOut, len(ops))
	for i, op := range ops {
		switch {
		case op.err != nil:
			out[i] = failed(op.err)
		case op.method == "GET":
			out[i] = s.readEntry(c, op)
		default:
			var stored version
			if op.seq != 0 && op.method != "DELETE" {
				body, ok, err := s.deps.Store.ReadOne(ctx, op.typ, op.id, until)
				if err != nil {
					out[i] = failed(transient("%s is stored but could not be read back; retry a read: %v", op.key(), err))
					continue
				}
				// A later entry of this batch may have changed it again;
				// then only this entry's versionId is known.
				if v := versionOf(body); ok && v.versionID == strconv.FormatUint(op.seq, 10) {
					stored = v
				}
			}
			out[i] = s.writeResponse(c, op, stored)
		}
	}
	return out, nil
}

// writeResponse is the response entry of a successful write. stored is
// the version read back (lastUpdated may be zero when unknown).
func (s *Server) writeResponse(c *fiber.Ctx, op *entryOp, stored version) entryOut {
	vid := ""
	if op.seq != 0 {
		vid = strconv.FormatUint(op.seq, 10)
	}
	r := entryResponse{}
	if vid != "" {
		r.Etag = etag(vid)
		if !stored.lastUpdated.IsZero() {
			r.LastModified = fhir.FormatInstant(stored.lastUpdated)
		}
	}
	e := entryOut{}
	switch {
	case op.method == "DELETE":
		r.Status = statusLine(fiber.StatusNoContent)
	default:
		r.Status = statusLine(fiber.StatusOK)
		if !op.existed {
			r.Status = statusLine(fiber.StatusCreated)
		}
		e.FullURL = s.baseURL(c) + "/" + op.key()
		r.Location = s.location(c, op.typ, op.id, vid)
	}
	e.Response = r
	return e
}

// readEntry answers a batch's GET Type/id with the current version.
func (s *Server) readEntry(c *fiber.Ctx, op *entryOp) entryOut {
	body, ok, err := s.deps.Store.ReadOne(c.UserContext(), op.typ, op.id, math.MaxUint64)
	switch {
	case err != nil:
		return failed(transient("%s could not be read; retry: %v", op.key(), err))
	case !ok:
		return failed(notFound("%s does not exist or was deleted", op.key()))
	}
	v := versionOf(body)
	r := entryResponse{Status: statusLine(fiber.StatusOK)}
	if v.versionID != "" {
		r.Etag = etag(v.versionID)
	}
	if !v.lastUpdated.IsZero() {
		r.LastModified = fhir.FormatInstant(v.lastUpdated)
	}
	return entryOut{FullURL: s.baseURL(c) + "/" + op.key(), Resource: body, Response: r}
}

// failed is the response entry of an entry that failed with err.
func failed(err error) entryOut {
	var p *problem
	if !errors.As(err, &p) {
		p = jobFailed("internal error; the entry may be retried")
	}
	return entryOut{Response: entryResponse{
		Status:  statusLine(p.status),
		Outcome: fhir.Outcome(p.severity, p.code, p.msg).JSON(),
	}}
}

func statusLine(code int) string { return strconv.Itoa(code) + " " + http.StatusText(code) }
