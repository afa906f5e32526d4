package bulkclient

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
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
	if st.Polls != 4 || st.Throttled != 1 || len(waits) != 3 || waits[0] != 2*time.Second || waits[1] != time.Second || waits[2] != time.Second {
		t.Errorf("stats %+v, waits %v; want 4 polls, 1 throttled, waits [2s 1s 1s]", st, waits)
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
