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
			base = e.APIURL()
		}
		welcome(out, cfg.Role, base, cfg.Auth)
		fmt.Fprintf(out, "\nConsole (exports, ingest, writers, live): %s/console\n", base)
		if addr := e.OperatorAddr(); addr != "" {
			fmt.Fprintf(out, "\nMetrics (Prometheus): http://%s/metrics   readiness: http://%s/readyz\n"+
				"Grafana dashboard: deployments/grafana/flatfhir.json\n", addr, addr)
		}
		if cfg.Role == RoleAll {
			fmt.Fprintf(out, "\nCtrl-C stops everything; data stays in %s.\n", cfg.DataDir)
		}
	}
	return e.Run(ctx)
}

// welcome prints how to export from the engine at base.
func welcome(out io.Writer, role, base string, auth bool) {
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
`, role, base, base, base, base)
	if auth {
		fmt.Fprintf(out, `
Authorization is on (SMART Backend Services): every request above needs
-H "Authorization: Bearer $TOKEN". Register a client and get a token:
  flatfhir clients keygen --out demo
  flatfhir clients add demo --scope 'system/*.rs' --jwks-file demo.jwks.json
  TOKEN=$(flatfhir token --client demo --key demo.key.pem --url %s --raw)
Discovery: %s/.well-known/smart-configuration (docs/auth.md)
`, base, base)
	} else {
		fmt.Fprintf(out, `
Authorization is off (FLATFHIR_AUTH=off). To try SMART Backend Services, start with
FLATFHIR_AUTH=on, then register a client and get a token (docs/auth.md):
  bin/flatfhir clients keygen --out demo
  bin/flatfhir clients add demo --scope 'system/*.rs' --jwks-file demo.jwks.json
  TOKEN=$(bin/flatfhir token --client demo --key demo.key.pem --url %s --raw)
  curl -si -H "Authorization: Bearer $TOKEN" -H 'Prefer: respond-async' '%s/$export'
`, base, base)
	}
}
