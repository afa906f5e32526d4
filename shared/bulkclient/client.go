// Package bulkclient is a strict FHIR Bulk Data Access v2 client: kick-off,
// status polling that honours Retry-After, manifest, downloads (one file,
// or every file of a manifest in parallel, gzip-encoded) and release.
//
// It parses as strictly as the clients payers run (the SMART
// bulk-data-client, Inferno): every response body must be empty or JSON of
// the media type the step expects, an in-progress 202 body that is not
// JSON is an error, a manifest lacking a required field is an error, and a
// file whose line count differs from its manifest count is an error. It
// works against any Bulk Data v2 server; flatfhir's own tests and
// benchmarks drive the engine through it, as a client would.
package bulkclient

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Client talks to one Bulk Data server.
type Client struct {
	// HTTP sends the requests; nil is a client with a 5-minute timeout.
	HTTP *http.Client
	// Token, when set, supplies the bearer token of each request.
	Token func(ctx context.Context) (string, error)
	// DefaultRetryAfter is the wait between polls when the server sends no
	// Retry-After; 0 is one second.
	DefaultRetryAfter time.Duration
	// MaxRetryAfter caps a server's Retry-After; 0 is one minute.
	MaxRetryAfter time.Duration
	// OnProgress, when set, sees every in-progress answer.
	OnProgress func(Progress)
	// Sleep waits between polls; nil waits on a timer (tests inject one).
	Sleep func(ctx context.Context, d time.Duration) error
}

// Progress is one in-progress status answer.
type Progress struct {
	// XProgress is the server's X-Progress header.
	XProgress string
	// RetryAfter is how long the client waits before the next poll.
	RetryAfter time.Duration
	// Throttled is true for a 429.
	Throttled bool
}

// Manifest is the complete-status body (Bulk Data v2 §5.3.4).
type Manifest struct {
	TransactionTime     string `json:"transactionTime"`
	Request             string `json:"request"`
	RequiresAccessToken bool   `json:"requiresAccessToken"`
	Output              []File `json:"output"`
	Deleted             []File `json:"deleted,omitempty"`
	Error               []File `json:"error"`
}

// File is one entry of a manifest's output, deleted or error array.
type File struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count *int   `json:"count,omitempty"`
}

// Stats describe one export as the client saw it.
type Stats struct {
	Polls     int // status requests, the last one included
	Throttled int // 429 answers among them
	// Transient counts 503 answers waited out: the server could not
	// answer for a while (a node of its cluster failing over).
	Transient int
	// Waited is the time spent waiting between polls, as told.
	Waited time.Duration
}

// Error is a server's refusal: its status and what its body said.
type Error struct {
	Step    string
	Status  int
	Message string // the OperationOutcome's diagnostics or the body
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: HTTP %d: %s", e.Step, e.Status, e.Message)
}

// Kickoff starts an export with GET url (an $export URL with its query)
// and returns the status URL from Content-Location.
func (c *Client) Kickoff(ctx context.Context, url string) (string, error) {
	return c.kickoff(ctx, http.MethodGet, url, nil)
}

// KickoffPost starts an export with POST url and a FHIR Parameters body.
func (c *Client) KickoffPost(ctx context.Context, url string, parameters any) (string, error) {
	body, err := json.Marshal(parameters)
	if err != nil {
		return "", fmt.Errorf("encode kick-off parameters: %w", err)
	}
	return c.kickoff(ctx, http.MethodPost, url, body)
}

func (c *Client) kickoff(ctx context.Context, method, url string, body []byte) (string, error) {
	h := http.Header{"Accept": {"application/fhir+json"}, "Prefer": {"respond-async"}}
	if body != nil {
		h.Set("Content-Type", "application/fhir+json")
	}
	resp, b, err := c.do(ctx, method, url, body, h)
	// A kick-off refused for now (429, or 503 while the server fails
	// over) is sent again after Retry-After, up to a bound.
	for retries := 0; err == nil && retries < maxTransient &&
		(resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable); retries++ {
		if err = c.sleep(ctx, c.retryAfter(resp.Header.Get("Retry-After"))); err == nil {
			resp, b, err = c.do(ctx, method, url, body, h)
		}
	}
	if err != nil {
		return "", fmt.Errorf("kick-off: %w", err)
	}
	if err := strictJSON("kick-off", resp, b, "application/fhir+json"); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", refusal("kick-off", resp, b)
	}
	loc := resp.Header.Get("Content-Location")
	if !strings.HasPrefix(loc, "http://") && !strings.HasPrefix(loc, "https://") {
		return "", fmt.Errorf("kick-off: Content-Location %q is not an absolute URL", loc)
	}
	return loc, nil
}

