package api

import (
	"context"
	"encoding/json"

	"math"
	"mime"
	"slices"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/shared/fhir"
)

// maxPatientParams bounds the patient parameter of one kick-off.
const maxPatientParams = 10000

// parameterValues are the value[x] elements each kick-off parameter may use
// in a POST Parameters body (the OperationDefinitions', plus valueString
// where clients commonly send it).
var parameterValues = map[string][]string{
	"_outputFormat":         {"valueString"},
	"_since":                {"valueInstant", "valueString", "valueDateTime"},
	"_type":                 {"valueString"},
	"_elements":             {"valueString"},
	"patient":               {"valueReference"},
	"includeAssociatedData": {"valueCode", "valueString"},
	"_typeFilter":           {"valueString"},
}

// parseParametersBody reads a POST kick-off's Parameters resource into the
// same shape as a query string: name -> values, repeated entries kept.
func parseParametersBody(c *fiber.Ctx) (map[string][]string, error) {
	if ct := c.Get(fiber.HeaderContentType); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/fhir+json" && mt != "application/json") {
			return nil, unsupportedMedia("a POST kick-off takes a Parameters resource as application/fhir+json, not %q", ct)
		}
	}
	var body struct {
		ResourceType string                       `json:"resourceType"`
		Parameter    []map[string]json.RawMessage `json:"parameter"`
	}
	if err := json.Unmarshal(c.Body(), &body); err != nil {
		return nil, badRequest("the POST body is not a JSON Parameters resource: %v", err)
	}
	if body.ResourceType != "Parameters" {
		return nil, badRequest("the POST body must be a Parameters resource, not %q", body.ResourceType)
	}
	params := map[string][]string{}
	for i, p := range body.Parameter {
		var name string
		if err := json.Unmarshal(p["name"], &name); err != nil || name == "" {
			return nil, badRequest("Parameters.parameter[%d] has no name", i)
		}
		allowed, known := parameterValues[name]
		var value string
		found := false
		for key, raw := range p {
			if key == "name" || !strings.HasPrefix(key, "value") {
				continue
			}
			if known && !slices.Contains(allowed, key) {
				return nil, badRequest("parameter %s takes %s, not %s", name, strings.Join(allowed, " or "), key)
			}
			if key == "valueReference" {
				var ref struct {
					Reference string `json:"reference"`
				}
				if err := json.Unmarshal(raw, &ref); err != nil || ref.Reference == "" {
					return nil, badRequest("parameter %s: valueReference needs a reference", name)
				}
				value = ref.Reference
			} else if err := json.Unmarshal(raw, &value); err != nil {
				return nil, badRequest("parameter %s: %s is not a string", name, key)
			}
			found = true
		}
		if !found {
			return nil, badRequest("parameter %s has no value", name)
		}
		params[name] = append(params[name], value)
	}
	return params, nil
}

// parsePatientRefs turns patient references (Patient/<id>) into ids.
func parsePatientRefs(refs []string) ([]string, error) {
	if len(refs) > maxPatientParams {
		return nil, tooLarge("at most %d patient parameters per kick-off; use a Group for larger cohorts", maxPatientParams)
	}
	var ids []string
	seen := map[string]bool{}
	for _, ref := range refs {
		id, ok := compartment.ReferencedPatientID(ref)
		if !ok {
			return nil, badRequest("patient %q is not a reference to a Patient (Patient/<id>)", ref)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// checkScope applies the rules of the Patient and Group levels: only
// Patient compartment types, a Group that exists, and patients that exist
// (and, at Group level, are members).
func (s *Server) checkScope(ctx context.Context, lvl level, req *kickoffRequest, lenient bool) error {
	if lvl == levelSystem {
		return nil
	}
	if len(req.types) > 0 {
		var kept []string
		for _, t := range req.types {
			if compartment.InCompartment(t) {
				kept = append(kept, t)
				continue
			}
			p := notSupported("_type %s is not in the Patient compartment, so a %s-level export holds none", t, lvl)
			if !lenient {
				return p
			}
			req.ignored = append(req.ignored, p.msg+" (ignored: Prefer: handling=lenient)")
		}
		if len(kept) == 0 {
			return notSupported("no type in _type is in the Patient compartment; a %s-level export would hold nothing", lvl)
		}
		req.types = kept
	}
	if s.deps.Store == nil {
		return transient("the resource store is not configured on this API replica")
	}
	if lvl == levelGroup || len(req.patients) > 0 {
		// The Group and patients may come from changes accepted just
		// before the kick-off.
		if err := s.caughtUp(ctx); err != nil {
			return err
		}
	}
	latest := uint64(math.MaxUint64)
	var members []string
	if lvl == levelGroup {
		if !fhir.ValidID(req.group) {
			return notFound("Group/%s does not exist", req.group)
		}
		body, ok, err := s.deps.Store.ReadOne(ctx, "Group", req.group, latest)
		if err != nil {
			return transient("Group/%s could not be read; retry: %v", req.group, err)
		}
		if !ok {
			return notFound("Group/%s does not exist", req.group)
		}
		if members, err = compartment.GroupPatients(body); err != nil {
			return badRequest("Group/%s cannot be exported: %v", req.group, err)
		}
	}
	if lvl == levelGroup {
		for _, id := range req.patients {
			if _, ok := slices.BinarySearch(members, id); !ok {
				return badRequest("Patient/%s is not a member of Group/%s", id, req.group)
			}
		}
		return nil
	}
	// Patients that exist, looked up a batch at a time.
	for rest := req.patients; len(rest) > 0; {
		n := min(len(rest), existingBatch)
		refs := make([]chstore.Ref, 0, n)
		for _, id := range rest[:n] {
			if !fhir.ValidID(id) {
				return badRequest("Patient/%s does not exist", id)
			}
			refs = append(refs, chstore.Ref{Type: "Patient", ID: id})
		}
		found, err := s.deps.Store.ReadRefs(ctx, refs, latest, nil)
		if err != nil {
			return transient("the patients could not be read; retry: %v", err)
		}
		for _, r := range refs {
			if _, ok := found[r]; !ok {
				return badRequest("Patient/%s does not exist", r.ID)
			}
		}
		rest = rest[n:]
	}
	return nil
}
