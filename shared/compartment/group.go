package compartment

import (
	"encoding/json"
	"fmt"
	"sort"
)

// GroupPatients returns the sorted ids of the active Patient members of a
// Group resource. Members that are not patients (Practitioners, Devices,
// other Groups) and members marked inactive are left out: a Group export
// covers the compartments of its patients only.
func GroupPatients(body []byte) ([]string, error) {
	var g struct {
		ResourceType string `json:"resourceType"`
		Member       []struct {
			Entity struct {
				Reference string `json:"reference"`
				Type      string `json:"type"`
			} `json:"entity"`
			Inactive bool `json:"inactive"`
		} `json:"member"`
	}
	if err := json.Unmarshal(body, &g); err != nil {
		return nil, fmt.Errorf("%w: group: %v", ErrMalformed, err)
	}
	if g.ResourceType != "Group" {
		return nil, fmt.Errorf("%w: resourceType %q is not Group", ErrMalformed, g.ResourceType)
	}
	seen := map[string]bool{}
	var out []string
	for _, m := range g.Member {
		if m.Inactive {
			continue
		}
		if id, ok := patientRef(m.Entity.Reference, m.Entity.Type == "Patient"); ok && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}
