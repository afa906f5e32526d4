package flatfhir_test

import (
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
)

// TestE2EReadsAndDeletesSeeEveryChangeAcceptedBefore: once $ingest has
// answered, a read finds what it loaded and a DELETE (single or in a
// transaction) deletes it, even while the ingester has not stored it yet.
// The ingester here waits two seconds for a batch to fill, so each request
// below arrives before the data it names is in ClickHouse.
func TestE2EReadsAndDeletesSeeEveryChangeAcceptedBefore(t *testing.T) {
	base := startEngineWith(t, func(tu *flatfhir.Tuning) { tu.Ingester.FlushInterval = 2 * time.Second })
	ingest := func(ndjson string) {
		t.Helper()
		resp, out := do(t, "POST", base+"/$ingest", strings.NewReader(ndjson), "Content-Type", "application/fhir+ndjson")
		if resp.StatusCode != 200 {
			t.Fatalf("ingest: %d %s", resp.StatusCode, out)
		}
	}
	ingest(`{"resourceType":"Patient","id":"ryw1"}` + "\n" + `{"resourceType":"Observation","id":"ryw2","status":"final","code":{"text":"x"}}` + "\n")
	if resp, out := do(t, "GET", base+"/Patient/ryw1", nil); resp.StatusCode != 200 {
		t.Errorf("GET right after $ingest: %d %s, want 200", resp.StatusCode, out)
	}
	ingest(`{"resourceType":"Observation","id":"ryw3","status":"final","code":{"text":"y"}}` + "\n")
	if resp, out := do(t, "DELETE", base+"/Observation/ryw3", nil); resp.StatusCode != 204 {
		t.Errorf("DELETE right after $ingest: %d %s", resp.StatusCode, out)
	}
	if resp, _ := do(t, "GET", base+"/Observation/ryw3", nil); resp.StatusCode != 404 {
		t.Errorf("GET after DELETE: %d, want 404: the DELETE did not see the resource it names", resp.StatusCode)
	}
	ingest(`{"resourceType":"Observation","id":"ryw4","status":"final","code":{"text":"z"}}` + "\n")
	tx := `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Observation/ryw4"}},{"request":{"method":"DELETE","url":"Observation/ryw2"}}]}`
	if resp, out := do(t, "POST", base+"/", strings.NewReader(tx), "Content-Type", "application/fhir+json"); resp.StatusCode != 200 {
		t.Fatalf("transaction: %d %s", resp.StatusCode, out)
	}
	for _, key := range []string{"Observation/ryw4", "Observation/ryw2"} {
		if resp, _ := do(t, "GET", base+"/"+key, nil); resp.StatusCode != 404 {
			t.Errorf("GET %s after a transaction deleted it: %d, want 404", key, resp.StatusCode)
		}
	}
	m, _, _ := await(t, kickoff(t, base+"/$export"))
	for _, o := range m.Output {
		if o.Type == "Observation" {
			_, body := do(t, "GET", o.URL, nil)
			t.Errorf("the export still holds deleted Observations: %s", body)
		}
	}
}
