package api

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/streams"
)

// attachmentWorld is a store holding Binaries, a Group and export jobs,
// with an API in front of it.
type attachmentWorld struct {
	bus  *authBus
	base string
	t0   time.Time // the jobs' transactionTime
	seq  uint64
}

func (w *attachmentWorld) put(t *testing.T, typ, id string, at time.Time, body string) {
	t.Helper()
	w.seq++
	if err := w.bus.store.Insert(t.Context(), []chstore.Row{{Type: typ, ID: id, Seq: w.seq, LastUpdated: chstore.Micros(at), Body: []byte(body)}}); err != nil {
		t.Fatal(err)
	}
}

func (w *attachmentWorld) binary(t *testing.T, id, patient, contentType string, content []byte, at time.Time) {
	t.Helper()
	sc := ""
	if patient != "" {
		sc = fmt.Sprintf(`,"securityContext":{"reference":"Patient/%s"}`, patient)
	}
	w.put(t, "Binary", id, at, fmt.Sprintf(`{"resourceType":"Binary","id":%q,"contentType":%q%s,"data":%q}`,
		id, contentType, sc, base64.StdEncoding.EncodeToString(content)))
}

// everyBinary is what the jobs of job name in their output: every Binary
// of the world, and one that does not exist.
var everyBinary = []string{"b1", "b2", "b3", "nobody", "late", "big", "odd-type", "no-data", "not-base64", "unknown"}

// job records an export whose output names everyBinary, as one task.
func (w *attachmentWorld) job(t *testing.T, id, client, status, level, group string, patients ...string) string {
	t.Helper()
	return w.jobNaming(t, id, client, status, level, group, patients, everyBinary)
}

