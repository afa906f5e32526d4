package harness

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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
	"github.com/flatfhir/flatfhir/shared/synth"
)

// TargetOptions configure bulkbench -target: the export side of the
// benchmark against any Bulk Data v2 server, which the harness neither
// starts nor knows.
type TargetOptions struct {
	// URL is the server's FHIR base.
	URL string
	// Duration is how long clients keep kicking off exports (those under
	// way then are finished and counted).
	Duration time.Duration
	// Clients export at once, one export after another each.
	Clients int
	// Pollers poll the status of the exports under way, as dashboards and
	// impatient clients do, on top of the clients' own polls.
	Pollers int
	// PollEvery is each poller's pause between polls.
	PollEvery time.Duration
	// Mix weighs the levels: "system=1,patient=1,group=1".
	Mix string
	// Group is the Group of group-level exports; empty finds one with GET
	// [base]/Group, and without one the mix leaves group exports out.
	Group string
	// Types, when set, is every export's _type.
	Types string
	// Parallel is each client's downloads at once.
	Parallel int
	// ClientID and KeyFile sign in as a SMART Backend Services client;
	// Scope is what it asks for.
	ClientID, KeyFile, KeyID, Scope string
	// IngestPatients, when positive, has the run first load that many
	// generated patients (about 50 resources each) with $ingest, a
	// flatfhir extension, sending AdminToken as the operator credential
	// when set. A flatfhir kick-off then waits until they are queryable.
	IngestPatients int
	AdminToken     string
	// HTML is where the report with plots goes (empty: nowhere).
	HTML string
	// Progress receives a line per completed export.
	Progress io.Writer
}

// DefaultTargetOptions are the flags' defaults.
func DefaultTargetOptions() TargetOptions {
	return TargetOptions{Duration: time.Minute, Clients: 4, Pollers: 4, PollEvery: 500 * time.Millisecond,
		Mix: "system=1,patient=1,group=1", Parallel: 4, Scope: "system/*.rs", HTML: "target.html"}
}

// TargetReport is what bulkbench -target measured.
type TargetReport struct {
	URL       string    `json:"url"`
	StartedAt time.Time `json:"startedAt"`
	// Seconds from the first kick-off to the last export's last file.
	Seconds float64 `json:"seconds"`
	Clients int     `json:"clients"`
	Pollers int     `json:"pollers"`
	Group   string  `json:"group,omitempty"`
	// Levels: system, patient, group.
	Levels map[string]*TargetLevel `json:"levels"`
	// Requests by kind (kick-off, status, download, release, token): their
	// latencies and answers.
	Requests map[string]*Latency `json:"requests"`
	// Errors by kind: what failed, counted.
	Errors map[string]int `json:"errors"`
	// ResourcesByType downloaded, over every export.
	ResourcesByType map[string]int `json:"resourcesByType"`
	// Ingested is what -target-ingest loaded before the run.
	Ingested int `json:"ingested,omitempty"`
	// Resources and Bytes downloaded, and their rates over Seconds.
	Resources     int     `json:"resources"`
	Bytes         int64   `json:"bytes"`
	ResourcesRate float64 `json:"resourcesPerSecond"`
	// Timeline is resources downloaded and exports completed in each
	// second of the run.
	Timeline []TargetSecond `json:"timeline"`
}

// TargetLevel sums the exports of one level.
type TargetLevel struct {
	Exports   int     `json:"exports"`
	Failed    int     `json:"failed"`
	Resources int     `json:"resources"`
	Bytes     int64   `json:"bytes"`
	Manifest  Latency `json:"kickoffToManifest"`   // seconds
	Done      Latency `json:"kickoffToDownloaded"` // seconds
}

// Latency summarizes durations (milliseconds for requests, seconds for
// exports) and the status codes they were answered with.
type Latency struct {
	Count   int         `json:"count"`
	P50     float64     `json:"p50"`
	P95     float64     `json:"p95"`
	P99     float64     `json:"p99"`
	Max     float64     `json:"max"`
	ByCode  map[int]int `json:"byCode,omitempty"`
	samples []float64
}

// TargetSecond is one second of the run.
type TargetSecond struct {
	At        int `json:"at"`
	Resources int `json:"resources"`
	Exports   int `json:"exports"`
}

func (l *Latency) add(v float64, code int) {
	l.samples = append(l.samples, v)
	if code != 0 {
		if l.ByCode == nil {
			l.ByCode = map[int]int{}
		}
		l.ByCode[code]++
	}
}

