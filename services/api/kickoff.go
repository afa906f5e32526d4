package api

import (
	"crypto/rand"
	"fmt"
	"mime"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/typefilter"
	"github.com/flatfhir/flatfhir/streams"
)

type level = string

const (
	levelSystem  level = streams.LevelSystem
	levelPatient level = streams.LevelPatient
	levelGroup   level = streams.LevelGroup
)

// outputFormats are the accepted spellings of NDJSON. A raw '+' decoded as
// a space by a form decoder is mapped back.
var outputFormats = map[string]bool{
	"application/fhir+ndjson": true, "application/ndjson": true, "ndjson": true,
	"application/fhir ndjson": true,
}

// listParams are the kick-off parameters whose value is a comma list and
// may be repeated; the others are 0..1.
var listParams = map[string]bool{"_type": true, "_elements": true, "includeAssociatedData": true, "_typeFilter": true, "patient": true}

// kickoffRequest is the parsed and validated kick-off.
type kickoffRequest struct {
	types      []string
	since      time.Time
	ignored    []string
	elements   []string // _elements, validated
	typeFilter []string // _typeFilter, validated
	group      string   // Group level: the group's id
	patients   []string // Patient and Group levels: the patient parameter's ids
	associated string   // includeAssociatedData: the code honoured, or empty
}

// kickoff serves GET and POST [base]/$export, [base]/Patient/$export and
// [base]/Group/{id}/$export. GET takes the parameters from the query
// string; POST from a FHIR Parameters body.
func (s *Server) kickoff(lvl level) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if err := checkAccept(c.Get(fiber.HeaderAccept)); err != nil {
			return err
		}
		lenient, err := parsePrefer(c.Request().Header.PeekAll("Prefer"))
		if err != nil {
			return err
		}
		post := c.Method() == fiber.MethodPost
		var params map[string][]string
		var ignoredQuery string
		if post {
			// Parameters in a POST's query string are not read: refusing
			// them beats a silently full export where _since was meant.
			var names []string
			c.Context().QueryArgs().VisitAll(func(k, _ []byte) { names = append(names, string(k)) })
			if len(names) > 0 {
				msg := fmt.Sprintf("a POST kick-off takes its parameters in the Parameters body, not in the query string (%s)", strings.Join(names, ", "))
				if !lenient {
					return badRequest("%s", msg)
				}
				ignoredQuery = msg + " (ignored: Prefer: handling=lenient)"
			}
			if params, err = parseParametersBody(c); err != nil {
				return err
			}
		} else {
			params = map[string][]string{}
			c.Context().QueryArgs().VisitAll(func(k, v []byte) {
				params[string(k)] = append(params[string(k)], string(v))
			})
		}
		patientRefs, hasPatient := params["patient"]
		if hasPatient && lvl != levelSystem {
			if !post {
				return badRequest("parameter patient is accepted only in a POST Parameters body")
			}
			delete(params, "patient")
		}
		req, err := parseKickoff(params, lenient)
		if err != nil {
			return err
		}
		if ignoredQuery != "" {
			req.ignored = append(req.ignored, ignoredQuery)
		}
		req.group = c.Params("id")
		if lvl != levelSystem {
			if req.patients, err = parsePatientRefs(patientRefs); err != nil {
				return err
			}
		}
		if err := s.authorizeExport(c, lvl, &req); err != nil {
			return err
		}
		if err := s.checkScope(c.UserContext(), lvl, &req, lenient); err != nil {
			return err
		}
		return s.accept(c, lvl, req)
	}
}

// checkAccept allows the one type the spec defines, its JSON relatives, or
// no Accept at all (treated as application/fhir+json).
func checkAccept(accept string) error {
	if strings.TrimSpace(accept) == "" {
		return nil
	}
	for _, part := range strings.Split(accept, ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case "application/fhir+json", "application/json", "application/*", "*/*", "application/fhir json":
			return nil
		}
	}
	return badRequest("Accept %q is not supported for $export: send Accept: application/fhir+json", accept)
}

