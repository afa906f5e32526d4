package harness

import (
	"bytes"
	"fmt"
	"html/template"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// soakPlots draws the soak's samples as line charts (gonum/plot): every
// process's RSS, live heap and goroutines, and the load's progress.
func soakPlots(samples []Sample) ([]*plot.Plot, error) {
	names := processNames(samples)
	perProcess := func(f func(ProcSample) float64, skipZero bool) []any {
		var lines []any
		for _, name := range names {
			var xys plotter.XYs
			for _, s := range samples {
				for _, p := range s.Procs {
					if p.Process == name && (!skipZero || f(p) != 0) {
						xys = append(xys, plotter.XY{X: s.At / 60, Y: f(p)})
					}
				}
			}
			if len(xys) > 0 {
				lines = append(lines, name, xys)
			}
		}
		return lines
	}
	series := func(name string, f func(Sample) float64) []any {
		var xys plotter.XYs
		for _, s := range samples {
			xys = append(xys, plotter.XY{X: s.At / 60, Y: f(s)})
		}
		return []any{name, xys}
	}
	charts := []struct {
		title, y string
		lines    []any
	}{
		{"Resident memory", "MiB", perProcess(func(p ProcSample) float64 { return p.RSSMiB }, false)},
		{"Go heap live after a collection", "MiB", perProcess(func(p ProcSample) float64 { return p.HeapMiB }, true)},
		{"Goroutines", "goroutines", perProcess(func(p ProcSample) float64 { return float64(p.Goroutines) }, true)},
		{"Resources ingested during the soak", "resources", series("ingested", func(s Sample) float64 { return float64(s.Ingested) })},
		{"Exports completed and verified", "exports", series("exports (chained rounds included)", func(s Sample) float64 { return float64(s.Exports) })},
		{"Object store", "MiB", series("export files and manifests", func(s Sample) float64 { return s.ObjectMiB })},
	}
	var out []*plot.Plot
	for _, c := range charts {
		p := plot.New()
		p.Title.Text = c.title
		p.X.Label.Text = "minutes into the soak"
		p.Y.Label.Text = c.y
		p.Y.Min = 0
		p.Legend.Top = true
		p.Add(plotter.NewGrid())
		if err := plotutil.AddLines(p, c.lines...); err != nil {
			return nil, fmt.Errorf("plot %s: %w", c.title, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// render draws a chart in format ("svg", "png").
func render(p *plot.Plot, format string) ([]byte, error) {
	w, err := p.WriterTo(16*vg.Centimeter, 9*vg.Centimeter, format)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// svgCharts draws each chart as SVG to inline in a page. The charts must
// be the harness's own figures, with no text from outside that was not
// cut to plain characters: the SVG goes into the page as markup.
func svgCharts(plots []*plot.Plot) ([]template.HTML, error) {
	var charts []template.HTML
	for _, p := range plots {
		svg, err := render(p, "svg")
		if err != nil {
			return nil, err
		}
		charts = append(charts, template.HTML(svg)) //nolint:gosec // the harness's own figures (see above)
	}
	return charts, nil
}

var soakPage = template.Must(template.New("soak").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flatfhir soak, {{.Started}}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:70em}pre{background:#f6f6f6;padding:1em;overflow:auto}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts svg{max-width:100%;height:auto}
.bad{color:#b00020;font-weight:bold}.good{color:#1b5e20;font-weight:bold}</style></head>
<body><h1>flatfhir soak</h1>
<p>{{if .Failures}}<span class="bad">FAILED</span>{{else}}<span class="good">PASSED</span>{{end}},
{{printf "%.0f" .Soak.Seconds}} s of load, started {{.Started}}.</p>
{{if .Failures}}<ul>{{range .Failures}}<li class="bad">{{.}}</li>{{end}}</ul>{{end}}
<div class="charts">{{range .Charts}}<div>{{.}}</div>{{end}}</div>
<h2>Figures</h2><pre>{{.Table}}</pre>
</body></html>
`))

// writeSoakHTML writes the soak's report with its plots to path.
func writeSoakHTML(path string, r *Report, s *SoakResult) error {
	plots, err := soakPlots(s.Samples)
	if err != nil {
		return err
	}
	charts, err := svgCharts(plots)
	if err != nil {
		return err
	}
	var table bytes.Buffer
	saved := r.Soak
	r.Soak = s
	err = r.WriteTable(&table)
	r.Soak = saved
	if err != nil {
		return err
	}
	var page bytes.Buffer
	if err := soakPage.Execute(&page, map[string]any{
		"Started": r.StartedAt.Format("2006-01-02 15:04 UTC"), "Soak": s, "Failures": s.Failures,
		"Charts": charts, "Table": table.String(),
	}); err != nil {
		return err
	}
	return os.WriteFile(path, page.Bytes(), 0o644)
}
