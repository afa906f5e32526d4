package chain_test

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// bug is a fault the fake can be told to have.
type bug int

const (
	noBug bug = iota
	// omitDeletions leaves deleted resources out of a _since export's
	// deleted array.
	omitDeletions
	// dropBoundary leaves out of an export the changes stamped exactly at
	// its transactionTime (an exclusive upper bound where it must be
	// inclusive): the next export, _since that instant, misses them too.
	dropBoundary
)

// fake is an in-memory FHIR server with just what chain.Run uses: PUT and
// DELETE of a resource by id, transaction Bundles of PUT and DELETE
// entries, and Bulk Data v2 system $export with _since. A logical clock
// stamps every change (a transaction's entries share one stamp); an
// export's transactionTime is the stamp of the last change before its
// kick-off, as in flatfhir. The first status poll answers 202; the next
// waits (up to half a second) for a change after transactionTime, so that
// the concurrent writer straddles it, then builds the export as of
// transactionTime and answers the manifest. Files are served gzip-encoded
// to a client that accepts it.
type fake struct {
	bug bug
	URL string

	mu      sync.Mutex
	clock   time.Time            // the last stamp handed out
	history map[string][]version // "Type/id" -> versions, in stamp order
	changed chan struct{}        // closed and replaced on every change
	jobs    map[string]*job
	files   map[string][]byte // path -> NDJSON

	// What the test checks.
	changes, transactions int      // single changes plus transaction entries; Bundles
	served                int      // output and deleted lines in manifests
	live                  int      // resources alive at the last transactionTime
	gzipped               int      // files sent gzip-encoded
	dropped               []string // keys the bug left out of an export
}

type version struct {
	stamp time.Time
	body  []byte // with meta; nil for a deletion
}

type job struct {
	request   string
	since, tt time.Time
	polls     int
	manifest  []byte // built at completion
}