// parsePrefer reads every Prefer header. respond-async is assumed when
// absent (the async pattern is the only one $export offers); handling=lenient
// switches to lenient parameter handling.
func parsePrefer(values [][]byte) (lenient bool, err error) {
	for _, v := range values {
		for _, tok := range strings.Split(string(v), ",") {
			tok = strings.ToLower(strings.TrimSpace(tok))
			// RFC 7240: optional spaces around '=', parameters after ';'.
			tok, _, _ = strings.Cut(tok, ";")
			tok = strings.ReplaceAll(strings.TrimSpace(tok), " ", "")
			switch {
			case tok == "", tok == "respond-async":
			case strings.HasPrefix(tok, "handling="):
				switch strings.Trim(strings.TrimPrefix(tok, "handling="), `"`) {
				case "lenient":
					lenient = true
				case "strict":
				default:
					return false, badRequest("Prefer handling must be strict or lenient, not %q", tok)
				}
			}
		}
	}
	return lenient, nil
}

// parseKickoff validates the parameters. In strict mode anything it cannot
// honour is a 400 naming it; in lenient mode it is ignored and reported.
func parseKickoff(params map[string][]string, lenient bool) (kickoffRequest, error) {
	var req kickoffRequest
	refuse := func(p *problem) error {
		if lenient {
			req.ignored = append(req.ignored, p.msg+" (ignored: Prefer: handling=lenient)")
			return nil
		}
		return p
	}
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		vals := params[name]
		if !listParams[name] && len(vals) > 1 {
			p := badRequest("parameter %s may appear only once", name)
			if name == "_since" {
				return req, p // ignoring it would widen the export
			}
			if err := refuse(p); err != nil {
				return req, err
			}
			continue
		}
		var err error
		switch name {
		case "_outputFormat":
			if !outputFormats[vals[0]] {
				err = refuse(notSupported("_outputFormat %q is not supported; use application/fhir+ndjson, application/ndjson or ndjson", vals[0]))
			}
		case "_since":
			v := strings.ReplaceAll(vals[0], " ", "+") // a raw '+' in the offset arrives as a space
			t, perr := fhir.ParseInstant(v)
			switch {
			case perr != nil:
				err = badRequest("_since: %v", perr) // never ignorable: it would widen the export
			default:
				req.since = t
			}
		case "_type":
			var unknown []*problem
			req.types, unknown = parseTypes(vals)
			switch {
			case len(req.types) == 0 && len(unknown) == 0:
				err = badRequest("_type is empty")
			case len(unknown) > 0 && (len(req.types) == 0 || !lenient):
				// Lenient mode drops unknown types, but with none left it
				// could only proceed by widening the export.
				err = unknown[0]
			default:
				for _, p := range unknown {
					_ = refuse(p)
				}
			}
		case "_typeFilter":
			if _, perr := typefilter.Parse(vals); perr != nil {
				err = refuse(notSupported("_typeFilter: %v", perr))
			} else {
				req.typeFilter = vals
			}
		case "_elements":
			if _, perr := fhir.ParseElements(vals); perr != nil {
				err = refuse(badRequest("_elements: %v", perr))
			} else {
				req.elements = vals
			}
		case "includeAssociatedData":
			req.associated, err = parseAssociatedData(vals, refuse)
		default:
			err = refuse(notSupported("parameter %s is not supported by this server", name))
		}
		if err != nil {
			return req, err
		}
	}
	return req, nil
}

func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				out = append(out, item)
			}
		}
	}
	return out
}

// parseAssociatedData reads includeAssociatedData: the union of every
// value, comma-split. Of the IG's codes the least restrictive given wins
// (RelevantProvenanceResources holds every Provenance that
// LatestProvenanceResources would add). Any other value, a server-defined
// "_" one included, is refused, or dropped and reported when lenient.
func parseAssociatedData(vals []string, refuse func(*problem) error) (string, error) {
	items := splitList(vals)
	if len(items) == 0 {
		return "", refuse(badRequest("includeAssociatedData is empty"))
	}
	code := ""
	for _, v := range items {
		switch v {
		case streams.AssociatedRelevantProvenance:
			code = v
		case streams.AssociatedLatestProvenance:
			if code == "" {
				code = v
			}
		default:
			what := "is not supported"
			if strings.HasPrefix(v, "_") {
				what = "is not supported: this server defines no custom values"
			}
			p := notSupported("includeAssociatedData value %q %s; use %s or %s", v, what,
				streams.AssociatedLatestProvenance, streams.AssociatedRelevantProvenance)
			if err := refuse(p); err != nil {
				return "", err
			}
		}
	}
	return code, nil
}

