package api

import (
	"encoding/json"
	"math"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// groupSearchParams are the Group search parameters this server supports.
var groupSearchParams = map[string]bool{"identifier": true, "name": true, "_id": true}

// searchGroups serves GET [base]/Group?identifier=&name=&_id=: a searchset
// Bundle of the matching current Groups. identifier is [system|]value;
// name matches case-insensitively from the start (FHIR string search).
// Groups are few, so the search scans them.
func (s *Server) searchGroups(c *fiber.Ctx) error {
	filters := map[string]string{}
	var bad error
	c.Context().QueryArgs().VisitAll(func(k, v []byte) {
		key := string(k)
		switch {
		case groupSearchParams[key]:
			filters[key] = string(v)
		case key == "_format" || key == "_count":
		default:
			bad = notSupported("Group search parameter %s is not supported; use identifier, name or _id", key)
		}
	})
	if bad != nil {
		return bad
	}
	entries := []bundleEntry{}
	err := s.deps.Store.ReadAllLatest(c.UserContext(), "Group", math.MaxUint64, func(id string, body []byte) error {
		if groupMatches(id, body, filters) {
			entries = append(entries, bundleEntry{
				FullURL:  s.baseURL(c) + "/Group/" + id,
				Resource: json.RawMessage(append([]byte(nil), body...)),
				Search:   bundleSearch{Mode: "match"},
			})
		}
		return nil
	})
	if err != nil {
		return transient("Groups could not be searched; retry: %v", err)
	}
	bundle := encodeJSON(searchset{
		ResourceType: "Bundle",
		Type:         "searchset",
		Total:        len(entries),
		Link:         []bundleLink{{Relation: "self", URL: s.baseURL(c) + string(c.Request().URI().RequestURI())}},
		Entry:        entries,
	})
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	return c.Send(bundle)
}

func groupMatches(id string, body []byte, filters map[string]string) bool {
	var g struct {
		Name       string `json:"name"`
		Identifier []struct {
			System string `json:"system"`
			Value  string `json:"value"`
		} `json:"identifier"`
	}
	if json.Unmarshal(body, &g) != nil {
		return false
	}
	for key, want := range filters {
		switch key {
		case "_id":
			if !anyOf(want, func(v string) bool { return v == id }) {
				return false
			}
		case "name":
			if !anyOf(want, func(v string) bool { return strings.HasPrefix(strings.ToLower(g.Name), strings.ToLower(v)) }) {
				return false
			}
		case "identifier":
			if !anyOf(want, func(v string) bool {
				sys, val, hasSys := strings.Cut(v, "|")
				for _, idn := range g.Identifier {
					if hasSys && (sys == "" || idn.System == sys) && idn.Value == val || !hasSys && idn.Value == v {
						return true
					}
				}
				return false
			}) {
				return false
			}
		}
	}
	return true
}

// anyOf applies a comma-separated list of values with OR, as FHIR search does.
func anyOf(list string, match func(string) bool) bool {
	for _, v := range strings.Split(list, ",") {
		if match(v) {
			return true
		}
	}
	return false
}

type searchset struct {
	ResourceType string        `json:"resourceType"`
	Type         string        `json:"type"`
	Total        int           `json:"total"`
	Link         []bundleLink  `json:"link"`
	Entry        []bundleEntry `json:"entry,omitempty"`
}

type bundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

type bundleEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Search   bundleSearch    `json:"search"`
}

type bundleSearch struct {
	Mode string `json:"mode"`
}
