package api

import (
	"encoding/json"
	"testing"
)

func TestAPICapabilityStatementDeclaresEveryExportLevel(t *testing.T) {
	var cs struct {
		ResourceType string   `json:"resourceType"`
		Instantiates []string `json:"instantiates"`
		FHIRVersion  string   `json:"fhirVersion"`
		Rest         []struct {
			Operation []struct{ Name, Definition string } `json:"operation"`
			Resource  []struct {
				Type        string                              `json:"type"`
				Interaction []struct{ Code string }             `json:"interaction"`
				Operation   []struct{ Name, Definition string } `json:"operation"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(capabilityStatement, &cs); err != nil {
		t.Fatal(err)
	}
	if cs.ResourceType != "CapabilityStatement" || cs.FHIRVersion != "4.0.1" || len(cs.Instantiates) != 1 ||
		cs.Instantiates[0] != "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" {
		t.Fatalf("header: %+v", cs)
	}
	ops := map[string]string{}
	for _, op := range cs.Rest[0].Operation {
		ops["system"] = op.Name + " " + op.Definition
	}
	interactions := map[string]bool{}
	for _, r := range cs.Rest[0].Resource {
		for _, op := range r.Operation {
			ops[r.Type] = op.Name + " " + op.Definition
		}
		for _, i := range r.Interaction {
			interactions[r.Type+"."+i.Code] = true
		}
	}
	want := map[string]string{
		"system":  "export http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
		"Patient": "export http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
		"Group":   "export http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
	}
	for k, v := range want {
		if ops[k] != v {
			t.Errorf("%s operation = %q, want %q", k, ops[k], v)
		}
	}
	for _, i := range []string{"Observation.read", "Observation.update", "Observation.create", "Observation.delete", "Patient.read"} {
		if !interactions[i] {
			t.Errorf("interaction %s not declared", i)
		}
	}
	if len(cs.Rest[0].Resource) != 146 {
		t.Errorf("%d resource entries, want one per R4 type (146)", len(cs.Rest[0].Resource))
	}
	if !interactions["Group.read"] || !interactions["Group.search-type"] {
		t.Errorf("Group interactions %v, want read and search-type", interactions)
	}
}
