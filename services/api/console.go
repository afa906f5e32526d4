package api

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"

	"github.com/flatfhir/flatfhir/streams"
)

// The console is a small read-only page for operators at /console: the
// exports (state, level, progress, resources and their rate, files,
// errors, owner), ingest (accepted, applied, lag, watermark) and the
// writers' queue, updated live by server-sent events from
// /console/events (a snapshot every ConsoleEvery). With authorization on
// it needs the operator credential, as /admin does, by Bearer or by Basic
// (any user name, FLATFHIR_ADMIN_TOKEN as password, which a browser asks
// for); with authorization off it is open, like the rest of the API.

//go:embed console.html
var consolePage string

var consoleTemplate = template.Must(template.New("console").Parse(consolePage))

// consoleExports bounds the exports a snapshot lists, newest first.
const consoleExports = 50

// ConsoleSnapshot is what the console shows at one moment.
type ConsoleSnapshot struct {
	Time    time.Time       `json:"time"`
	Exports []ConsoleExport `json:"exports"`
	Ingest  ConsoleIngest   `json:"ingest"`
	Writers ConsoleWriters  `json:"writers"`
}

// ConsoleExport is one export as the console lists it.
type ConsoleExport struct {
	ID         string    `json:"id"`
	Level      string    `json:"level"`
	Group      string    `json:"group,omitempty"`
	Status     string    `json:"status"`
	Progress   int       `json:"progress"` // percent of tasks done
	TasksDone  int       `json:"tasksDone"`
	TasksTotal int       `json:"tasksTotal"`
	Resources  int       `json:"resources"` // written so far
	Rate       float64   `json:"resourcesPerSecond"`
	Files      int       `json:"files"`
	Error      string    `json:"error,omitempty"`
	Client     string    `json:"client,omitempty"`
	Submitted  time.Time `json:"submitted"`
	Request    string    `json:"request"`
}

// ConsoleIngest is the state of ingest: changes accepted (the stream's
// last sequence), applied (the watermark), the lag between them and the
// watermark's age.
type ConsoleIngest struct {
	Accepted     uint64    `json:"accepted"`
	Applied      uint64    `json:"applied"`
	Lag          uint64    `json:"lag"`
	Watermark    time.Time `json:"watermark,omitzero"`
	WatermarkAge float64   `json:"watermarkAgeSeconds"`
	AcceptedRate float64   `json:"acceptedPerSecond"`
	AppliedRate  float64   `json:"appliedPerSecond"`
}

// ConsoleWriters is the writers' queue: tasks waiting, tasks being
// written, and the writers' pull requests waiting for work (idle slots).
type ConsoleWriters struct {
	Waiting    uint64 `json:"tasksWaiting"`
	InProgress int    `json:"tasksInProgress"`
	IdleSlots  int    `json:"idleSlots"`
}

// operator guards the console: the operator credential when auth is on.
func (s *Server) operator(c *fiber.Ctx) error {
	if !s.cfg.Auth {
		return c.Next()
	}
	if s.cfg.AdminToken == "" {
		return forbidden("the console is disabled while authorization is on and FLATFHIR_ADMIN_TOKEN is unset")
	}
	tok, ok := bearer(c)
	if !ok {
		tok, ok = basicPassword(c)
	}
	if !ok || !s.isAdminToken(tok) {
		c.Set(fiber.HeaderWWWAuthenticate, `Basic realm="flatfhir console", charset="UTF-8"`)
		return unauthorized("the console needs the operator credential (FLATFHIR_ADMIN_TOKEN) as a Bearer token or as the password of Basic authentication")
	}
	return c.Next()
}

// basicPassword is the password of a Basic Authorization header.
func basicPassword(c *fiber.Ctx) (string, bool) {
	scheme, enc, ok := strings.Cut(strings.TrimSpace(c.Get(fiber.HeaderAuthorization)), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", false
	}
	_, pass, ok := strings.Cut(string(raw), ":")
	return pass, ok && pass != ""
}

func (s *Server) consoleHTML(c *fiber.Ctx) error {
	var b strings.Builder
	if err := consoleTemplate.Execute(&b, map[string]any{"Every": s.cfg.ConsoleEvery.Milliseconds()}); err != nil {
		return err
	}
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'")
	return c.SendString(b.String())
}

