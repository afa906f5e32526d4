package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WriteTable prints the report as a table.
func (r *TargetReport) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "bulkbench -target %s  (%d clients, %d pollers, %.0f s, started %s)\n", r.URL, r.Clients, r.Pollers, r.Seconds, r.StartedAt.Format("2006-01-02 15:04 UTC"))
	if r.Group != "" {
		fmt.Fprintf(tw, "  group exports of Group/%s\n", r.Group)
	}
	if r.Ingested > 0 {
		fmt.Fprintf(tw, "  ingested %d generated resources first (-target-ingest)\n", r.Ingested)
	}
	fmt.Fprintf(tw, "  downloaded %d resources, %.1f MB: %.0f resources/s over the run\n\n", r.Resources, float64(r.Bytes)/1e6, r.ResourcesRate)
	fmt.Fprintln(tw, "EXPORTS\texports\tfailed\tresources\tkick-off to manifest p50 / p95 / max s\tto downloaded p50 / p95 / max s\t")
	for _, name := range sortedKeys(r.Levels) {
		l := r.Levels[name]
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%.1f / %.1f / %.1f\t%.1f / %.1f / %.1f\t\n", name, l.Exports, l.Failed, l.Resources,
			l.Manifest.P50, l.Manifest.P95, l.Manifest.Max, l.Done.P50, l.Done.P95, l.Done.Max)
	}
	fmt.Fprintln(tw, "\nREQUESTS\tcount\tp50 ms\tp95 ms\tp99 ms\tmax ms\tanswers\t")
	for _, name := range sortedKeys(r.Requests) {
		l := r.Requests[name]
		fmt.Fprintf(tw, "  %s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t\n", name, l.Count, l.P50, l.P95, l.P99, l.Max, codes(l.ByCode))
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(tw, "\nERRORS\tcount\t")
		for _, name := range sortedKeys(r.Errors) {
			fmt.Fprintf(tw, "  %s\t%d\t\n", name, r.Errors[name])
		}
	} else {
		fmt.Fprintln(tw, "\nno errors")
	}
	if len(r.ResourcesByType) > 0 {
		fmt.Fprintln(tw, "\nRESOURCES BY TYPE\t\t")
		for _, name := range sortedKeys(r.ResourcesByType) {
			fmt.Fprintf(tw, "  %s\t%d\t\n", name, r.ResourcesByType[name])
		}
	}
	return tw.Flush()
}

// WriteJSON writes the report as JSON to path.
func (r *TargetReport) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func codes(by map[int]int) string {
	var b bytes.Buffer
	keys := make([]int, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d × %d", by[k], k)
	}
	return b.String()
}

// targetPlots draws the run: throughput over time, the latency
// distributions of status polls and downloads, and resources by type.
func targetPlots(r *TargetReport) ([]*plot.Plot, error) {
	var out []*plot.Plot
	var rate, exports plotter.XYs
	done := 0
	for _, s := range r.Timeline {
		rate = append(rate, plotter.XY{X: float64(s.At), Y: float64(s.Resources)})
		done += s.Exports
		exports = append(exports, plotter.XY{X: float64(s.At), Y: float64(done)})
	}
	for _, c := range []struct {
		title, y string
		xys      plotter.XYs
	}{{"Throughput", "resources downloaded per second", rate}, {"Exports completed", "exports", exports}} {
		p := plot.New()
		p.Title.Text, p.X.Label.Text, p.Y.Label.Text = c.title, "seconds into the run", c.y
		p.Y.Min = 0
		p.Add(plotter.NewGrid())
		if len(c.xys) > 0 {
			if err := plotutil.AddLines(p, c.xys); err != nil {
				return nil, err
			}
		}
		out = append(out, p)
	}
	for _, kind := range []string{"status", "download", "kick-off"} {
		l := r.Requests[kind]
		if l == nil || len(l.samples) == 0 {
			continue
		}
		h, err := plotter.NewHist(plotter.Values(l.samples), 40)
		if err != nil {
			return nil, err
		}
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s latency (p50 %.0f ms, p99 %.0f ms)", kind, l.P50, l.P99)
		p.X.Label.Text, p.Y.Label.Text = "milliseconds", "requests"
		p.Add(h)
		out = append(out, p)
	}
	if len(r.ResourcesByType) > 0 {
		types := sortedKeys(r.ResourcesByType)
		vals := make(plotter.Values, len(types))
		for i, t := range types {
			vals[i] = float64(r.ResourcesByType[t])
			// The server named these types: only letters and digits go
			// into the page's markup.
			types[i] = strings.Map(func(c rune) rune {
				if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
					return c
				}
				return -1
			}, t)
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(12))
		if err != nil {
			return nil, err
		}
		p := plot.New()
		p.Title.Text, p.Y.Label.Text = "Resources downloaded by type", "resources"
		p.Add(bars)
		p.NominalX(types...)
		p.X.Tick.Label.Rotation = 0.8
		p.X.Tick.Label.XAlign, p.X.Tick.Label.YAlign = -0.5, -0.5
		out = append(out, p)
	}
	return out, nil
}

var targetPage = template.Must(template.New("target").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bulkbench -target {{.URL}}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:70em}pre{background:#f6f6f6;padding:1em;overflow:auto}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts svg{max-width:100%;height:auto}</style></head>
<body><h1>bulkbench -target</h1>
<p>{{.URL}}, started {{.Started}}: {{.Resources}} resources downloaded at {{printf "%.0f" .Rate}} resources/s.</p>
<div class="charts">{{range .Charts}}<div>{{.}}</div>{{end}}</div>
<h2>Figures</h2><pre>{{.Table}}</pre>
</body></html>
`))

// writeTargetHTML writes the report with its plots to path.
func writeTargetHTML(path string, r *TargetReport) error {
	plots, err := targetPlots(r)
	if err != nil {
		return err
	}
	// Numbers, and type names cut to letters and digits.
	charts, err := svgCharts(plots)
	if err != nil {
		return err
	}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		return err
	}
	var page bytes.Buffer
	if err := targetPage.Execute(&page, map[string]any{
		"URL": r.URL, "Started": r.StartedAt.Format("2006-01-02 15:04 UTC"), "Resources": r.Resources, "Rate": r.ResourcesRate,
		"Charts": charts, "Table": table.String(),
	}); err != nil {
		return err
	}
	return os.WriteFile(path, page.Bytes(), 0o644)
}