// maxTransient bounds the 503 (and, at kick-off, 429) answers a client
// waits out in a row before it gives up.
const maxTransient = 60

// Await polls the status URL until the export completes or fails, waiting
// between polls as Retry-After says, and returns the manifest.
func (c *Client) Await(ctx context.Context, statusURL string) (Manifest, Stats, error) {
	var st Stats
	for {
		resp, b, err := c.do(ctx, http.MethodGet, statusURL, nil, http.Header{"Accept": {"application/json"}})
		if err != nil {
			return Manifest{}, st, fmt.Errorf("status: %w", err)
		}
		st.Polls++
		switch resp.StatusCode {
		case http.StatusAccepted, http.StatusTooManyRequests:
			// Like the SMART client: any body of a 202 is parsed as JSON.
			if err := strictJSON("status", resp, b, ""); err != nil {
				return Manifest{}, st, err
			}
			wait := c.retryAfter(resp.Header.Get("Retry-After"))
			p := Progress{XProgress: resp.Header.Get("X-Progress"), RetryAfter: wait, Throttled: resp.StatusCode == http.StatusTooManyRequests}
			if p.Throttled {
				st.Throttled++
			}
			if c.OnProgress != nil {
				c.OnProgress(p)
			}
			if err := c.sleep(ctx, wait); err != nil {
				return Manifest{}, st, err
			}
			st.Waited += wait
		case http.StatusOK:
			m, err := parseManifest(resp, b)
			return m, st, err
		case http.StatusServiceUnavailable:
			// Transient (Bulk Data v2 §5.3.3): poll again, up to a bound.
			if err := strictJSON("status", resp, b, ""); err != nil {
				return Manifest{}, st, err
			}
			if st.Transient >= maxTransient {
				return Manifest{}, st, refusal("status", resp, b)
			}
			st.Transient++
			wait := c.retryAfter(resp.Header.Get("Retry-After"))
			if err := c.sleep(ctx, wait); err != nil {
				return Manifest{}, st, err
			}
			st.Waited += wait
		default:
			if err := strictJSON("status", resp, b, ""); err != nil {
				return Manifest{}, st, err
			}
			return Manifest{}, st, refusal("status", resp, b)
		}
	}
}

// parseManifest checks a complete-status answer as strict clients do.
func parseManifest(resp *http.Response, b []byte) (Manifest, error) {
	if err := strictJSON("manifest", resp, b, "application/json"); err != nil {
		return Manifest{}, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return Manifest{}, fmt.Errorf("manifest: not a JSON object: %w", err)
	}
	for _, k := range []string{"transactionTime", "request", "requiresAccessToken", "output", "error"} {
		if _, ok := fields[k]; !ok {
			return Manifest{}, fmt.Errorf("manifest: no %q", k)
		}
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %w", err)
	}
	if _, err := time.Parse(time.RFC3339Nano, m.TransactionTime); err != nil {
		return Manifest{}, fmt.Errorf("manifest: transactionTime %q is not an instant", m.TransactionTime)
	}
	for _, list := range [][]File{m.Output, m.Deleted, m.Error} {
		for _, f := range list {
			if f.Type == "" || (!strings.HasPrefix(f.URL, "http://") && !strings.HasPrefix(f.URL, "https://")) {
				return Manifest{}, fmt.Errorf("manifest: entry %+v lacks a type or an absolute url", f)
			}
		}
	}
	return m, nil
}

// Download streams one file of a manifest into w, checking its media type
// and that every line is a JSON object; it returns the lines written. When
// the manifest gives a count, a different number of lines is an error.
func (c *Client) Download(ctx context.Context, f File, w io.Writer) (int, error) {
	return c.DownloadLines(ctx, f, WriteLines(w))
}

// DownloadLines streams one file of a manifest, handing each line (a JSON
// object; the slice is reused) to fn, checked as Download checks it. It
// asks for gzip and decodes it. It sends the bearer token whenever Token is
// set; DownloadAll instead follows the manifest's requiresAccessToken.
func (c *Client) DownloadLines(ctx context.Context, f File, fn func(line []byte) error) (int, error) {
	return c.lines(ctx, f, c.Token != nil, fn)
}

