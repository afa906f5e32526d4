package flatfhir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
)

// exportOptions are the flags of flatfhir export.
type exportOptions struct {
	base, group, out, since, elements, client, keyFile, kid, scope string
	patientLevel, sinceLast, post, plain                           bool
	types, typeFilters                                             multiFlag
	parallel                                                       int
}

// multiFlag is a flag given once or more, or as a comma-separated list.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error {
	*m = append(*m, v)
	return nil
}

// exportState is what flatfhir export keeps in its directory: the export
// under way (so that a run after an interruption continues it), and the
// transactionTime of the last complete export per server and query (for
// --since-last).
type exportState struct {
	Current *currentExport    `json:"current,omitempty"`
	Since   map[string]string `json:"since,omitempty"`
}

// currentExport is one export the command kicked off.
type currentExport struct {
	Query    string               `json:"query"` // the server and query, without _since
	Kickoff  string               `json:"kickoff"`
	Status   string               `json:"status"`
	Dir      string               `json:"dir"` // its files, under the output directory
	Manifest *bulkclient.Manifest `json:"manifest,omitempty"`
}

const exportStateFile = "flatfhir-export.json"

// exportCommand is flatfhir export: a Bulk Data v2 client for any server.
func exportCommand(ctx context.Context, args []string, out io.Writer) error {
	var o exportOptions
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.StringVar(&o.base, "url", "", "the server's FHIR base URL (required)")
	fs.StringVar(&o.group, "group", "", "export this Group's members (Group/ID/$export)")
	fs.BoolVar(&o.patientLevel, "patient-level", false, "export every patient's compartment (Patient/$export)")
	fs.Var(&o.types, "type", "resource types to export (repeat, or comma-separated; default: all)")
	fs.StringVar(&o.since, "since", "", "only resources changed after this FHIR instant")
	fs.BoolVar(&o.sinceLast, "since-last", false, "only resources changed since the last complete export of this query into --out")
	fs.Var(&o.typeFilters, "type-filter", "a _typeFilter query (repeat for more)")
	fs.StringVar(&o.elements, "elements", "", "_elements: only these elements (comma-separated)")
	fs.StringVar(&o.out, "out", "export", "the directory for the files and the state of the exports")
	fs.StringVar(&o.client, "client", "", "SMART Backend Services client_id (with --key)")
	fs.StringVar(&o.keyFile, "key", "", "the client's private key, PEM (ES384 or RS384)")
	fs.StringVar(&o.kid, "kid", "", "key id (default: the key's RFC 7638 thumbprint)")
	fs.StringVar(&o.scope, "scope", "system/*.rs", "scopes to request")
	fs.BoolVar(&o.post, "post", false, "kick off with POST and a Parameters body instead of GET")
	fs.IntVar(&o.parallel, "parallel", 4, "files downloaded at once")
	fs.BoolVar(&o.plain, "plain", false, "plain progress lines even on a terminal")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.base == "" || fs.NArg() > 0 || o.group != "" && o.patientLevel || o.since != "" && o.sinceLast || (o.client == "") != (o.keyFile == "") {
		return fmt.Errorf("%w: export needs --url; --group and --patient-level, and --since and --since-last, exclude each other; --client goes with --key", errUsage)
	}
	o.base = strings.TrimRight(o.base, "/")
	c := &bulkclient.Client{}
	if o.client != "" {
		key, alg, err := bulkclient.ReadPrivateKey(o.keyFile)
		if err != nil {
			return err
		}
		bs := &bulkclient.BackendServices{BaseURL: o.base, ClientID: o.client, Key: key, KeyID: o.kid, Alg: alg, Scope: o.scope}
		c.Token = bs.Token
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	st, err := loadExportState(o.out)
	if err != nil {
		return err
	}
	query := o.query()
	ui := newExportUI(out, o.plain)
	cur := st.Current
	if cur != nil && cur.Query != query {
		return fmt.Errorf("%s holds an unfinished export of another query (%s): finish it with the same flags, or use another --out", o.out, cur.Query)
	}
	if cur == nil {
		since := o.since
		if o.sinceLast {
			since = st.Since[query]
			if since == "" {
				ui.line("no earlier complete export of this query in %s: exporting everything", o.out)
			}
		}
		kick := o.kickoffURL(since)
		var status string
		if o.post {
			status, err = c.KickoffPost(ctx, o.kickoffURL(""), o.parameters(since))
		} else {
			status, err = c.Kickoff(ctx, kick)
		}
		if err != nil {
			return err
		}
		sum := sha256.Sum256([]byte(status))
		cur = &currentExport{Query: query, Kickoff: kick, Status: status,
			Dir: time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(sum[:4])}
		st.Current = cur
		if err := saveExportState(o.out, st); err != nil {
			return err
		}
		ui.line("kicked off %s\n  status: %s", kick, status)
	} else {
		ui.line("continuing the export in %s (status %s)", filepath.Join(o.out, cur.Dir), cur.Status)
	}
	if cur.Manifest == nil {
		c.OnProgress = ui.progress
		m, stats, err := c.Await(ctx, cur.Status)
		if err != nil {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				// The server failed the export or forgot it: start afresh
				// next time.
				st.Current = nil
				_ = saveExportState(o.out, st)
			}
			return err
		}
		cur.Manifest = &m
		if err := saveExportState(o.out, st); err != nil {
			return err
		}
		ui.line("export complete after %d polls (transactionTime %s): %d output, %d deleted, %d error files",
			stats.Polls, m.TransactionTime, len(m.Output), len(m.Deleted), len(m.Error))
	}
	counts, err := downloadManifest(ctx, c, *cur.Manifest, filepath.Join(o.out, cur.Dir), o.parallel, ui)
	if err != nil {
		return fmt.Errorf("%w (run the same command again to continue)", err)
	}
	if st.Since == nil {
		st.Since = map[string]string{}
	}
	st.Since[query] = cur.Manifest.TransactionTime
	st.Current = nil
	if err := saveExportState(o.out, st); err != nil {
		return err
	}
	// Release the export on the server; its files are here now.
	if err := c.Delete(ctx, cur.Status); err != nil {
		ui.line("the export could not be released on the server: %v", err)
	}
	printSummary(out, *cur.Manifest, filepath.Join(o.out, cur.Dir), counts)
	return nil
}

