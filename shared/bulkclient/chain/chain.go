// Package chain checks DESIGN.md invariant 1 against a running server: a
// full export followed by exports with _since = the previous
// transactionTime, each applied to a replica, reproduce the source exactly.
//
// Run replays a random sequence of creates, updates, deletes and Group
// membership changes, some of them as transaction Bundles, and exports
// after each round while a concurrent writer keeps changing other
// resources, so that some of its writes land before and some after the
// export's transactionTime. After every export the replica must equal the
// source as of that transactionTime.
//
// It speaks plain FHIR REST (PUT with client ids, DELETE, transaction
// Bundles) and Bulk Data v2 (system $export with _since, through
// bulkclient), so it runs against any server that offers them. flatfhir's
// e2e tests run it against the engine at a modest size, bulkbench at a
// large size (-chain-rounds), and its own tests against an in-memory fake
// (fake_test.go).
package chain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
	"github.com/flatfhir/flatfhir/shared/fhir"
)

// Config sizes a run.
type Config struct {
	// Base is the engine's base URL.
	Base string
	// Rounds of changes, each followed by an export (the first a full one).
	Rounds int
	// Changes is how many sequential changes a round makes.
	Changes int
	// Pool is how many ids each changed type draws from: smaller pools
	// mean more updates and deletes of the same resources.
	Pool int
	// Concurrent bounds the writes made while each export runs.
	Concurrent int
	// Seed of the random sequence.
	Seed uint64
	// Prefix starts every id the run writes; the replica is compared on
	// these ids only, so a run can share a store with other data.
	Prefix string
	// Timeout bounds each export.
	Timeout time.Duration
	// Parallel is how many files of an export are downloaded at once; 0
	// is 4.
	Parallel int
	// Client sends the requests; nil means a client with a one-minute
	// timeout.
	Client *http.Client
	// Progress receives one line per round; nil discards them.
	Progress io.Writer
}

// Report is what a run did.
type Report struct {
	Rounds int `json:"rounds"`
	// Changes counts the sequential changes: puts, deletes, Group updates,
	// and the entries of transaction Bundles.
	Changes      int `json:"changes"`
	Transactions int `json:"transactions"`
	GroupChanges int `json:"groupChanges"`
	Concurrent   int `json:"concurrentWrites"`
	// Straddled counts concurrent writes stamped after the transactionTime
	// of the export they ran during: the case invariant 1 is about.
	Straddled int `json:"straddled"`
	// Applied counts the output and deleted entries applied to the replica.
	Applied int `json:"applied"`
	// Compared is the size of the source at the last transactionTime.
	Compared int     `json:"compared"`
	Seconds  float64 `json:"seconds"`
	// Retried counts requests sent again after a 429 or 503 answer, and
	// Transient the 503 status answers an export waited out: the server
	// could not answer for a while (a node of its cluster failing over).
	Retried   int `json:"retried"`
	Transient int `json:"transient"`
}

type version struct {
	id      string
	stamp   time.Time
	deleted bool
}

type run struct {
	cfg     Config
	client  *http.Client
	bulk    *bulkclient.Client // exports, as a strict client runs them
	rng     *rand.Rand
	mu      sync.Mutex
	history map[string][]version // "Type/id" -> versions in order
	replica map[string]string    // "Type/id" -> versionId
	report  Report
}

// Run performs the run and returns an error naming the first difference.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if cfg.Rounds < 1 || cfg.Changes < 1 || cfg.Pool < 1 || cfg.Concurrent < 0 || cfg.Base == "" {
		return Report{}, errors.New("chain: rounds, changes and pool must be positive and the base URL set")
	}
	if cfg.Prefix == "" || !fhir.ValidID(cfg.Prefix+"x0") {
		return Report{}, fmt.Errorf("chain: prefix %q does not make valid ids", cfg.Prefix)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 4
	}
	r := &run{cfg: cfg, client: cfg.Client, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		history: map[string][]version{}, replica: map[string]string{}}
	if r.client == nil {
		r.client = &http.Client{Timeout: time.Minute}
	}
	r.bulk = &bulkclient.Client{HTTP: r.client}
	start := time.Now()
	since := ""
	for round := 0; round < cfg.Rounds; round++ {
		if err := r.changes(ctx); err != nil {
			return r.report, fmt.Errorf("round %d: %w", round, err)
		}
		tt, err := r.exportDuringWrites(ctx, since)
		if err != nil {
			return r.report, fmt.Errorf("round %d (since %q): %w", round, since, err)
		}
		want := r.expected(tt)
		if d := r.compare(want); d != "" {
			return r.report, fmt.Errorf("round %d (since %q, transactionTime %s): the replica differs from the source: %s", round, since, fhir.FormatInstant(tt), d)
		}
		r.report.Rounds++
		r.report.Compared = len(want)
		since = fhir.FormatInstant(tt)
		fmt.Fprintf(cfg.Progress, "chain: round %d of %d: replica equals the source at %s (%d resources)\n", round+1, cfg.Rounds, since, len(want))
	}
	r.report.Seconds = time.Since(start).Seconds()
	return r.report, nil
}