// consoleState answers one snapshot as JSON.
func (s *Server) consoleState(c *fiber.Ctx) error {
	snap, err := s.snapshot(c.UserContext(), nil)
	if err != nil {
		return transient("the console's state could not be read; retry: %v", err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Send(encodeJSON(snap))
}

// consoleEvents streams a snapshot every ConsoleEvery as server-sent
// events, until the browser goes away or the server stops.
func (s *Server) consoleEvents(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no")
	ctx, cancel := context.WithCancel(context.WithoutCancel(c.UserContext()))
	done := s.done
	every := s.cfg.ConsoleEvery
	c.Context().SetBodyStreamWriter(fasthttp.StreamWriter(func(w *bufio.Writer) {
		defer cancel()
		var prev *ConsoleSnapshot
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			snap, err := s.snapshot(ctx, prev)
			if err == nil {
				fmt.Fprintf(w, "event: snapshot\ndata: %s\n\n", encodeJSON(snap))
				prev = &snap
			} else {
				fmt.Fprintf(w, "event: problem\ndata: %s\n\n", encodeJSON(map[string]string{"error": err.Error()}))
			}
			if w.Flush() != nil {
				return // the browser went away
			}
			select {
			case <-t.C:
			case <-done:
				return
			}
		}
	}))
	return nil
}

// snapshot reads the console's state; prev, the snapshot before, gives
// the rates.
func (s *Server) snapshot(ctx context.Context, prev *ConsoleSnapshot) (ConsoleSnapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	now := s.deps.Now().UTC()
	snap := ConsoleSnapshot{Time: now, Exports: []ConsoleExport{}}
	ids, err := s.jobs.IDs(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return snap, err
	}
	var jobs []streams.Job
	for _, id := range ids {
		if job, _, err := s.jobs.Get(ctx, id); err == nil {
			jobs = append(jobs, job)
		}
	}
	slices.SortFunc(jobs, func(a, b streams.Job) int { return b.SubmittedAt.Compare(a.SubmittedAt) })
	jobs = jobs[:min(len(jobs), consoleExports)]
	for _, j := range jobs {
		e := ConsoleExport{ID: j.JobID, Level: j.Level, Group: j.GroupID, Status: j.Status, TasksDone: j.TasksDone, TasksTotal: j.TasksTotal,
			Error: j.Error, Client: j.ClientID, Submitted: j.SubmittedAt, Request: j.RequestURL}
		if j.TasksTotal > 0 {
			e.Progress = j.TasksDone * 100 / j.TasksTotal
		}
		if j.Status == streams.JobComplete {
			e.Progress = 100
		}
		if j.Status == streams.JobRunning || j.Status == streams.JobComplete {
			e.Resources, e.Files = s.exportCounts(ctx, j)
			end := now
			if !j.CompletedAt.IsZero() {
				end = j.CompletedAt
			}
			if secs := end.Sub(j.SubmittedAt).Seconds(); secs > 0 {
				e.Rate = float64(e.Resources) / secs
			}
		}
		snap.Exports = append(snap.Exports, e)
	}
	s.consoleCounts.Range(func(id, _ any) bool {
		if !slices.ContainsFunc(jobs, func(j streams.Job) bool { return j.JobID == id }) {
			s.consoleCounts.Delete(id) // gone from the list
		}
		return true
	})
	if last, err := streams.LastChangeSeq(ctx, s.deps.JS); err == nil {
		snap.Ingest.Accepted = last
	}
	if wm, _, err := streams.LoadWatermark(ctx, s.deps.JS); err == nil {
		snap.Ingest.Applied, snap.Ingest.Watermark = wm.Seq, wm.Stamp
		if !wm.Stamp.IsZero() && snap.Ingest.Accepted > wm.Seq {
			snap.Ingest.WatermarkAge = now.Sub(wm.Stamp).Seconds()
		}
	}
	if snap.Ingest.Accepted > snap.Ingest.Applied {
		snap.Ingest.Lag = snap.Ingest.Accepted - snap.Ingest.Applied
	}
	if prev != nil {
		if secs := now.Sub(prev.Time).Seconds(); secs > 0 {
			snap.Ingest.AcceptedRate = float64(snap.Ingest.Accepted-min(prev.Ingest.Accepted, snap.Ingest.Accepted)) / secs
			snap.Ingest.AppliedRate = float64(snap.Ingest.Applied-min(prev.Ingest.Applied, snap.Ingest.Applied)) / secs
		}
	}
	if cons, err := s.deps.JS.Consumer(ctx, streams.StreamExportTasks, streams.ConsumerWriters); err == nil {
		if info, err := cons.Info(ctx); err == nil {
			snap.Writers = ConsoleWriters{Waiting: info.NumPending, InProgress: info.NumAckPending, IdleSlots: info.NumWaiting}
		}
	}
	return snap, nil
}

// exportCounts is the resources and files an export's tasks have written so
// far, from their results. A complete export's do not change: they are read
// once and kept (consoleCounts) while the export is listed.
func (s *Server) exportCounts(ctx context.Context, j streams.Job) (resources, files int) {
	if c, ok := s.consoleCounts.Load(j.JobID); ok {
		n := c.([2]int)
		return n[0], n[1]
	}
	tasks, err := s.jobs.TaskIDs(ctx, j.JobID)
	if err != nil {
		return 0, 0
	}
	results, err := s.jobs.TaskResults(ctx, j.JobID, tasks)
	if err != nil {
		return 0, 0
	}
	for _, r := range results {
		files += len(r.Files)
		for _, f := range r.Files {
			resources += f.Count
		}
	}
	if j.Status == streams.JobComplete {
		s.consoleCounts.Store(j.JobID, [2]int{resources, files})
	}
	return resources, files
}