// query names the export's server, level and parameters other than _since:
// the key of --since-last and of an unfinished export.
func (o exportOptions) query() string {
	u := o.kickoffURL("")
	if o.post {
		u += " (POST)"
	}
	return u
}

// kickoffURL is the $export URL with its query parameters.
func (o exportOptions) kickoffURL(since string) string {
	endpoint := o.base + "/$export"
	switch {
	case o.group != "":
		endpoint = o.base + "/Group/" + url.PathEscape(o.group) + "/$export"
	case o.patientLevel:
		endpoint = o.base + "/Patient/$export"
	}
	if o.post {
		return endpoint
	}
	q := url.Values{}
	if len(o.types) > 0 {
		q.Set("_type", strings.Join(o.types, ","))
	}
	if since != "" {
		q.Set("_since", since)
	}
	for _, f := range o.typeFilters {
		q.Add("_typeFilter", f)
	}
	if o.elements != "" {
		q.Set("_elements", o.elements)
	}
	if len(q) == 0 {
		return endpoint
	}
	return endpoint + "?" + q.Encode()
}

// parameters is the POST kick-off's FHIR Parameters body.
func (o exportOptions) parameters(since string) map[string]any {
	var params []map[string]any
	add := func(name, v string) {
		params = append(params, map[string]any{"name": name, "valueString": v})
	}
	if len(o.types) > 0 {
		add("_type", strings.Join(o.types, ","))
	}
	if since != "" {
		params = append(params, map[string]any{"name": "_since", "valueInstant": since})
	}
	for _, f := range o.typeFilters {
		add("_typeFilter", f)
	}
	if o.elements != "" {
		add("_elements", o.elements)
	}
	return map[string]any{"resourceType": "Parameters", "parameter": params}
}

func loadExportState(dir string) (exportState, error) {
	var st exportState
	b, err := os.ReadFile(filepath.Join(dir, exportStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", filepath.Join(dir, exportStateFile), err)
	}
	return st, nil
}

// saveExportState writes the state whole or not at all.
func saveExportState(dir string, st exportState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, exportStateFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, exportStateFile))
}