func (r *run) key(typ string) (string, string) {
	id := fmt.Sprintf("%s%c%d", r.cfg.Prefix, typ[0]+'a'-'A', r.rng.IntN(r.cfg.Pool))
	return typ + "/" + id, id
}

func (r *run) alive(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	vs := r.history[key]
	return len(vs) > 0 && !vs[len(vs)-1].deleted
}

func (r *run) record(key string, v version) {
	r.mu.Lock()
	r.history[key] = append(r.history[key], v)
	r.mu.Unlock()
}

// body is a new random version of typ/id.
func (r *run) body(typ, id string) []byte {
	switch typ {
	case "Patient":
		return fmt.Appendf(nil, `{"resourceType":"Patient","id":%q,"gender":%q,"birthDate":"19%02d-01-01"}`,
			id, []string{"male", "female", "other"}[r.rng.IntN(3)], r.rng.IntN(100))
	case "Group":
		var members []string
		for i := range r.cfg.Pool {
			if r.rng.IntN(3) == 0 {
				members = append(members, fmt.Sprintf(`{"entity":{"reference":"Patient/%sp%d"}}`, r.cfg.Prefix, i))
			}
		}
		if len(members) == 0 {
			// FHIR JSON has no empty arrays: a Group nobody belongs to.
			return fmt.Appendf(nil, `{"resourceType":"Group","id":%q,"type":"person","actual":true}`, id)
		}
		return fmt.Appendf(nil, `{"resourceType":"Group","id":%q,"type":"person","actual":true,"member":[%s]}`, id, strings.Join(members, ","))
	default:
		return fmt.Appendf(nil, `{"resourceType":%q,"id":%q,"status":"final","code":{"text":"v%d"},"subject":{"reference":"Patient/%sp%d"}}`,
			typ, id, r.rng.IntN(1e9), r.cfg.Prefix, r.rng.IntN(r.cfg.Pool))
	}
}

// changes makes one round's sequential changes: single writes, Group
// membership changes, and one transaction Bundle.
func (r *run) changes(ctx context.Context) error {
	var tx []txEntry
	touched := map[string]bool{} // written on its own this round
	for i := 0; i < r.cfg.Changes; i++ {
		typ := []string{"Patient", "Observation", "Observation", "Group"}[r.rng.IntN(4)]
		key, id := r.key(typ)
		if inTx(tx, key) {
			// A resource appears once in a transaction, and the state a
			// transaction entry was chosen for must hold when it is sent.
			continue
		}
		del := r.alive(key) && r.rng.IntN(4) == 0
		if typ == "Group" {
			r.report.GroupChanges++
		}
		if i%3 == 2 && !touched[key] {
			// One in three goes into the round's transaction.
			e := txEntry{key: key, typ: typ, id: id, del: del}
			if !del {
				e.body = r.body(typ, id)
			}
			tx = append(tx, e)
			continue
		}
		touched[key] = true
		var err error
		if del {
			err = r.delete(ctx, key)
		} else {
			err = r.put(ctx, typ, id, r.body(typ, id))
		}
		if err != nil {
			return err
		}
		r.report.Changes++
	}
	if len(tx) > 0 {
		if err := r.transaction(ctx, tx); err != nil {
			return err
		}
		r.report.Transactions++
		r.report.Changes += len(tx)
	}
	return nil
}

type txEntry struct {
	key, typ, id string
	del          bool
	body         []byte
}

func inTx(tx []txEntry, key string) bool {
	for _, e := range tx {
		if e.key == key {
			return true
		}
	}
	return false
}

func (r *run) put(ctx context.Context, typ, id string, body []byte) error {
	resp, out, err := r.do(ctx, http.MethodPut, r.cfg.Base+"/"+typ+"/"+id, body, "application/fhir+json")
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT %s/%s: %s: %s", typ, id, resp.Status, out)
	}
	var res struct {
		Meta struct{ VersionID, LastUpdated string }
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return fmt.Errorf("PUT %s/%s answered %s: %w", typ, id, out, err)
	}
	stamp, err := fhir.ParseInstant(res.Meta.LastUpdated)
	if err != nil || res.Meta.VersionID == "" {
		return fmt.Errorf("PUT %s/%s: meta %+v", typ, id, res.Meta)
	}
	r.record(typ+"/"+id, version{id: res.Meta.VersionID, stamp: stamp})
	return nil
}

