package ingester_test

import (
	"context"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/shared/synth"
	"github.com/flatfhir/flatfhir/streams"
)

// BenchmarkIngesterThroughput publishes b.N generated resources to CHANGES
// and measures the time until the watermark covers them all.
func BenchmarkIngesterThroughput(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	pub := streams.NewChangePublisher(e.js)
	n := 0
	patients := b.N/50 + 1
	err := synth.Generate(ctx, synth.Config{Patients: patients, Seed: 3}, func(typ string, body []byte) error {
		h, err := fhir.Inspect(body, true)
		if err != nil {
			return err
		}
		n++
		return pub.Put(ctx, typ, h.ID, append([]byte(nil), body...))
	})
	if err == nil {
		err = pub.Wait(ctx)
	}
	if err != nil {
		b.Fatal(err)
	}
	last, err := streams.LastChangeSeq(ctx, e.js)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	stop := start0(b, e)
	caughtUp(b, e, last, 10*time.Minute)
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	b.ReportMetric(float64(n)/elapsed.Seconds(), "resources/s")
}

func start0(b *testing.B, e env) func() { return start(b, e, ingester.DefaultConfig()) }