// fileCount is what one manifest entry held.
type fileCount struct {
	kind  bulkclient.Kind
	typ   string
	lines int
}

// downloadManifest downloads every file of m into dir/output, dir/deleted
// and dir/error, parallel at a time, resuming what an earlier run left.
func downloadManifest(ctx context.Context, c *bulkclient.Client, m bulkclient.Manifest, dir string, parallel int, ui *exportUI) ([]fileCount, error) {
	type job struct {
		kind bulkclient.Kind
		file bulkclient.File
		path string
	}
	var jobs []job
	total := 0
	for _, list := range []struct {
		kind  bulkclient.Kind
		files []bulkclient.File
	}{{bulkclient.KindOutput, m.Output}, {bulkclient.KindDeleted, m.Deleted}, {bulkclient.KindError, m.Error}} {
		if err := os.MkdirAll(filepath.Join(dir, string(list.kind)), 0o755); err != nil {
			return nil, err
		}
		seen := map[string]int{}
		for _, f := range list.files {
			name, err := fileName(f)
			if err != nil {
				return nil, err
			}
			if seen[name]++; seen[name] > 1 {
				name = fmt.Sprintf("%s-%d%s", strings.TrimSuffix(name, ".ndjson"), seen[name], ".ndjson")
			}
			jobs = append(jobs, job{list.kind, f, filepath.Join(dir, string(list.kind), name)})
			if f.Count != nil {
				total += *f.Count
			}
		}
	}
	ui.startDownloads(len(jobs), total)
	counts := make([]fileCount, len(jobs))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(parallel, len(jobs))) {
		wg.Go(func() {
			for i := range next {
				j := jobs[i]
				rel := filepath.Join(string(j.kind), filepath.Base(j.path))
				tick := ui.fileStarted(rel, j.file.Count)
				n, resumed, err := c.DownloadToFile(ctx, j.file, m.RequiresAccessToken, j.path, tick)
				ui.fileDone(rel, n, resumed, err)
				if err != nil {
					cancel(err)
					return
				}
				counts[i] = fileCount{j.kind, j.file.Type, n}
			}
		})
	}
send:
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
			break send
		}
	}
	close(next)
	wg.Wait()
	ui.stop()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return counts, nil
}

// fileName is the local name of a manifest file: its URL's last segment,
// made safe.
func fileName(f bulkclient.File) (string, error) {
	u, err := url.Parse(f.URL)
	if err != nil {
		return "", fmt.Errorf("manifest file URL %q: %w", f.URL, err)
	}
	name := path.Base(u.Path)
	name = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r < ' ' {
			return '_'
		}
		return r
	}, name)
	if name == "" || name == "." || name == ".." || name == "/" {
		name = f.Type
	}
	if !strings.HasSuffix(name, ".ndjson") {
		name += ".ndjson"
	}
	return name, nil
}

// printSummary lists what was downloaded, by array and type, each count
// checked against the manifest's.
func printSummary(out io.Writer, m bulkclient.Manifest, dir string, counts []fileCount) {
	byKind := map[bulkclient.Kind]map[string]int{}
	for _, c := range counts {
		if byKind[c.kind] == nil {
			byKind[c.kind] = map[string]int{}
		}
		byKind[c.kind][c.typ] += c.lines
	}
	fmt.Fprintf(out, "\nexport of %s, transactionTime %s, in %s:\n", m.Request, m.TransactionTime, dir)
	for _, kind := range []bulkclient.Kind{bulkclient.KindOutput, bulkclient.KindDeleted, bulkclient.KindError} {
		types := byKind[kind]
		if len(types) == 0 {
			continue
		}
		sum := 0
		names := make([]string, 0, len(types))
		for t, n := range types {
			names = append(names, t)
			sum += n
		}
		slices.Sort(names)
		fmt.Fprintf(out, "  %-8s %d resources\n", kind, sum)
		for _, t := range names {
			fmt.Fprintf(out, "    %-28s %d\n", t, types[t])
		}
	}
	if len(counts) == 0 {
		fmt.Fprintln(out, "  no files: nothing matched, or nothing changed since")
		return
	}
	fmt.Fprintln(out, "  every file's lines match the manifest's counts")
}

