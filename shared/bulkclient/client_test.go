package bulkclient

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBulkClientRetryAfter(t *testing.T) {
	c := &Client{MaxRetryAfter: 30 * time.Second}
	for h, want := range map[string]time.Duration{
		"":                              time.Second, // none: the default
		"3":                             3 * time.Second,
		"0":                             0,
		"120":                           30 * time.Second, // capped
		"soon":                          time.Second,
		"-5":                            time.Second,
		"1.5":                           time.Second,
		" 2 ":                           2 * time.Second,
		"Thu, 01 Jan 1970 00:00:00 GMT": 0, // a date in the past
	} {
		if got := c.retryAfter(h); got != want {
			t.Errorf("Retry-After %q: wait %s, want %s", h, got, want)
		}
	}
	future := time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat)
	if got := c.retryAfter(future); got < 8*time.Second || got > 10*time.Second {
		t.Errorf("Retry-After %q: wait %s, want about 10s", future, got)
	}
}

// server answers the status URL with the given in-progress answers, then
// the manifest; it records when each poll came.
type server struct {
	inProgress []func(w http.ResponseWriter)
	manifest   string
	// manifestType labels the manifest; empty is application/json.
	manifestType string
	polls        atomic.Int32
	file         string
}

func (s *server) start(t *testing.T) string {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/$export":
			w.Header().Set("Content-Location", srv.URL+"/jobs/1")
			w.WriteHeader(http.StatusAccepted)
		case "/jobs/1":
			n := int(s.polls.Add(1)) - 1
			if n < len(s.inProgress) {
				s.inProgress[n](w)
				return
			}
			w.Header().Set("Content-Type", cmp.Or(s.manifestType, "application/json"))
			fmt.Fprint(w, strings.ReplaceAll(s.manifest, "BASE", srv.URL))
		case "/files/a.ndjson":
			w.Header().Set("Content-Type", "application/fhir+ndjson")
			fmt.Fprint(w, s.file)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

const goodManifest = `{"transactionTime":"2026-01-02T03:04:05.123Z","request":"BASE/$export","requiresAccessToken":false,
"output":[{"type":"Patient","url":"BASE/files/a.ndjson","count":2}],"error":[]}`

func noSleep(waits *[]time.Duration) func(context.Context, time.Duration) error {
	return func(_ context.Context, d time.Duration) error { *waits = append(*waits, d); return nil }
}

func TestBulkClientExport(t *testing.T) {
	s := &server{
		inProgress: []func(w http.ResponseWriter){
			func(w http.ResponseWriter) { w.Header().Set("Retry-After", "2"); w.WriteHeader(202) },
			func(w http.ResponseWriter) { w.Header().Set("Retry-After", "1"); w.WriteHeader(429) },
			func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(202)
				fmt.Fprint(w, `{"progress":"50%"}`) // a JSON body is allowed
			},
			func(w http.ResponseWriter) { // transient: a node of the server's cluster fails over
				w.Header().Set("Content-Type", "application/fhir+json")
				w.Header().Set("Retry-After", "3")
				w.WriteHeader(503)
				fmt.Fprint(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}`)
			},
		},
		manifest: goodManifest,
		file:     `{"resourceType":"Patient","id":"a"}` + "\n" + `{"resourceType":"Patient","id":"b"}` + "\n",
	}
	base := s.start(t)
	var waits []time.Duration
	c := &Client{Sleep: noSleep(&waits)}
	status, err := c.Kickoff(t.Context(), base+"/$export")
	if err != nil {
		t.Fatal(err)
	}
	m, st, err := c.Await(t.Context(), status)
	if err != nil {
		t.Fatal(err)
	}
	if st.Polls != 5 || st.Throttled != 1 || st.Transient != 1 || !slices.Equal(waits, []time.Duration{2 * time.Second, time.Second, time.Second, 3 * time.Second}) {
		t.Errorf("stats %+v, waits %v; want 5 polls, 1 throttled, 1 transient, waits [2s 1s 1s 3s]", st, waits)
	}
	var out bytes.Buffer
	if n, err := c.Download(t.Context(), m.Output[0], &out); err != nil || n != 2 {
		t.Errorf("download: %d lines, %v", n, err)
	}
}

func TestBulkClientRefusesWhatStrictClientsRefuse(t *testing.T) {
	text := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(202)
		fmt.Fprint(w, "Accepted")
	}
	for name, s := range map[string]*server{
		"a 202 body that is not JSON":            {inProgress: []func(http.ResponseWriter){text}, manifest: goodManifest},
		"a manifest without requiresAccessToken": {manifest: strings.Replace(goodManifest, `"requiresAccessToken":false,`, "", 1)},
		"a manifest labelled text/plain":         {manifest: goodManifest, inProgress: nil},
	} {
		t.Run(name, func(t *testing.T) {
			base := s.start(t)
			if name == "a manifest labelled text/plain" {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "text/plain")
					fmt.Fprint(w, strings.ReplaceAll(goodManifest, "BASE", base))
				}))
				defer srv.Close()
				base = srv.URL
				if _, _, err := (&Client{}).Await(t.Context(), base+"/jobs/1"); err == nil {
					t.Error("accepted")
				}
				return
			}
			var waits []time.Duration
			if _, _, err := (&Client{Sleep: noSleep(&waits)}).Await(t.Context(), base+"/jobs/1"); err == nil {
				t.Error("accepted")
			}
		})
	}
	t.Run("a file whose lines differ from its count", func(t *testing.T) {
		s := &server{manifest: goodManifest, file: `{"resourceType":"Patient","id":"a"}` + "\n"}
		base := s.start(t)
		c := &Client{}
		m, _, err := c.Await(t.Context(), base+"/jobs/1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Download(t.Context(), m.Output[0], &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "the manifest says 2") {
			t.Errorf("download of 1 line counted 2: %v", err)
		}
	})
}

// filesServer serves NDJSON files by path: gzipped ones with
// Content-Encoding gzip, the others plain. hold, when set, runs before a
// file is served (the tests park requests there).
type filesServer struct {
	files map[string]string // path -> NDJSON
	gzip  map[string]bool   // path -> served gzip-encoded
	hold  func(r *http.Request)
	mu    sync.Mutex
	seen  map[string]http.Header // path -> the request's headers
}

func (s *filesServer) start(t *testing.T) string {
	t.Helper()
	s.seen = map[string]http.Header{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen[r.URL.Path] = r.Header.Clone()
		s.mu.Unlock()
		if s.hold != nil {
			s.hold(r)
		}
		body, ok := s.files[r.URL.Path]
		if !ok {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"no such file"}]}`)
			return
		}
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		if !s.gzip[r.URL.Path] {
			fmt.Fprint(w, body)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		fmt.Fprint(zw, body)
		zw.Close()
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// ndjson is n Patient lines with ids prefix0…
func ndjson(prefix string, n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"resourceType":"Patient","id":"%s%d"}`+"\n", prefix, i)
	}
	return b.String()
}

func count(n int) *int { return &n }

// countingTransport records the most requests in flight at once, each
// from its RoundTrip call until its body is closed.
type countingTransport struct{ now, most atomic.Int32 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	n := c.now.Add(1)
	for m := c.most.Load(); n > m && !c.most.CompareAndSwap(m, n); m = c.most.Load() {
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		c.now.Add(-1)
		return nil, err
	}
	resp.Body = &doneCloser{ReadCloser: resp.Body, done: func() { c.now.Add(-1) }}
	return resp, nil
}

// doneCloser calls done on its first Close.
type doneCloser struct {
	io.ReadCloser
	done func()
	once sync.Once
}

func (d *doneCloser) Close() error {
	d.once.Do(d.done)
	return d.ReadCloser.Close()
}

func TestBulkClientDownloadAllGzipAndPlain(t *testing.T) {
	const parallel = 3
	s := &filesServer{files: map[string]string{}, gzip: map[string]bool{}}
	var m Manifest
	for i := range 7 {
		path := fmt.Sprintf("/out/%d.ndjson", i)
		s.files[path] = ndjson(fmt.Sprintf("p%d-", i), 50+i)
		s.gzip[path] = i%2 == 1
		m.Output = append(m.Output, File{Type: "Patient", URL: path, Count: count(50 + i)})
	}
	s.files["/del/0.ndjson"] = `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/x"}}]}` + "\n"
	s.gzip["/del/0.ndjson"] = true
	s.files["/err/0.ndjson"] = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing"}]}` + "\n"
	m.Deleted = []File{{Type: "Bundle", URL: "/del/0.ndjson"}}
	m.Error = []File{{Type: "OperationOutcome", URL: "/err/0.ndjson"}}

	// The first `parallel` requests park until all of them have come, so
	// that many are in flight at once; the transport counts how many ever
	// are, from the call to the body's close.
	var came atomic.Int32
	full := make(chan struct{})
	s.hold = func(r *http.Request) {
		if came.Add(1) == parallel {
			close(full)
		}
		select {
		case <-full:
		case <-r.Context().Done():
		}
	}
	tr := &countingTransport{}
	base := s.start(t)
	for _, list := range [][]File{m.Output, m.Deleted, m.Error} {
		for i := range list {
			list[i].URL = base + list[i].URL
		}
	}

	for _, requires := range []bool{false, true} {
		t.Run(fmt.Sprintf("requiresAccessToken %v", requires), func(t *testing.T) {
			m.RequiresAccessToken = requires
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			c := &Client{HTTP: &http.Client{Transport: tr}, Token: func(context.Context) (string, error) { return "tok", nil }}
			var mu sync.Mutex
			got := map[string]*bytes.Buffer{}
			kinds := map[Kind]int{}
			fetched, err := c.DownloadAll(ctx, m, parallel, func(kind Kind, f File) (func([]byte) error, error) {
				var buf bytes.Buffer
				mu.Lock()
				got[strings.TrimPrefix(f.URL, base)] = &buf
				kinds[kind]++
				mu.Unlock()
				return WriteLines(&buf), nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(fetched) != 9 || fetched[0].Kind != KindOutput || fetched[0].Lines != 50 || fetched[7].Kind != KindDeleted || fetched[8].Kind != KindError {
				t.Errorf("fetched %+v; want 7 output files (the first of 50 lines), then deleted, then error", fetched)
			}
			if kinds[KindOutput] != 7 || kinds[KindDeleted] != 1 || kinds[KindError] != 1 {
				t.Errorf("opened %v", kinds)
			}
			for path, want := range s.files {
				if got[path] == nil || got[path].String() != want {
					t.Errorf("%s (gzip %v): got %q, want %q", path, s.gzip[path], got[path], want)
				}
				s.mu.Lock()
				h := s.seen[path]
				s.mu.Unlock()
				if h.Get("Accept-Encoding") != "gzip" {
					t.Errorf("%s: Accept-Encoding %q, want gzip", path, h.Get("Accept-Encoding"))
				}
				if auth := h.Get("Authorization"); (auth == "Bearer tok") != requires {
					t.Errorf("%s: Authorization %q with requiresAccessToken %v", path, auth, requires)
				}
			}
		})
	}
	if n := tr.most.Load(); n != parallel {
		t.Errorf("at most %d downloads in flight, want exactly %d", n, parallel)
	}
}

func TestBulkClientDownloadAllReturnsTheFirstError(t *testing.T) {
	good := ndjson("a", 3)
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	fmt.Fprint(zw, ndjson("z", 100))
	zw.Close()
	truncated := zipped.Bytes()[:zipped.Len()-10]

	for _, tc := range []struct {
		name string
		bad  http.HandlerFunc
		want string
	}{
		{"a missing file", http.NotFound, "HTTP 404"},
		{"a truncated gzip body", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/fhir+ndjson")
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(truncated)
		}, "unexpected EOF"},
		{"an encoding not asked for", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/fhir+ndjson")
			w.Header().Set("Content-Encoding", "br")
			fmt.Fprint(w, good)
		}, `Content-Encoding "br"`},
		{"a line that is not JSON", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/fhir+ndjson")
			fmt.Fprint(w, good+"oops\n")
		}, "line 4 is not a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The slow file answers only once its request is cancelled: the
			// error on the bad file, sent once the slow request is in
			// flight, must cancel it.
			slowCame, cancelled := make(chan struct{}), make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/slow":
					close(slowCame)
					select {
					case <-r.Context().Done():
						close(cancelled)
					case <-time.After(10 * time.Second):
					}
				case "/bad":
					select {
					case <-slowCame:
					case <-time.After(10 * time.Second):
					}
					tc.bad(w, r)
				}
			}))
			defer srv.Close()
			m := Manifest{Output: []File{{Type: "Patient", URL: srv.URL + "/slow"}, {Type: "Patient", URL: srv.URL + "/bad"}}}
			_, err := (&Client{}).DownloadAll(t.Context(), m, 2, func(Kind, File) (func([]byte) error, error) {
				return func([]byte) error { return nil }, nil
			})
			if err == nil || !strings.Contains(err.Error(), srv.URL+"/bad") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want one naming %s/bad and %q", err, srv.URL, tc.want)
			}
			select {
			case <-cancelled:
			case <-time.After(10 * time.Second):
				t.Error("the other download was not cancelled")
			}
		})
	}
}
