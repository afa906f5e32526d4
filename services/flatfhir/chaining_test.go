package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// TestE2EChainedSinceExportsReproduceTheSource is DESIGN.md invariant 1:
// a full export followed by exports with _since = the previous
// transactionTime, applied in turn to a replica, reproduce the source
// exactly, while writes keep arriving during every export. Sequential
// creates, updates and deletes between exports exercise every kind of
// change; a concurrent writer updates other resources while each export
// runs, so some of its writes fall before and some after transactionTime.
func TestE2EChainedSinceExportsReproduceTheSource(t *testing.T) {
	base := startEngine(t)
	rng := rand.New(rand.NewPCG(7, 11))
	fhirJSON := []string{"Content-Type", "application/fhir+json"}

	type version struct {
		id      string
		stamp   time.Time
		deleted bool
	}
	var mu sync.Mutex
	history := map[string][]version{} // "Type/id" -> versions in order

	put := func(typ, id string) {
		body := fmt.Sprintf(`{"resourceType":%q,"id":%q,"status":"final","code":{"text":"v%d"}}`, typ, id, rng.IntN(1e9))
		if typ == "Patient" {
			body = fmt.Sprintf(`{"resourceType":"Patient","id":%q,"gender":%q}`, id, []string{"male", "female", "other"}[rng.IntN(3)])
		}
		resp, out := do(t, "PUT", base+"/"+typ+"/"+id, strings.NewReader(body), fhirJSON...)
		if resp.StatusCode != 200 && resp.StatusCode != 201 {
			t.Errorf("PUT %s/%s: %d %s", typ, id, resp.StatusCode, out)
			return
		}
		var r struct {
			Meta struct{ VersionID, LastUpdated string }
		}
		_ = json.Unmarshal(out, &r)
		stamp, err := fhir.ParseInstant(r.Meta.LastUpdated)
		if err != nil {
			t.Errorf("PUT %s/%s: lastUpdated %q", typ, id, r.Meta.LastUpdated)
			return
		}
		mu.Lock()
		history[typ+"/"+id] = append(history[typ+"/"+id], version{id: r.Meta.VersionID, stamp: stamp})
		mu.Unlock()
	}
	del := func(key string) {
		resp, out := do(t, "DELETE", base+"/"+key, nil)
		if resp.StatusCode != http.StatusNoContent {
			t.Errorf("DELETE %s: %d %s", key, resp.StatusCode, out)
			return
		}
		// The deletion is ingested before the next kick-off, so it is at or
		// below that export's transactionTime.
		mu.Lock()
		history[key] = append(history[key], version{deleted: true})
		mu.Unlock()
	}
	// expected is the source as of t: the latest version at or before t of
	// each resource that is not deleted. Deletions count from the moment
	// they were made (always before the kick-off that follows them).
	expected := func(at time.Time) map[string]string {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]string{}
		for key, vs := range history {
			cur := ""
			for _, v := range vs {
				switch {
				case v.deleted:
					cur = ""
				case !v.stamp.After(at):
					cur = v.id
				}
			}
			if cur != "" {
				out[key] = cur
			}
		}
		return out
	}

	replica := map[string]string{} // "Type/id" -> versionId
	since := ""
	straddled := 0 // concurrent writes stamped after an export's transactionTime
	for round := 0; round < 6; round++ {
		// Sequential changes to the B resources: creates, updates, deletes.
		for i := 0; i < 15; i++ {
			typ := []string{"Patient", "Observation"}[rng.IntN(2)]
			key := fmt.Sprintf("%s/b%d", typ, rng.IntN(12))
			mu.Lock()
			vs := history[key]
			alive := len(vs) > 0 && !vs[len(vs)-1].deleted
			mu.Unlock()
			if alive && rng.IntN(3) == 0 {
				del(key)
			} else {
				put(typ, strings.TrimPrefix(key, typ+"/"))
			}
		}
		// The export, with the A resources changing while it runs.
		url := base + "/$export"
		if since != "" {
			url += "?_since=" + since
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				select {
				case <-stop:
					return
				default:
				}
				put("Observation", fmt.Sprintf("a%d", rng.IntN(8)))
			}
		}()
		status := kickoff(t, url)
		_, _, raw := await(t, status)
		close(stop)
		wg.Wait()
		var m struct {
			TransactionTime string
			Output, Deleted []struct{ Type, URL string }
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		tt, err := fhir.ParseInstant(m.TransactionTime)
		if err != nil {
			t.Fatal(err)
		}
		// Apply the export to the replica: deletions, then upserts.
		seen := map[string]bool{}
		for _, d := range m.Deleted {
			_, body := do(t, "GET", d.URL, nil)
			for _, l := range splitLines(t, bytes.NewReader(body)) {
				var b struct {
					Entry []struct{ Request struct{ URL string } }
				}
				_ = json.Unmarshal(l, &b)
				for _, e := range b.Entry {
					delete(replica, e.Request.URL)
					seen[e.Request.URL] = true
				}
			}
		}
		for _, o := range m.Output {
			_, body := do(t, "GET", o.URL, nil)
			for _, l := range splitLines(t, bytes.NewReader(body)) {
				var r struct {
					ID   string
					Meta struct{ VersionID string }
				}
				_ = json.Unmarshal(l, &r)
				key := o.Type + "/" + r.ID
				if seen[key] {
					t.Errorf("round %d: %s is in both output and deleted", round, key)
				}
				seen[key] = true
				replica[key] = r.Meta.VersionID
			}
		}
		mu.Lock()
		for key, vs := range history {
			if strings.HasPrefix(key, "Observation/a") {
				for _, v := range vs {
					if v.stamp.After(tt) {
						straddled++
					}
				}
			}
		}
		mu.Unlock()
		want := expected(tt)
		if fmt.Sprint(replica) != fmt.Sprint(want) {
			t.Fatalf("round %d (since %q, T %s): replica differs from the source\nreplica %v\nsource  %v", round, since, m.TransactionTime, replica, want)
		}
		since = m.TransactionTime
	}
	if straddled == 0 {
		t.Error("no concurrent write landed after a transactionTime: the test did not exercise writes during exports")
	}
}
