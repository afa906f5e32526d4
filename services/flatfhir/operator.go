package flatfhir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flatfhir/flatfhir/streams"
)

// operatorServer serves what operators' tooling scrapes and probes, on
// FLATFHIR_METRICS_LISTEN, apart from the API:
//   - /metrics: the process's metrics in Prometheus's text format, read
//     from the same OpenTelemetry instruments that feed OTLP;
//   - /livez: 200 while the process serves at all (a liveness probe: a
//     failure means restart it);
//   - /readyz: 200 when NATS and JetStream answer, ClickHouse answers,
//     this role's consumers are bound and its services run; 503 with the
//     failing checks otherwise (a readiness probe: send no work yet).
//
// Both probes answer JSON. Like the profiles server it has no
// authentication: bind it to loopback or a private network.
type operatorServer struct {
	srv *http.Server
	ln  net.Listener
}

// readyCheck is one condition of readiness.
type readyCheck struct {
	name  string
	check func(context.Context) error
}

// checkResult is a readiness check's outcome as /readyz reports it.
type checkResult struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func startOperator(addr string, metrics http.Handler, checks []readyCheck, log *slog.Logger) (*operatorServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("FLATFHIR_METRICS_LISTEN: %w", err)
	}
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "live"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		results, ready := runChecks(ctx, checks)
		status, code := "ready", http.StatusOK
		if !ready {
			status, code = "not ready", http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"status": status, "checks": results})
	})
	o := &operatorServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		if err := o.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("operator server stopped", slog.Any("error", err))
		}
	}()
	log.Info("metrics and probes served", slog.String("metrics", "http://"+ln.Addr().String()+"/metrics"),
		slog.String("readyz", "http://"+ln.Addr().String()+"/readyz"))
	return o, nil
}

// runChecks runs every check at once and reports each one's outcome.
func runChecks(ctx context.Context, checks []readyCheck) ([]checkResult, bool) {
	results := make([]checkResult, len(checks))
	done := make(chan struct{}, len(checks))
	for i, c := range checks {
		go func() {
			defer func() { done <- struct{}{} }()
			results[i] = checkResult{Name: c.name, OK: true}
			if err := c.check(ctx); err != nil {
				results[i] = checkResult{Name: c.name, Error: err.Error()}
			}
		}()
	}
	for range checks {
		<-done
	}
	ready := true
	for _, r := range results {
		ready = ready && r.OK
	}
	return results, ready
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Addr is the address the operator server listens on.
func (o *operatorServer) Addr() string { return o.ln.Addr().String() }

func (o *operatorServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = o.srv.Shutdown(ctx)
}

// readyChecks are the conditions of this engine's readiness: its
// connections answer, its role's consumers exist, and Run has started its
// services and none has failed.
func (e *Engine) readyChecks() []readyCheck {
	checks := []readyCheck{
		{"nats", func(context.Context) error {
			if s := e.nc.Status(); s != nats.CONNECTED {
				return fmt.Errorf("the connection is %s", s)
			}
			return nil
		}},
		{"jetstream", func(ctx context.Context) error {
			_, err := e.js.AccountInfo(ctx)
			return err
		}},
		{"clickhouse", e.store.Ping},
		{"services", func(context.Context) error {
			if !e.running.Load() {
				return errors.New("not started, or one has stopped")
			}
			return nil
		}},
	}
	consumer := func(stream, name string) readyCheck {
		return readyCheck{"consumer " + name, func(ctx context.Context) error {
			_, err := e.js.Consumer(ctx, stream, name)
			return err
		}}
	}
	if e.has(RolePlanner) {
		checks = append(checks, consumer(streams.StreamExportJobs, streams.ConsumerPlanner))
	}
	if e.has(RoleWriter) {
		checks = append(checks, consumer(streams.StreamExportTasks, streams.ConsumerWriters))
	}
	return checks
}

// probeCommand is flatfhir probe [URL]: a health check that needs no shell
// or HTTP client in the image. Without URL it asks /readyz on
// FLATFHIR_METRICS_LISTEN, at loopback when that names every interface.
func probeCommand(ctx context.Context, args []string, out io.Writer) error {
	if len(args) > 1 {
		return errUsage
	}
	var u string
	if len(args) == 1 {
		u = args[0]
	} else {
		addr := env("FLATFHIR_METRICS_LISTEN", "")
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("probe: give a URL, or set FLATFHIR_METRICS_LISTEN to host:port (it is %q)", addr)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		u = "http://" + net.JoinHostPort(host, port) + "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d: %s", u, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	_, err = out.Write(body)
	return err
}
