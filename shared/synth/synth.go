package synth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
)

// DefaultGroupSize is the maximum number of members per Group when
// Config.GroupSize is 0.
const DefaultGroupSize = 10000

// Config says how much to generate.
type Config struct {
	Patients  int    // number of patients (>= 1)
	Seed      uint64 // same seed + same Patients => byte-identical output
	GroupSize int    // max members per Group resource; 0 means default 10000
}

// Validate reports whether the configuration can be generated.
func (c Config) Validate() error {
	var errs []error
	if c.Patients < 1 {
		errs = append(errs, fmt.Errorf("synth: Patients must be >= 1, got %d", c.Patients))
	}
	if c.GroupSize < 0 {
		errs = append(errs, fmt.Errorf("synth: GroupSize must be >= 0, got %d", c.GroupSize))
	}
	return errors.Join(errs...)
}

func (c Config) groupSize() int {
	if c.GroupSize == 0 {
		return DefaultGroupSize
	}
	return c.GroupSize
}

// Generate calls emit once per resource, in an order where every referenced
// resource was emitted before (Organizations, Practitioners first, then per
// patient: Patient, Coverage, Encounters, ...; Groups last). It stops and
// returns the first error emit returns, or ctx.Err() when ctx is cancelled
// (checked before every patient and every Group). body is a compact JSON
// object (no trailing newline), valid to be placed as one NDJSON line; emit
// must not retain body after returning (the generator reuses the buffer).
func Generate(ctx context.Context, cfg Config, emit func(resourceType string, body []byte) error) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if emit == nil {
		return errors.New("synth: nil emit function")
	}
	return newGenerator(ctx, cfg, emit).run()
}

// Estimate returns the approximate number of resources Generate emits for cfg
// (within ~10%; the pools and Groups are exact, the per-patient part is the
// expectation), for progress bars and sizing. It returns 0 for an invalid cfg.
func Estimate(cfg Config) int {
	if cfg.Validate() != nil {
		return 0
	}
	orgs, _, practs := poolSizes(cfg.Patients)
	perPatient := 2 + encountersPerPatient.mean()*meanPerEncounter()
	return orgs + practs + int(math.Round(float64(cfg.Patients)*perPatient)) +
		groupCount(cfg.Patients, cfg.groupSize())
}

// meanPerEncounter is the expected number of resources one encounter yields:
// the Encounter, its clinical resources, a Claim and an ExplanationOfBenefit.
func meanPerEncounter() float64 {
	var sum float64
	for _, t := range encTypes {
		n := 3 + float64(len(t.vitals)) + t.labs.mean() + t.cond.mean() +
			t.proc.mean() + t.med.mean() + t.imm.mean()
		sum += float64(t.weight) * n
	}
	return sum / float64(encWeight)
}

// WriteNDJSON generates into w as NDJSON (one resource per line, '\n'
// separated) and returns the count written. Output is buffered internally and
// flushed before returning.
func WriteNDJSON(ctx context.Context, cfg Config, w io.Writer) (int, error) {
	bw := bufio.NewWriterSize(w, 256<<10)
	n := 0
	err := Generate(ctx, cfg, func(_ string, body []byte) error {
		if _, err := bw.Write(body); err != nil {
			return err
		}
		if err := bw.WriteByte('\n'); err != nil {
			return err
		}
		n++
		return nil
	})
	if ferr := bw.Flush(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}