// delete deletes key. The deletion is ingested before the answer, so it
// lies at or below the transactionTime of every later kick-off.
func (r *run) delete(ctx context.Context, key string) error {
	resp, out, err := r.do(ctx, http.MethodDelete, r.cfg.Base+"/"+key, nil, "")
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("DELETE %s: %s: %s", key, resp.Status, out)
	}
	r.record(key, version{deleted: true})
	return nil
}

// transaction applies entries as one transaction Bundle and records the
// versions its response names.
func (r *run) transaction(ctx context.Context, entries []txEntry) error {
	var b bytes.Buffer
	b.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	for i, e := range entries {
		if i > 0 {
			b.WriteByte(',')
		}
		if e.del {
			fmt.Fprintf(&b, `{"request":{"method":"DELETE","url":%q}}`, e.key)
		} else {
			fmt.Fprintf(&b, `{"resource":%s,"request":{"method":"PUT","url":%q}}`, e.body, e.key)
		}
	}
	b.WriteString(`]}`)
	resp, out, err := r.do(ctx, http.MethodPost, r.cfg.Base+"/", b.Bytes(), "application/fhir+json")
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("transaction of %d entries: %s: %s", len(entries), resp.Status, out)
	}
	var res struct {
		Type  string
		Entry []struct {
			Response struct{ Status, Etag, LastModified string }
		}
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Type != "transaction-response" || len(res.Entry) != len(entries) {
		return fmt.Errorf("transaction of %d entries answered %.300s (%v)", len(entries), out, err)
	}
	for i, e := range entries {
		if e.del {
			r.record(e.key, version{deleted: true})
			continue
		}
		got := res.Entry[i].Response
		vid := strings.TrimSuffix(strings.TrimPrefix(got.Etag, `W/"`), `"`)
		stamp, err := fhir.ParseInstant(got.LastModified)
		if err != nil || vid == "" || !strings.HasPrefix(got.Status, "20") {
			return fmt.Errorf("transaction entry %d (%s): response %+v", i, e.key, got)
		}
		r.record(e.key, version{id: vid, stamp: stamp})
	}
	return nil
}

