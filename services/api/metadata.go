package api

import (
	"encoding/json"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// capabilityStatement declares what this server does, and only that (with
// authorization off).
var capabilityStatement = buildCapabilityStatement(nil)

// buildCapabilityStatement is the CapabilityStatement; security, when not
// nil, becomes rest.security.
func buildCapabilityStatement(security map[string]any) []byte {
	rest := map[string]any{
		"mode":     "server",
		"resource": resourceCapabilities(),
		"operation": []any{map[string]any{
			"name":       "export",
			"definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
		}},
		"interaction": []any{map[string]any{"code": "batch"}, map[string]any{"code": "transaction"}},
	}
	if security != nil {
		rest["security"] = security
	}
	cs := map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         "2026-11-26",
		"publisher":    "flatfhir",
		"kind":         "instance",
		"instantiates": []string{"http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"},
		"software":     map[string]any{"name": "flatfhir"},
		"implementation": map[string]any{
			"description": "flatfhir FHIR Bulk Data export engine. Export files hold at most 100,000 resources or 128 MiB each; " +
				"a type may span several files. _outputFormat accepts application/fhir+ndjson, application/ndjson and ndjson. " +
				"Unsupported parameters are refused with 400 unless the request carries Prefer: handling=lenient. " +
				"includeAssociatedData takes LatestProvenanceResources and RelevantProvenanceResources (the least restrictive " +
				"given wins): the export adds the Provenances whose target is an exported resource, each one's most recent " +
				"or all, even when _type leaves Provenance out. " +
				"Patient and Group exports hold the resources in the R4 Patient compartment of the patients (linked as " +
				"subject/patient, not as performer or author), no supporting resources; a Group export follows the " +
				"group's Patient members as of transactionTime (other members are ignored). The patient parameter " +
				"(POST only) narrows either to the listed patients. With _since, resources of patients who joined a " +
				"group after _since are exported only if they changed after _since. " +
				"POST [base] takes batch and transaction Bundles of GET (batch only), PUT, POST and DELETE entries on Type/id " +
				"or Type; conditional requests and searches are refused. A transaction is all or nothing and becomes visible " +
				"to exports at once; its resources share one versionId and lastUpdated.",
		},
		"fhirVersion": "4.0.1",
		"format":      []string{"json", "application/fhir+json"},
		"rest":        []any{rest},
	}
	b, _ := json.Marshal(cs)
	return b
}

// smartSecurity is rest.security with authorization on: the SMART-on-FHIR
// service and the OAuth endpoints (the SMART oauth-uris extension).
func smartSecurity(base string) map[string]any {
	return map[string]any{
		"cors": false,
		"service": []any{map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR",
		}}}},
		"extension": []any{map[string]any{
			"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
			"extension": []any{
				map[string]any{"url": "token", "valueUri": base + pathToken},
				map[string]any{"url": "authorize", "valueUri": base + pathAuthorize},
			},
		}},
		"description": "SMART Backend Services (client_credentials with a private_key_jwt assertion, RS384 or ES384); " +
			"discovery at " + base + pathSmartConfig + ". Every $export, status, file, read and write request needs a bearer token.",
	}
}

// resourceCapabilities declares, for every R4 type, the FHIR reads and
// writes the API serves, plus the Patient and Group export operations and
// Group search.
func resourceCapabilities() []any {
	crud := []any{
		map[string]any{"code": "read"}, map[string]any{"code": "update"},
		map[string]any{"code": "create"}, map[string]any{"code": "delete"},
	}
	var out []any
	for _, typ := range fhir.ResourceTypes() {
		r := map[string]any{"type": typ, "interaction": crud, "updateCreate": true}
		switch typ {
		case "Patient":
			r["operation"] = []any{map[string]any{
				"name":       "export",
				"definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
			}}
		case "Group":
			r["interaction"] = append(append([]any{}, crud...), map[string]any{"code": "search-type"})
			r["searchParam"] = []any{
				map[string]any{"name": "identifier", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Group-identifier"},
				map[string]any{"name": "name", "type": "string", "definition": "http://hl7.org/fhir/SearchParameter/Group-name"},
				map[string]any{"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
			}
			r["operation"] = []any{map[string]any{
				"name":       "export",
				"definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
			}}
		}
		out = append(out, r)
	}
	return out
}

func (s *Server) metadata(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	if s.cfg.Auth {
		return c.Send(buildCapabilityStatement(smartSecurity(s.baseURL(c))))
	}
	return c.Send(capabilityStatement)
}