// jobNaming records an export with a task result per list of names, each
// with an attachment index naming those Binaries (none when empty).
func (w *attachmentWorld) jobNaming(t *testing.T, id, client, status, level, group string, patients []string, names ...[]string) string {
	t.Helper()
	job := streams.Job{
		ExportRequest: streams.ExportRequest{JobID: id, ClientID: client, Level: level, GroupID: group, Patients: patients,
			SubmittedAt: w.t0, BaseURL: w.base},
		Status: status, TransactionTime: w.t0, ExpiresAt: time.Now().Add(time.Hour), TasksTotal: len(names),
	}
	jobs := streamsJobs(t, w.bus)
	if err := jobs.Create(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	files, err := w.bus.js.ObjectStore(t.Context(), streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	if list, ok := plannedPatients(level, group, patients); ok {
		if err := streams.PutPatients(t.Context(), files, id, list); err != nil {
			t.Fatal(err)
		}
	}
	for i, ids := range names {
		task := fmt.Sprintf("%05d", i)
		r := streams.TaskResult{JobID: id, TaskID: task, Attempt: 1, Token: "t0k3n"}
		if len(ids) > 0 {
			r.AttachmentIndex = "attachments-" + task + "-a1-t0k3n.ids"
			sorted := slices.Sorted(slices.Values(ids))
			if _, err := files.PutString(t.Context(), streams.ObjectName(id, r.AttachmentIndex), strings.Join(sorted, "\n")+"\n"); err != nil {
				t.Fatal(err)
			}
		}
		if err := jobs.RecordTaskResult(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	return streams.AttachmentBase(w.base, id)
}

// plannedPatients is the patient list the planner stores for an export:
// Group g's members at transactionTime (p1, p2) narrowed to patients, or
// the patient parameter. A Group that did not exist then gets none.
func plannedPatients(level, group string, patients []string) ([]string, bool) {
	switch {
	case level == streams.LevelGroup && group == "g":
		members := []string{"p1", "p2"}
		if len(patients) > 0 {
			members = slices.DeleteFunc(members, func(p string) bool { return !slices.Contains(patients, p) })
		}
		return members, true
	case level == streams.LevelPatient && len(patients) > 0:
		return patients, true
	}
	return nil, false
}

func newAttachmentWorld(t *testing.T, authOn bool) *attachmentWorld {
	t.Helper()
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t, func(c *Config) { c.Auth = authOn })
	w := &attachmentWorld{bus: bus, base: base, t0: time.Now().Add(-time.Hour).UTC()}
	before, after := w.t0.Add(-time.Minute), w.t0.Add(time.Minute)
	w.binary(t, "b1", "p1", "application/pdf", []byte("%PDF-1.4 p1's report"), before)
	w.binary(t, "b1", "p1", "application/pdf", []byte("changed after the export"), after)
	w.binary(t, "b2", "p2", "text/plain", []byte("p2's note"), before)
	w.binary(t, "b3", "p3", "text/plain", []byte("p3's note"), before)
	w.binary(t, "nobody", "", "", []byte{0, 1, 2, 255}, before)
	w.binary(t, "late", "p1", "text/plain", []byte("created after the export"), after)
	w.binary(t, "big", "p1", "text/plain", bytes.Repeat([]byte("compressible "), 1000), before)
	w.binary(t, "odd-type", "", "text/html\r\nX-Injected: 1", []byte("x"), before)
	w.put(t, "Binary", "no-data", before, `{"resourceType":"Binary","id":"no-data","contentType":"image/png","securityContext":{"reference":"Patient/p1"}}`)
	w.put(t, "Binary", "not-base64", before, `{"resourceType":"Binary","id":"not-base64","contentType":"text/plain","data":"%%%"}`)
	w.put(t, "Group", "g", before, `{"resourceType":"Group","id":"g","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p1"}},{"entity":{"reference":"Patient/p2"}}]}`)
	w.put(t, "Group", "g", after, `{"resourceType":"Group","id":"g","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p3"}}]}`)
	return w
}

// get fetches an attachment URL with the extra headers.
func getAttachment(t *testing.T, method, u string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	return send(t, method, u, nil, headers...)
}

func TestAPIAttachmentDownloadsWithoutAuth(t *testing.T) {
	w := newAttachmentWorld(t, false)
	sys := w.job(t, "sys1", "", streams.JobComplete, streams.LevelSystem, "")

	t.Run("content as of transactionTime with its content type", func(t *testing.T) {
		resp, body := getAttachment(t, "GET", sys+"Binary/b1")
		if resp.StatusCode != http.StatusOK || string(body) != "%PDF-1.4 p1's report" || resp.Header.Get("Content-Type") != "application/pdf" {
			t.Errorf("%d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("X-Content-Type-Options %q", resp.Header.Get("X-Content-Type-Options"))
		}
		resp, body = getAttachment(t, "GET", sys+"Binary/nobody")
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, []byte{0, 1, 2, 255}) || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Errorf("binary without a content type: %d %q %v", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		resp, _ = getAttachment(t, "GET", sys+"Binary/odd-type")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/octet-stream" || resp.Header.Get("X-Injected") != "" {
			t.Errorf("malformed content type: %d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("gzip when accepted", func(t *testing.T) {
		resp, body := getAttachment(t, "GET", sys+"Binary/big", "Accept-Encoding", "gzip")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(plain, bytes.Repeat([]byte("compressible "), 1000)) {
			t.Errorf("decompressed %d bytes, %v", len(plain), err)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		resp, body := getAttachment(t, "HEAD", sys+"Binary/b2")
		if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Content-Type") != "text/plain" || resp.ContentLength != int64(len("p2's note")) {
			t.Errorf("%d %v %q", resp.StatusCode, resp.Header, body)
		}
	})
	t.Run("refusals are OperationOutcomes", func(t *testing.T) {
		running := w.job(t, "run1", "", streams.JobRunning, streams.LevelSystem, "")
		cancelled := w.job(t, "can1", "", streams.JobCancelled, streams.LevelSystem, "")
		for _, c := range []struct {
			url    string
			status int
			says   string
		}{
			{sys + "Binary/late", http.StatusNotFound, "did not exist"},
			{sys + "Binary/unknown", http.StatusNotFound, "did not exist"},
			{sys + "Binary/no-data", http.StatusNotFound, "no content"},
			{sys + "Binary/bad_id", http.StatusNotFound, "not a valid id"},
			{sys + "Binary/" + strings.Repeat("x", 65), http.StatusNotFound, "not a valid id"},
			{sys + "Binary/not-base64", http.StatusInternalServerError, "not base64"},
			{sys + "Patient/b1", http.StatusNotFound, "OperationOutcome"},
			{sys + "Binary/", http.StatusNotFound, "OperationOutcome"},
			{running + "Binary/b1", http.StatusNotFound, "not complete"},
			{cancelled + "Binary/b1", http.StatusNotFound, "cancelled"},
			{streams.AttachmentBase(w.base, "nosuchjob") + "Binary/b1", http.StatusNotFound, "does not exist"},
		} {
			resp, body := getAttachment(t, "GET", c.url)
			if resp.StatusCode != c.status || !strings.Contains(string(body), c.says) || !strings.Contains(string(body), `"OperationOutcome"`) {
				t.Errorf("%s: %d %s; want %d saying %q", c.url, resp.StatusCode, body, c.status, c.says)
			}
		}
	})
	t.Run("only the Binaries the export's output names", func(t *testing.T) {
		// Two tasks name b1 and b2; a third names nothing.
		named := w.jobNaming(t, "named1", "", streams.JobComplete, streams.LevelSystem, "", nil, []string{"b1"}, []string{"b2"}, nil)
		unnamed := w.jobNaming(t, "named2", "", streams.JobComplete, streams.LevelSystem, "", nil, nil)
		forged := w.jobNaming(t, "named3", "", streams.JobComplete, streams.LevelSystem, "", nil)
		// A task result naming an index that is not there (the export being
		// removed) and one naming an object outside the index names.
		jobs := streamsJobs(t, w.bus)
		gone := w.jobNaming(t, "named4", "", streams.JobComplete, streams.LevelSystem, "", nil, []string{"b1"})
		files, err := w.bus.js.ObjectStore(t.Context(), streams.ObjectFiles)
		if err != nil {
			t.Fatal(err)
		}
		if err := files.Delete(t.Context(), streams.ObjectName("named4", "attachments-00000-a1-t0k3n.ids")); err != nil {
			t.Fatal(err)
		}
		if _, err := files.PutString(t.Context(), streams.ObjectName("named3", "00000-a1.ndjson"), "b1\n"); err != nil {
			t.Fatal(err)
		}
		r := streams.TaskResult{JobID: "named3", TaskID: "00000", AttachmentIndex: "00000-a1.ndjson"}
		if err := jobs.RecordTaskResult(t.Context(), r); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			url    string
			status int
		}{
			{named + "Binary/b1", http.StatusOK},
			{named + "Binary/b2", http.StatusOK},
			{named + "Binary/b3", http.StatusNotFound},
			{named + "Binary/b1", http.StatusOK}, // from the cache
			{unnamed + "Binary/b1", http.StatusNotFound},
			{forged + "Binary/b1", http.StatusNotFound},
			{gone + "Binary/b1", http.StatusNotFound},
		} {
			resp, body := getAttachment(t, "GET", c.url)
			if resp.StatusCode != c.status {
				t.Errorf("%s: %d %s, want %d", c.url, resp.StatusCode, body, c.status)
			}
			if c.status == http.StatusNotFound && !strings.Contains(string(body), "OperationOutcome") {
				t.Errorf("%s: %s", c.url, body)
			}
		}
	})
	t.Run("patient level covers the export's patients' Binaries only", func(t *testing.T) {
		pat := w.job(t, "pat1", "", streams.JobComplete, streams.LevelPatient, "", "p1")
		all := w.job(t, "pat2", "", streams.JobComplete, streams.LevelPatient, "")
		for _, c := range []struct {
			url    string
			status int
		}{
			{pat + "Binary/b1", http.StatusOK},
			{pat + "Binary/b2", http.StatusNotFound},     // another patient's
			{pat + "Binary/nobody", http.StatusNotFound}, // nobody's
			{all + "Binary/b2", http.StatusOK},           // every patient's
			{all + "Binary/nobody", http.StatusNotFound},
		} {
			if resp, body := getAttachment(t, "GET", c.url); resp.StatusCode != c.status {
				t.Errorf("%s: %d %s, want %d", c.url, resp.StatusCode, body, c.status)
			}
		}
	})
	t.Run("group level follows the members at transactionTime", func(t *testing.T) {
		grp := w.job(t, "grp1", "", streams.JobComplete, streams.LevelGroup, "g")
		narrowed := w.job(t, "grp2", "", streams.JobComplete, streams.LevelGroup, "g", "p2")
		gone := w.job(t, "grp3", "", streams.JobComplete, streams.LevelGroup, "nogroup")
		for _, c := range []struct {
			url    string
			status int
		}{
			{grp + "Binary/b1", http.StatusOK},
			{grp + "Binary/b2", http.StatusOK},
			{grp + "Binary/b3", http.StatusNotFound}, // joined after transactionTime
			{narrowed + "Binary/b1", http.StatusNotFound},
			{narrowed + "Binary/b2", http.StatusOK},
			{gone + "Binary/b1", http.StatusNotFound},
		} {
			if resp, body := getAttachment(t, "GET", c.url); resp.StatusCode != c.status {
				t.Errorf("%s: %d %s, want %d", c.url, resp.StatusCode, body, c.status)
			}
		}
	})
}

func TestAuthAttachmentDownloadsFollowTheExportsOwner(t *testing.T) {
	w := newAttachmentWorld(t, true)
	owner := newTestClient(t, "owner", "ES384", 0)
	stranger := newTestClient(t, "stranger", "ES384", 0)
	register(t, w.base, auth.Client{ID: owner.id, JWKS: jwks(owner.jwk(t, owner.kid)), Scope: "system/*.rs"})
	register(t, w.base, auth.Client{ID: stranger.id, JWKS: jwks(stranger.jwk(t, stranger.kid)), Scope: "system/*.rs"})
	u := w.job(t, "owned", owner.id, streams.JobComplete, streams.LevelSystem, "") + "Binary/b1"

	resp, body := getAttachment(t, "GET", u)
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("no token: %d %s", resp.StatusCode, body)
	}
	resp, body = getAttachment(t, "GET", u, "Authorization", "Bearer "+stranger.token(t, w.base, "system/*.rs").AccessToken)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("another client: %d %s", resp.StatusCode, body)
	}
	resp, body = getAttachment(t, "GET", u, "Authorization", "Bearer "+owner.token(t, w.base, "system/*.read").AccessToken)
	if resp.StatusCode != http.StatusOK || string(body) != "%PDF-1.4 p1's report" {
		t.Errorf("the owner: %d %s", resp.StatusCode, body)
	}
	resp, body = getAttachment(t, "GET", u, "Authorization", "Bearer "+testAdminToken)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("the operator credential: %d %s", resp.StatusCode, body)
	}
}