func (l *Latency) summarize() {
	s := slices.Clone(l.samples)
	slices.Sort(s)
	l.Count = len(s)
	if len(s) == 0 {
		return
	}
	at := func(q float64) float64 { return s[min(len(s)-1, int(q*float64(len(s))))] }
	l.P50, l.P95, l.P99, l.Max = at(0.5), at(0.95), at(0.99), s[len(s)-1]
}

// meter is an HTTP transport that times every request by kind.
type meter struct {
	base  http.RoundTripper
	start time.Time
	mu    sync.Mutex
	req   map[string]*Latency
	errs  map[string]int
}

// kind names what a request of the Bulk Data flow is.
func requestKind(r *http.Request) string {
	accept := r.Header.Get("Accept")
	switch {
	case r.Method == http.MethodDelete:
		return "release"
	case strings.Contains(r.URL.Path, "$export"):
		return "kick-off"
	case strings.Contains(accept, "ndjson"):
		return "download"
	case r.Method == http.MethodPost:
		return "token"
	case accept == "application/json":
		return "status"
	case r.Method == http.MethodGet:
		return "search"
	}
	return "other"
}

func (m *meter) RoundTrip(r *http.Request) (*http.Response, error) {
	kind := requestKind(r)
	start := time.Now()
	resp, err := m.base.RoundTrip(r)
	if err != nil {
		m.failed(kind + ": " + transportError(err))
		return nil, err
	}
	if kind == "download" {
		// A download takes until its body is read.
		resp.Body = &timedBody{ReadCloser: resp.Body, done: func() { m.record(kind, time.Since(start), resp.StatusCode) }}
		return resp, nil
	}
	m.record(kind, time.Since(start), resp.StatusCode)
	return resp, nil
}

func (m *meter) record(kind string, d time.Duration, code int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.req[kind]
	if l == nil {
		l = &Latency{}
		m.req[kind] = l
	}
	l.add(float64(d.Microseconds())/1000, code)
}

func (m *meter) failed(kind string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.errs[kind]++
}

func transportError(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "connection error"
}

// timedBody calls done once, when the body is read to its end or closed.
type timedBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.once.Do(b.done)
	}
	return n, err
}

func (b *timedBody) Close() error {
	b.once.Do(b.done)
	return b.ReadCloser.Close()
}

