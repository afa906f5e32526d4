package flatfhir

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// debugServer serves Go's runtime profiles (net/http/pprof) on
// FLATFHIR_DEBUG_LISTEN: CPU, heap, goroutines, mutex and block profiles of
// this process, for `go tool pprof`. It has no authentication, so it
// listens on its own address, apart from the API; bind it to loopback or a
// private network.
type debugServer struct {
	srv *http.Server
	ln  net.Listener
}

func startDebug(addr string, log *slog.Logger) (*debugServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("FLATFHIR_DEBUG_LISTEN: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	d := &debugServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("debug server stopped", slog.Any("error", err))
		}
	}()
	log.Info("profiles served", slog.String("url", "http://"+ln.Addr().String()+"/debug/pprof/"))
	return d, nil
}

// Addr is the address the debug server listens on.
func (d *debugServer) Addr() string { return d.ln.Addr().String() }

func (d *debugServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = d.srv.Shutdown(ctx)
}