// exportUI shows the export's progress: bars on a terminal (the server's
// X-Progress, then a bar per file and one for every resource, with
// resources/s), plain lines otherwise.
type exportUI struct {
	out     io.Writer
	mu      sync.Mutex
	tty     bool
	bars    *mpb.Progress
	overall *mpb.Bar
	last    string
	files   int
	done    int
}

func newExportUI(out io.Writer, plain bool) *exportUI {
	ui := &exportUI{out: out}
	if f, ok := out.(*os.File); ok && !plain && term.IsTerminal(int(f.Fd())) { //nolint:gosec // a file descriptor fits
		ui.tty = true
	}
	return ui
}

func (ui *exportUI) line(format string, args ...any) {
	ui.mu.Lock()
	defer ui.mu.Unlock()
	if ui.bars != nil {
		fmt.Fprintf(ui.bars, format+"\n", args...)
		return
	}
	fmt.Fprintf(ui.out, format+"\n", args...)
}

// progress shows an in-progress status answer when it says something new.
func (ui *exportUI) progress(p bulkclient.Progress) {
	text := p.XProgress
	if p.Throttled {
		text = "polled too often (429): waiting " + p.RetryAfter.String()
	}
	if text == "" {
		text = "in progress"
	}
	ui.mu.Lock()
	same := text == ui.last
	ui.last = text
	ui.mu.Unlock()
	if same {
		return
	}
	if ui.tty {
		ui.mu.Lock()
		fmt.Fprintf(ui.out, "\r\033[K%s", text)
		ui.mu.Unlock()
		return
	}
	ui.line("server: %s", text)
}

func (ui *exportUI) startDownloads(files, resources int) {
	ui.mu.Lock()
	defer ui.mu.Unlock()
	ui.files = files
	if !ui.tty {
		fmt.Fprintf(ui.out, "downloading %d files (%d resources)\n", files, resources)
		return
	}
	fmt.Fprint(ui.out, "\r\033[K")
	ui.bars = mpb.New(mpb.WithOutput(ui.out), mpb.WithWidth(40), mpb.PopCompletedMode(), mpb.WithAutoRefresh())
	ui.overall = ui.bars.AddBar(int64(resources),
		mpb.PrependDecorators(decor.Name("all files", decor.WC{W: 36, C: decor.DindentRight}), decor.CountersNoUnit("%d / %d")),
		mpb.AppendDecorators(decor.AverageSpeed(0, "%.0f resources/s"), decor.Name(" "), decor.Elapsed(decor.ET_STYLE_GO)))
}

// fileStarted shows a file's download and returns what counts its lines.
func (ui *exportUI) fileStarted(name string, count *int) func(int64) {
	if !ui.tty {
		return nil
	}
	total := int64(0)
	if count != nil {
		total = int64(*count)
	}
	bar := ui.bars.AddBar(total, mpb.BarRemoveOnComplete(),
		mpb.PrependDecorators(decor.Name(name, decor.WC{W: 36, C: decor.DindentRight}), decor.CountersNoUnit("%d / %d")))
	return func(int64) {
		bar.IncrBy(1)
		ui.overall.IncrBy(1)
	}
}

func (ui *exportUI) fileDone(name string, lines int, resumed bool, err error) {
	ui.mu.Lock()
	ui.done++
	done := ui.done
	ui.mu.Unlock()
	if ui.tty {
		return
	}
	switch {
	case err != nil:
		ui.line("failed %s: %v", name, err)
	case resumed:
		ui.line("downloaded %s: %d resources, resumed (%d of %d files)", name, lines, done, ui.files)
	default:
		ui.line("downloaded %s: %d resources (%d of %d files)", name, lines, done, ui.files)
	}
}

func (ui *exportUI) stop() {
	if ui.bars == nil {
		return
	}
	if ui.overall != nil && !ui.overall.Completed() {
		ui.overall.SetTotal(-1, true)
	}
	ui.bars.Wait()
	ui.mu.Lock()
	ui.bars = nil
	ui.mu.Unlock()
}