// WriteLines returns a line function for DownloadLines and DownloadAll that
// writes each line to w followed by a newline.
func WriteLines(w io.Writer) func(line []byte) error {
	var buf []byte
	return func(line []byte) error {
		buf = append(append(buf[:0], line...), '\n')
		_, err := w.Write(buf)
		return err
	}
}

// Kind names the manifest array a file is listed in.
type Kind string

// The three arrays of a manifest.
const (
	KindOutput  Kind = "output"
	KindDeleted Kind = "deleted"
	KindError   Kind = "error"
)

// Fetched is one file DownloadAll downloaded: the array it is listed in,
// its entry, and the lines it held.
type Fetched struct {
	Kind  Kind
	File  File
	Lines int
}

// DownloadAll downloads every file of m (output, deleted, then error), at
// most parallel at a time (below 1: one at a time). open is called once per
// file, on the goroutine that downloads it, and returns the function that
// receives that file's lines, checked as DownloadLines checks them; a nil
// function skips the file. The lines of one file arrive in order on one
// goroutine; different files' lines arrive concurrently.
//
// Each request asks for gzip and a gzip Content-Encoding is decoded. The
// bearer token (Token) is sent only when m.RequiresAccessToken is true: a
// file server that controls access otherwise (signed URLs) must not see it.
// The first error cancels the other downloads and is returned. The files
// downloaded completely are returned, in manifest order.
func (c *Client) DownloadAll(ctx context.Context, m Manifest, parallel int, open func(kind Kind, f File) (func(line []byte) error, error)) ([]Fetched, error) {
	var todo []Fetched
	for _, list := range []struct {
		kind  Kind
		files []File
	}{{KindOutput, m.Output}, {KindDeleted, m.Deleted}, {KindError, m.Error}} {
		for _, f := range list.files {
			todo = append(todo, Fetched{Kind: list.kind, File: f})
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next  atomic.Int64
		done  = make([]bool, len(todo))
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range max(1, min(parallel, len(todo))) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(todo) {
					return
				}
				e := &todo[i]
				fn, err := open(e.Kind, e.File)
				if err != nil {
					err = fmt.Errorf("download %s file %s: %w", e.Kind, e.File.URL, err)
				} else if fn != nil {
					e.Lines, err = c.lines(ctx, e.File, m.RequiresAccessToken, fn)
					done[i] = err == nil
				}
				if err != nil {
					once.Do(func() { first = err; cancel(err) })
					return
				}
			}
		})
	}
	wg.Wait()
	var got []Fetched
	for i, e := range todo {
		if done[i] {
			got = append(got, e)
		}
	}
	if first == nil && ctx.Err() != nil {
		first = context.Cause(ctx) // the caller's context ended
	}
	return got, first
}

// lines fetches one file and hands its lines to fn; token says whether
// the bearer token goes with the request.
func (c *Client) lines(ctx context.Context, f File, token bool, fn func(line []byte) error) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", f.URL, err)
	}
	req.Header.Set("Accept", "application/fhir+ndjson")
	// Set explicitly, Accept-Encoding makes the transport leave the body
	// as sent, whatever its DisableCompression: decoded undoes it.
	req.Header.Set("Accept-Encoding", "gzip")
	if token {
		if err := c.authorize(ctx, req); err != nil {
			return 0, err
		}
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", f.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return 0, refusal("download "+f.URL, resp, b)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/fhir+ndjson" && mt != "application/ndjson" {
		return 0, fmt.Errorf("download %s: Content-Type %q, want application/fhir+ndjson", f.URL, resp.Header.Get("Content-Type"))
	}
	body, err := decoded(resp)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", f.URL, err)
	}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 1<<20), 256<<20)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if line[0] != '{' || !json.Valid(line) {
			return n, fmt.Errorf("download %s: line %d is not a JSON object", f.URL, n+1)
		}
		n++
		if err := fn(line); err != nil {
			return n, fmt.Errorf("download %s: line %d: %w", f.URL, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("download %s: %w", f.URL, err)
	}
	if f.Count != nil && *f.Count != n {
		return n, fmt.Errorf("download %s: %d lines, the manifest says %d", f.URL, n, *f.Count)
	}
	return n, nil
}