// parseTypes reads _type: the union of every value, comma-split, sorted
// and without duplicates, and a problem for each value that is not an R4
// resource type.
func parseTypes(vals []string) ([]string, []*problem) {
	seen := map[string]bool{}
	var out []string
	var unknown []*problem
	for _, t := range splitList(vals) {
		if seen[t] {
			continue
		}
		seen[t] = true
		if !fhir.IsResourceType(t) {
			unknown = append(unknown, notSupported("_type %q is not a FHIR R4 resource type", t))
			continue
		}
		out = append(out, t)
	}
	sort.Strings(out)
	return out, unknown
}

// accept records the job, announces it to planners and answers 202.
func (s *Server) accept(c *fiber.Ctx, lvl level, req kickoffRequest) error {
	ctx := c.UserContext()
	if !req.since.IsZero() && req.since.After(s.deps.Now()) {
		return badRequest("_since %s is in the future", fhir.FormatInstant(req.since))
	}
	// A mark after every change accepted so far: the planner waits for the
	// watermark to pass it, and its stamp, at or after this moment, becomes
	// the transactionTime.
	minSeq, err := streams.PublishMark(ctx, s.deps.JS)
	if err != nil {
		return transient("the export could not be queued; retry: %v", err)
	}
	// 128 random bits (crypto/rand, 26 base32 characters): a job id is the
	// key to its status and files, so no client may guess another's from
	// its own (NUIDs, sequential within a process, would let it).
	id := rand.Text()
	// The manifest's request is the kick-off URL; for POST without the
	// parameters, which were in the body.
	requestURL := s.baseURL(c) + string(c.Request().URI().RequestURI())
	if c.Method() == fiber.MethodPost {
		requestURL = s.baseURL(c) + string(c.Request().URI().Path())
	}
	key := requestURL
	if c.Method() == fiber.MethodPost {
		key += "\n" + string(c.Body())
	}
	if running, ok, err := s.jobs.ClaimSlot(ctx, clientOf(c), key, id); err != nil {
		return err
	} else if !ok {
		return throttled(c, s.cfg.RetryAfter, "the same export is already running as "+running+
			"; poll it, or DELETE it before starting it again")
	}
	job := streams.Job{
		ExportRequest: streams.ExportRequest{
			JobID: id, ClientID: clientOf(c), Level: lvl, GroupID: req.group, Patients: req.patients, Elements: req.elements, TypeFilter: req.typeFilter, RequestURL: requestURL,
			Types: req.types, Since: req.since, MinChangeSeq: minSeq, SubmittedAt: s.deps.Now().UTC(),
			Ignored: req.ignored, IncludeAssociatedData: req.associated,
			// The manifest's file URLs and the attachment URLs share this base.
			BaseURL: s.baseURL(c),
		},
		Status: streams.JobAccepted,
	}
	if err := s.jobs.Create(ctx, job); err != nil {
		return err
	}
	m := nats.NewMsg(streams.SubjectJobSubmit(id))
	// The job record in KV is the one definition of the export: the
	// message carries only its id, in the subject.
	streams.InjectTrace(ctx, m.Header)
	if _, err := s.deps.JS.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("announce job %s: %w", id, err)
	}
	c.Set(fiber.HeaderContentLocation, s.baseURL(c)+"/jobs/"+url.PathEscape(id))
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	msg := "export accepted; poll the Content-Location URL for its status"
	return c.Status(fiber.StatusAccepted).Send(fhir.Outcome(fhir.SeverityInformation, fhir.CodeInformational, msg).JSON())
}