// exportDuringWrites runs one export while Observations keep changing and
// applies it to the replica; it returns the export's transactionTime.
func (r *run) exportDuringWrites(ctx context.Context, since string) (time.Time, error) {
	u := r.cfg.Base + "/$export"
	if since != "" {
		u += "?_since=" + url.QueryEscape(since)
	}
	stop := make(chan struct{})
	werr := make(chan error, 1)
	// The concurrent writer draws from its own generator: the main one is
	// not safe for two goroutines.
	wrng := rand.New(rand.NewPCG(r.rng.Uint64(), r.rng.Uint64()))
	writes := 0
	go func() {
		for ; writes < r.cfg.Concurrent; writes++ {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			id := fmt.Sprintf("%sw%d", r.cfg.Prefix, wrng.IntN(r.cfg.Pool))
			body := fmt.Appendf(nil, `{"resourceType":"Observation","id":%q,"status":"final","code":{"text":"w%d"}}`, id, wrng.IntN(1e9))
			if err := r.put(ctx, "Observation", id, body); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	m, err := r.export(ctx, u)
	close(stop)
	cerr := <-werr
	r.report.Concurrent += writes
	if err == nil && cerr != nil {
		err = fmt.Errorf("concurrent writer: %w", cerr)
	}
	if err != nil {
		return time.Time{}, err
	}
	tt, err := fhir.ParseInstant(m.TransactionTime)
	if err != nil {
		return time.Time{}, fmt.Errorf("transactionTime %q: %w", m.TransactionTime, err)
	}
	r.mu.Lock()
	for key, vs := range r.history {
		if strings.HasPrefix(key, "Observation/"+r.cfg.Prefix+"w") {
			for _, v := range vs {
				if v.stamp.After(tt) {
					r.report.Straddled++
				}
			}
		}
	}
	r.mu.Unlock()
	return tt, r.apply(ctx, m)
}

// export kicks off, polls as a client does, and returns the manifest.
func (r *run) export(ctx context.Context, u string) (bulkclient.Manifest, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	status, err := r.bulk.Kickoff(ctx, u)
	if err != nil {
		return bulkclient.Manifest{}, err
	}
	m, st, err := r.bulk.Await(ctx, status)
	r.mu.Lock()
	r.report.Transient += st.Transient
	r.mu.Unlock()
	if err != nil {
		return m, fmt.Errorf("export %s: %w", status, err)
	}
	return m, nil
}

// apply downloads an export into the replica, Parallel files at a time:
// deletions remove, output upserts. A resource in both output and deleted,
// or twice in output, is an error, so the order files arrive in does not
// matter. Error files are not read: what they lost shows as a difference.
func (r *run) apply(ctx context.Context, m bulkclient.Manifest) error {
	var mu sync.Mutex // the replica, the report and the two sets below
	inOutput, inDeleted := map[string]bool{}, map[string]bool{}
	deleted := func(line []byte) error {
		var b struct {
			Entry []struct{ Request struct{ Method, URL string } }
		}
		if err := json.Unmarshal(line, &b); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range b.Entry {
			if e.Request.Method != http.MethodDelete {
				return fmt.Errorf("deleted entry with method %q", e.Request.Method)
			}
			if inOutput[e.Request.URL] {
				return fmt.Errorf("%s is in both output and deleted", e.Request.URL)
			}
			inDeleted[e.Request.URL] = true
			delete(r.replica, e.Request.URL)
			r.report.Applied++
		}
		return nil
	}
	output := func(f bulkclient.File) func(line []byte) error {
		return func(line []byte) error {
			var res struct {
				ResourceType, ID string
				Meta             struct{ VersionID string }
			}
			if err := json.Unmarshal(line, &res); err != nil {
				return err
			}
			key := res.ResourceType + "/" + res.ID
			if res.ResourceType != f.Type {
				return fmt.Errorf("%s in a %s file", key, f.Type)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case inOutput[key]:
				return fmt.Errorf("%s is twice in output", key)
			case inDeleted[key]:
				return fmt.Errorf("%s is in both output and deleted", key)
			}
			inOutput[key] = true
			if strings.HasPrefix(res.ID, r.cfg.Prefix) {
				r.replica[key] = res.Meta.VersionID
			}
			r.report.Applied++
			return nil
		}
	}
	_, err := r.bulk.DownloadAll(ctx, m, r.cfg.Parallel, func(kind bulkclient.Kind, f bulkclient.File) (func([]byte) error, error) {
		switch kind {
		case bulkclient.KindOutput:
			return output(f), nil
		case bulkclient.KindDeleted:
			return deleted, nil
		}
		return nil, nil
	})
	return err
}

// expected is the source as of t: the latest version at or before t of
// each resource that is not deleted. Deletions count from the moment they
// were made (always before the kick-off that follows them).
func (r *run) expected(at time.Time) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for key, vs := range r.history {
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

// compare describes how the replica differs from want, "" when equal.
func (r *run) compare(want map[string]string) string {
	var diffs []string
	for k, v := range want {
		if got, ok := r.replica[k]; !ok {
			diffs = append(diffs, k+" missing (source version "+v+")")
		} else if got != v {
			diffs = append(diffs, k+" at version "+got+", source "+v)
		}
	}
	for k, v := range r.replica {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, k+" (version "+v+") not in the source")
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	sort.Strings(diffs)
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("and %d more", len(diffs)-10))
	}
	return strings.Join(diffs, "; ")
}

func (r *run) do(ctx context.Context, method, u string, body []byte, contentType string) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/fhir+json")
	if strings.Contains(u, "$export") {
		req.Header.Set("Prefer", "respond-async")
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for attempt := 1; ; attempt++ {
		resp, err := r.client.Do(req)
		if err != nil {
			return nil, nil, fmt.Errorf("%s %s: %w", method, u, err)
		}
		out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			return resp, out, fmt.Errorf("%s %s: %w", method, u, err)
		}
		wait, again := retryAfter(resp, attempt)
		if !again {
			return resp, out, nil
		}
		r.mu.Lock()
		r.report.Retried++
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return resp, out, ctx.Err()
		case <-time.After(wait):
		}
		if body != nil {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
	}
}

// retryAfter says whether a response asks to be sent again, as a client
// that honours 429 and 503 does, and after how long: the Retry-After
// seconds, or 1 s. It gives up after maxRetries.
func retryAfter(resp *http.Response, attempt int) (time.Duration, bool) {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable || attempt > maxRetries {
		return 0, false
	}
	wait := time.Second
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 && s < 60 {
		wait = time.Duration(s) * time.Second
	}
	return wait, true
}

// maxRetries bounds how often one request is sent again.
const maxRetries = 60