func newFake(t *testing.T, b bug) *fake {
	f := &fake{bug: b, clock: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		history: map[string][]version{}, changed: make(chan struct{}), jobs: map[string]*job{}, files: map[string][]byte{}}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /{type}/{id}", f.put)
	mux.HandleFunc("DELETE /{type}/{id}", f.delete)
	mux.HandleFunc("POST /{$}", f.transaction)
	mux.HandleFunc("GET /$export", f.kickoff)
	mux.HandleFunc("GET /jobs/{job}", f.status)
	mux.HandleFunc("GET /files/{name}", f.file)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// change records a new version of key (body nil: a deletion) and wakes
// status polls. f.mu is held.
func (f *fake) change(key string, body []byte, stamp time.Time) (vid string, err error) {
	vid = fmt.Sprint(len(f.history[key]) + 1)
	if body != nil {
		if body, err = fhir.SetMeta(nil, body, vid, fhir.FormatInstant(stamp)); err != nil {
			return "", err
		}
	}
	f.history[key] = append(f.history[key], version{stamp: stamp, body: body})
	f.changes++
	close(f.changed)
	f.changed = make(chan struct{})
	return vid, nil
}

func (f *fake) tick() time.Time {
	f.clock = f.clock.Add(time.Millisecond)
	return f.clock
}

// alive reports whether key's latest version is not a deletion. f.mu is held.
func (f *fake) alive(key string) bool {
	vs := f.history[key]
	return len(vs) > 0 && vs[len(vs)-1].body != nil
}

// checkResource checks that body is a resource of the type and id of key.
func checkResource(key string, body []byte) error {
	h, err := fhir.Inspect(body, true)
	if err != nil {
		return err
	}
	if h.ResourceType+"/"+h.ID != key {
		return fmt.Errorf("%s/%s sent to %s", h.ResourceType, h.ID, key)
	}
	return nil
}

func (f *fake) put(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("type") + "/" + r.PathValue("id")
	body, _ := io.ReadAll(r.Body)
	if err := checkResource(key, body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	status := http.StatusOK
	if !f.alive(key) {
		status = http.StatusCreated
	}
	_, err := f.change(key, body, f.tick())
	vs := f.history[key]
	stored := vs[len(vs)-1].body
	f.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(status)
	w.Write(stored)
}

func (f *fake) delete(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.change(r.PathValue("type")+"/"+r.PathValue("id"), nil, f.tick()); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// transaction applies a Bundle of PUT and DELETE entries all at once.
func (f *fake) transaction(w http.ResponseWriter, r *http.Request) {
	var b struct {
		ResourceType, Type string
		Entry              []struct {
			Resource json.RawMessage
			Request  struct{ Method, URL string }
		}
	}
	if err := json.NewDecoder(r.Body).Decode(&b); err != nil || b.ResourceType != "Bundle" || b.Type != "transaction" {
		http.Error(w, fmt.Sprintf("not a transaction Bundle (%v)", err), http.StatusBadRequest)
		return
	}
	for _, e := range b.Entry {
		if e.Request.Method == http.MethodPut {
			if err := checkResource(e.Request.URL, e.Resource); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		} else if e.Request.Method != http.MethodDelete {
			http.Error(w, "method "+e.Request.Method, http.StatusBadRequest)
			return
		}
	}
	type response struct {
		Status       string `json:"status"`
		Etag         string `json:"etag,omitempty"`
		LastModified string `json:"lastModified,omitempty"`
	}
	var out []map[string]response
	f.mu.Lock()
	stamp := f.tick()
	for _, e := range b.Entry {
		res := response{Status: "204 No Content"}
		if e.Request.Method == http.MethodPut {
			res.Status = "200 OK"
			if !f.alive(e.Request.URL) {
				res.Status = "201 Created"
			}
			vid, err := f.change(e.Request.URL, e.Resource, stamp)
			if err != nil {
				f.mu.Unlock()
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			res.Etag, res.LastModified = `W/"`+vid+`"`, fhir.FormatInstant(stamp)
		} else if _, err := f.change(e.Request.URL, nil, stamp); err != nil {
			f.mu.Unlock()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out = append(out, map[string]response{"response": res})
	}
	f.transactions++
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/fhir+json")
	json.NewEncoder(w).Encode(map[string]any{"resourceType": "Bundle", "type": "transaction-response", "entry": out})
}

func (f *fake) kickoff(w http.ResponseWriter, r *http.Request) {
	j := &job{request: "http://" + r.Host + r.URL.RequestURI()}
	if s := r.URL.Query().Get("_since"); s != "" {
		var err error
		if j.since, err = fhir.ParseInstant(s); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	f.mu.Lock()
	j.tt = f.clock
	id := fmt.Sprint(len(f.jobs) + 1)
	f.jobs[id] = j
	f.mu.Unlock()
	w.Header().Set("Content-Location", "http://"+r.Host+"/jobs/"+id)
	w.WriteHeader(http.StatusAccepted)
}

func (f *fake) status(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.jobs[r.PathValue("job")]
	if j == nil {
		http.NotFound(w, r)
		return
	}
	if j.polls++; j.polls == 1 {
		w.Header().Set("Retry-After", "0")
		w.Header().Set("X-Progress", "planning")
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if j.manifest == nil {
		deadline := time.After(500 * time.Millisecond)
		for !f.clock.After(j.tt) && f.wait(r.Context(), deadline) {
		}
		j.manifest = f.build(j, "http://"+r.Host, r.PathValue("job"))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(j.manifest)
}

// wait releases f.mu until the next change and reports whether one came
// before the deadline. f.mu is held.
func (f *fake) wait(ctx context.Context, deadline <-chan time.Time) bool {
	ch := f.changed
	f.mu.Unlock()
	defer f.mu.Lock()
	select {
	case <-ch:
		return true
	case <-deadline:
		return false
	case <-ctx.Done():
		return false
	}
}

// build writes the export's files, as of its transactionTime, and returns
// its manifest. f.mu is held.
func (f *fake) build(j *job, base, id string) []byte {
	type entry struct {
		Type  string `json:"type"`
		URL   string `json:"url"`
		Count int    `json:"count"`
	}
	output, deleted := map[string][][]byte{}, [][]byte{}
	f.live = 0
	for _, key := range slices.Sorted(maps.Keys(f.history)) {
		var at *version // the latest version at transactionTime
		for i, v := range f.history[key] {
			if v.stamp.After(j.tt) {
				break
			}
			at = &f.history[key][i]
		}
		if at != nil && at.body != nil {
			f.live++
		}
		if at == nil || !at.stamp.After(j.since) {
			continue // unchanged since _since
		}
		if at.body == nil && j.since.IsZero() {
			continue // a full export lists no deletions
		}
		if (f.bug == dropBoundary && at.stamp.Equal(j.tt)) || (f.bug == omitDeletions && at.body == nil) {
			f.dropped = append(f.dropped, key)
			continue
		}
		if at.body == nil {
			deleted = append(deleted, fmt.Appendf(nil, `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":%q}}]}`, key))
			continue
		}
		typ, _, _ := strings.Cut(key, "/")
		output[typ] = append(output[typ], at.body)
	}
	// Files of at most three lines, so that an export has several.
	files := func(typ string, lines [][]byte) []entry {
		var out []entry
		for chunk := range slices.Chunk(lines, 3) {
			path := fmt.Sprintf("/files/%s-%d.ndjson", id, len(f.files))
			var b []byte
			for _, l := range chunk {
				b = append(append(b, l...), '\n')
			}
			f.files[path] = b
			out = append(out, entry{Type: typ, URL: base + path, Count: len(chunk)})
			f.served += len(chunk)
		}
		return out
	}
	m := map[string]any{"transactionTime": fhir.FormatInstant(j.tt), "request": j.request,
		"requiresAccessToken": false, "output": []entry{}, "deleted": files("Bundle", deleted), "error": []entry{}}
	for _, typ := range slices.Sorted(maps.Keys(output)) {
		m["output"] = append(m["output"].([]entry), files(typ, output[typ])...)
	}
	b, _ := json.Marshal(m)
	return b
}

func (f *fake) file(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	body, ok := f.files[r.URL.Path]
	zip := ok && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip")
	if zip {
		f.gzipped++
	}
	f.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/fhir+ndjson")
	if !zip {
		w.Write(body)
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	zw := gzip.NewWriter(w)
	zw.Write(body)
	zw.Close()
}
