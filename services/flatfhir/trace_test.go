package flatfhir_test

import (
	"strings"
	"testing"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/telemetry"
)

// TestE2EOneExportIsOneTrace checks that the kick-off request, the plan,
// every task and the completion share one trace: the trace context rides
// in NATS message headers from the API to the planner to the writers.
func TestE2EOneExportIsOneTrace(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	base := startEngineWith(t, func(tune *flatfhir.Tuning) {
		tune.Telemetry = telemetry.FromProviders(tp, metricnoop.NewMeterProvider())
	})
	body := `{"resourceType":"Patient","id":"a"}
{"resourceType":"Patient","id":"b"}
{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/a"}}
`
	resp, out := do(t, "POST", base+"/$ingest", strings.NewReader(body), "Content-Type", "application/fhir+ndjson")
	if resp.StatusCode != 200 {
		t.Fatalf("ingest: %d %s", resp.StatusCode, out)
	}
	await(t, kickoff(t, base+"/$export"))

	var kick sdktrace.ReadOnlySpan
	for _, s := range spans.GetSpans().Snapshots() {
		if s.Name() == "GET /$export" {
			kick = s
		}
	}
	if kick == nil {
		t.Fatal("no span for the kick-off request")
	}
	inTrace, all := map[string]int{}, map[string]int{}
	for _, s := range spans.GetSpans().Snapshots() {
		all[s.Name()]++
		if s.SpanContext().TraceID() == kick.SpanContext().TraceID() {
			inTrace[s.Name()]++
		}
	}
	for _, name := range []string{"planner.submit", "writer.task", "planner.done"} {
		if inTrace[name] == 0 {
			t.Errorf("no %s span in the kick-off's trace; spans in it: %v", name, inTrace)
		}
	}
	// Every task of the export (its two small types may share one) is in
	// the kick-off's trace.
	if inTrace["writer.task"] != all["writer.task"] {
		t.Errorf("%d writer.task spans in the kick-off's trace, of %d", inTrace["writer.task"], all["writer.task"])
	}
}