// RunTarget runs the export side of the benchmark against o.URL.
func RunTarget(ctx context.Context, o TargetOptions) (*TargetReport, error) {
	if o.URL == "" || o.Clients < 1 || o.Duration <= 0 {
		return nil, errors.New("-target needs a URL, at least one client and a duration")
	}
	o.URL = strings.TrimRight(o.URL, "/")
	if o.PollEvery <= 0 {
		o.PollEvery = DefaultTargetOptions().PollEvery
	}
	o.Parallel = max(1, o.Parallel)
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	m := &meter{base: http.DefaultTransport, start: time.Now(), req: map[string]*Latency{}, errs: map[string]int{}}
	hc := &http.Client{Transport: m, Timeout: 10 * time.Minute}
	c := &bulkclient.Client{HTTP: hc}
	if o.ClientID != "" {
		key, alg, err := bulkclient.ReadPrivateKey(o.KeyFile)
		if err != nil {
			return nil, err
		}
		bs := &bulkclient.BackendServices{BaseURL: o.URL, ClientID: o.ClientID, Key: key, KeyID: o.KeyID, Alg: alg, Scope: o.Scope, HTTP: hc}
		c.Token = bs.Token
	}
	levels, err := parseMix(o.Mix)
	if err != nil {
		return nil, err
	}
	ingested := 0
	if o.IngestPatients > 0 {
		n, err := ingestInto(ctx, o.URL, o.AdminToken, o.IngestPatients)
		if err != nil {
			return nil, fmt.Errorf("ingest before the run: %w", err)
		}
		ingested = n
		fmt.Fprintf(progress, "bulkbench: ingested %d resources of %d generated patients into %s\n", n, o.IngestPatients, o.URL)
		m.start = time.Now()
	}
	if slices.Contains(levels, "group") && o.Group == "" {
		o.Group, err = findGroup(ctx, c, o.URL)
		// What was just ingested may take a moment to be searchable.
		for wait := time.Now().Add(time.Minute); ingested > 0 && o.Group == "" && err == nil && time.Now().Before(wait); {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			o.Group, err = findGroup(ctx, c, o.URL)
		}
		if err != nil || o.Group == "" {
			fmt.Fprintf(progress, "bulkbench: no Group found on %s (%v): group exports left out\n", o.URL, err)
			levels = slices.DeleteFunc(levels, func(l string) bool { return l == "group" })
		}
	}
	if len(levels) == 0 {
		return nil, errors.New("-target-mix leaves no export to run")
	}
	r := &TargetReport{URL: o.URL, StartedAt: time.Now().UTC(), Clients: o.Clients, Pollers: o.Pollers, Group: o.Group,
		Levels: map[string]*TargetLevel{}, Errors: map[string]int{}, ResourcesByType: map[string]int{}, Ingested: ingested}
	var (
		mu        sync.Mutex
		running   = map[string]bool{} // status URLs under way
		perSecond = map[int]*TargetSecond{}
		next      atomic.Int64
	)
	second := func() *TargetSecond {
		at := int(time.Since(m.start).Seconds())
		s := perSecond[at]
		if s == nil {
			s = &TargetSecond{At: at}
			perSecond[at] = s
		}
		return s
	}
	deadline := time.Now().Add(o.Duration)
	stopPollers := make(chan struct{})
	var pollers sync.WaitGroup
	for range o.Pollers {
		pollers.Go(func() {
			for {
				select {
				case <-stopPollers:
					return
				case <-ctx.Done():
					return
				case <-time.After(o.PollEvery):
				}
				mu.Lock()
				var urls []string
				for u := range running {
					urls = append(urls, u)
				}
				mu.Unlock()
				if len(urls) == 0 {
					continue
				}
				pollOnce(ctx, c, hc, urls[rand.IntN(len(urls))]) //nolint:gosec // picking a poll target
			}
		})
	}
	var clients sync.WaitGroup
	for range o.Clients {
		clients.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				level := levels[int(next.Add(1)-1)%len(levels)]
				kick := kickoffURL(o.URL, level, o.Group, o.Types)
				start := time.Now()
				status, err := c.Kickoff(ctx, kick)
				if err != nil {
					mu.Lock()
					r.Errors["kick-off "+errorKind(err)]++
					mu.Unlock()
					if ctx.Err() == nil {
						// A refused kick-off (a duplicate's 429) waits a
						// moment, as a client would.
						select {
						case <-ctx.Done():
						case <-time.After(time.Second):
						}
					}
					continue
				}
				mu.Lock()
				running[status] = true
				mu.Unlock()
				man, _, err := c.Await(ctx, status)
				manifestAt := time.Since(start).Seconds()
				mu.Lock()
				delete(running, status)
				lv := r.Levels[level]
				if lv == nil {
					lv = &TargetLevel{}
					r.Levels[level] = lv
				}
				mu.Unlock()
				if err != nil {
					mu.Lock()
					lv.Failed++
					r.Errors["status "+errorKind(err)]++
					mu.Unlock()
					continue
				}
				var resources int
				var bytes int64
				_, err = c.DownloadAll(ctx, man, o.Parallel, func(kind bulkclient.Kind, f bulkclient.File) (func([]byte) error, error) {
					return func(line []byte) error {
						mu.Lock()
						defer mu.Unlock()
						resources++
						bytes += int64(len(line) + 1)
						if kind == bulkclient.KindOutput {
							r.ResourcesByType[f.Type]++
						}
						second().Resources++
						return nil
					}, nil
				})
				mu.Lock()
				if err != nil {
					lv.Failed++
					r.Errors["download "+errorKind(err)]++
				} else {
					lv.Exports++
					lv.Resources += resources
					lv.Bytes += bytes
					lv.Manifest.add(manifestAt, 0)
					lv.Done.add(time.Since(start).Seconds(), 0)
					second().Exports++
					fmt.Fprintf(progress, "bulkbench: %s export: %d resources, manifest %.1f s, downloaded %.1f s\n", level, resources, manifestAt, time.Since(start).Seconds())
				}
				mu.Unlock()
				// Release it, as a client that has its files does.
				_ = c.Delete(context.WithoutCancel(ctx), status)
			}
		})
	}
	clients.Wait()
	close(stopPollers)
	pollers.Wait()
	r.Seconds = time.Since(m.start).Seconds()
	m.mu.Lock()
	r.Requests = m.req
	for k, n := range m.errs {
		r.Errors[k] += n
	}
	m.mu.Unlock()
	for _, l := range r.Requests {
		l.summarize()
	}
	for _, lv := range r.Levels {
		lv.Manifest.summarize()
		lv.Done.summarize()
		r.Resources += lv.Resources
		r.Bytes += lv.Bytes
	}
	if r.Seconds > 0 {
		r.ResourcesRate = float64(r.Resources) / r.Seconds
	}
	for at := 0; at <= int(r.Seconds); at++ {
		s := perSecond[at]
		if s == nil {
			s = &TargetSecond{At: at}
		}
		r.Timeline = append(r.Timeline, *s)
	}
	if o.HTML != "" {
		if err := writeTargetHTML(o.HTML, r); err != nil {
			return r, fmt.Errorf("write %s: %w", o.HTML, err)
		}
	}
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	return r, nil
}