// decoded returns the body of resp with its Content-Encoding undone. A
// download asks for gzip only, so identity and gzip (x-gzip), in any
// number, are all it accepts. A gzip body is checked to its end (CRC and
// length): a truncated file is an error, not fewer lines.
func decoded(resp *http.Response) (io.Reader, error) {
	var body io.Reader = resp.Body
	codings := strings.Split(resp.Header.Get("Content-Encoding"), ",")
	// Codings are listed in the order applied: undo the last first.
	for i := len(codings) - 1; i >= 0; i-- {
		switch coding := strings.ToLower(strings.TrimSpace(codings[i])); coding {
		case "", "identity":
		case "gzip", "x-gzip":
			zr, err := gzip.NewReader(body)
			if errors.Is(err, io.EOF) {
				return http.NoBody, nil // an empty body, labelled gzip
			}
			if err != nil {
				return nil, fmt.Errorf("Content-Encoding gzip: %w", err)
			}
			body = zr
		default:
			return nil, fmt.Errorf("Content-Encoding %q, asked for gzip only", resp.Header.Get("Content-Encoding"))
		}
	}
	return body, nil
}

// Delete releases (or cancels) an export: DELETE on its status URL.
func (c *Client) Delete(ctx context.Context, statusURL string) error {
	resp, b, err := c.do(ctx, http.MethodDelete, statusURL, nil, http.Header{"Accept": {"application/fhir+json"}})
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if err := strictJSON("delete", resp, b, ""); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusAccepted {
		return refusal("delete", resp, b)
	}
	return nil
}

// retryAfter reads Retry-After: delay seconds or an HTTP date, capped.
func (c *Client) retryAfter(h string) time.Duration {
	def, most := c.DefaultRetryAfter, c.MaxRetryAfter
	if def <= 0 {
		def = time.Second
	}
	if most <= 0 {
		most = time.Minute
	}
	d := def
	if secs, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && secs >= 0 {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(h); err == nil {
		d = time.Until(t)
	}
	return max(0, min(d, most))
}

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if c.Sleep != nil {
		return c.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTP
}

var defaultHTTP = &http.Client{Timeout: 5 * time.Minute}

func (c *Client) request(ctx context.Context, method, url string, body []byte, h http.Header) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return nil, err
	}
	req.Header = h
	if err := c.authorize(ctx, req); err != nil {
		return nil, err
	}
	return req, nil
}

// authorize sets the bearer token from Token, when there is one.
func (c *Client) authorize(ctx context.Context, req *http.Request) error {
	if c.Token == nil {
		return nil
	}
	tok, err := c.Token(ctx)
	if err != nil {
		return fmt.Errorf("access token: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return nil
}

// do sends a request and reads the whole answer (small JSON bodies only).
func (c *Client) do(ctx context.Context, method, url string, body []byte, h http.Header) (*http.Response, []byte, error) {
	req, err := c.request(ctx, method, url, body, h)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, err
	}
	return resp, b, nil
}

// strictJSON accepts an empty body, or a body that parses as JSON and is
// labelled JSON (want, when set, is the exact media type required).
func strictJSON(step string, resp *http.Response, b []byte, want string) error {
	if len(b) == 0 {
		if want != "" && resp.StatusCode == http.StatusOK {
			return fmt.Errorf("%s: HTTP 200 with an empty body", step)
		}
		return nil
	}
	if !json.Valid(b) {
		return fmt.Errorf("%s: HTTP %d body is not JSON: %.80q", step, resp.StatusCode, b)
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && mt != "application/fhir+json") || (want != "" && mt != want) {
		return fmt.Errorf("%s: HTTP %d JSON body labelled %q", step, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return nil
}

// refusal turns an error answer into an *Error, with the
// OperationOutcome's diagnostics when there is one.
func refusal(step string, resp *http.Response, b []byte) error {
	msg := strings.TrimSpace(string(b))
	var oo struct {
		ResourceType string
		Issue        []struct{ Diagnostics string }
	}
	if json.Unmarshal(b, &oo) == nil && oo.ResourceType == "OperationOutcome" && len(oo.Issue) > 0 {
		msg = oo.Issue[0].Diagnostics
	}
	return &Error{Step: step, Status: resp.StatusCode, Message: msg}
}

// IsStatus reports whether err is a server refusal with that status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}
