package flatfhir

import (
	"context"
	"fmt"
	"io"
	"log/slog"
)

// Main starts the engine, prints how to use it, and runs until ctx is done.
func Main(ctx context.Context, cfg Config, log *slog.Logger, out io.Writer) error {
	e, err := Start(ctx, cfg, Tuning{}, log)
	if err != nil {
		return err
	}
	if addr := e.APIAddr(); addr != "" {
		base := cfg.BaseURL
		if base == "" {
			base = "http://" + addr
		}
		fmt.Fprintf(out, `
flatfhir is running (role %s). FHIR base: %s

Export everything (system level), then poll the Content-Location it returns:
  curl -si -H 'Accept: application/fhir+json' -H 'Prefer: respond-async' '%s/$export'
  curl -s '<Content-Location>'          # 202 while running, 200 with the manifest when done
  curl -s '<an output url>' | head -3   # NDJSON

Only some types, as of a time:
  curl -si -H 'Accept: application/fhir+json' -H 'Prefer: respond-async' '%s/$export?_type=Patient,Observation'

Load your own NDJSON:
  curl -s -X POST -H 'Content-Type: application/fhir+ndjson' --data-binary @Patient.ndjson '%s/$ingest'
`, cfg.Role, base, base, base, base)
		if cfg.Role == RoleAll {
			fmt.Fprintf(out, "\nCtrl-C stops everything; data stays in %s.\n", cfg.DataDir)
		}
	}
	return e.Run(ctx)
}