// pollOnce asks an export's status once, as a dashboard does; the meter
// times it.
func pollOnce(ctx context.Context, c *bulkclient.Client, hc *http.Client, status string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, status, nil)
	if err != nil {
		return
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != nil {
		tok, err := c.Token(ctx)
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// errorKind names an error for the report: the server's refusal by
// status, or what went wrong on the client's side.
func errorKind(err error) string {
	var e *bulkclient.Error
	switch {
	case errors.As(err, &e):
		return "HTTP " + strconv.Itoa(e.Status)
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case strings.Contains(err.Error(), "the manifest says"):
		return "count differs from the manifest"
	case strings.Contains(err.Error(), "not a JSON object"), strings.Contains(err.Error(), "Content-Type"), strings.Contains(err.Error(), "not JSON"):
		return "malformed answer"
	}
	return "other error"
}

// parseMix reads "system=2,patient=1" into a rotation of levels.
func parseMix(mix string) ([]string, error) {
	var out []string
	for part := range strings.SplitSeq(mix, ",") {
		name, weight, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(weight)
		if !ok || err != nil || n < 0 || n > 100 {
			return nil, fmt.Errorf("-target-mix %q: want level=weight,... (system, patient, group; weights 0-100)", mix)
		}
		switch name {
		case "system", "patient", "group":
		default:
			return nil, fmt.Errorf("-target-mix: unknown level %q (system, patient, group)", name)
		}
		for range n {
			out = append(out, name)
		}
	}
	return out, nil
}

// kickoffURL is a level's $export URL.
func kickoffURL(base, level, group, types string) string {
	u := base + "/$export"
	switch level {
	case "patient":
		u = base + "/Patient/$export"
	case "group":
		u = base + "/Group/" + url.PathEscape(group) + "/$export"
	}
	if types != "" {
		u += "?_type=" + url.QueryEscape(types)
	}
	return u
}

// findGroup returns the id of a Group the server lists.
func findGroup(ctx context.Context, c *bulkclient.Client, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/Group?_count=1", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/fhir+json")
	if c.Token != nil {
		tok, err := c.Token(ctx)
		if err != nil {
			return "", err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /Group: HTTP %d", resp.StatusCode)
	}
	var b struct {
		Entry []struct {
			Resource struct{ ID string }
		}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&b); err != nil {
		return "", fmt.Errorf("GET /Group: %w", err)
	}
	if len(b.Entry) == 0 {
		return "", nil
	}
	return b.Entry[0].Resource.ID, nil
}

// ingestInto loads patients generated patients into a flatfhir server with
// $ingest, 20,000 resources a request, and returns the resources accepted.
func ingestInto(ctx context.Context, base, adminToken string, patients int) (int, error) {
	var body bytes.Buffer
	lines, total := 0, 0
	send := func() error {
		if lines == 0 {
			return nil
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/$ingest", bytes.NewReader(body.Bytes()))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/fhir+ndjson")
		if adminToken != "" {
			req.Header.Set("Authorization", "Bearer "+adminToken)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if want := fmt.Sprintf("accepted %d resources", lines); resp.StatusCode != http.StatusOK || !bytes.Contains(out, []byte(want)) {
			return fmt.Errorf("POST /$ingest of %d resources: %s %s", lines, resp.Status, out)
		}
		total += lines
		lines = 0
		body.Reset()
		return nil
	}
	err := synth.Generate(ctx, synth.Config{Patients: patients, Seed: 1}, func(_ string, b []byte) error {
		body.Write(b)
		body.WriteByte('\n')
		if lines++; lines >= 20000 {
			return send()
		}
		return nil
	})
	if err == nil {
		err = send()
	}
	return total, err
}
