package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/streams"
)

// Config is the API's configuration.
type Config struct {
	// Listen is host:port to serve on.
	Listen string
	// BaseURL is the public FHIR base (scheme://host[:port][/path]) used in
	// Content-Location, manifests and file URLs. Empty derives it from each
	// request's scheme and Host.
	BaseURL string
	// RetryAfter is the longest polling delay suggested while an export
	// runs. The Retry-After of an in-progress answer follows the export's
	// estimated remaining time, from 1 s up to this.
	RetryAfter time.Duration
	// StatusHold is how long a status request of a running export waits
	// for it to complete before answering 202, so that a client learns of
	// completion without waiting out a Retry-After. 0 answers at once.
	StatusHold time.Duration
	// SpoolDir holds ingest bodies while they are validated; empty is the
	// system temp directory.
	SpoolDir string
	// PollRate and PollBurst bound status requests per export (per second,
	// per replica); polls beyond them get 429 with Retry-After. 0 disables.
	PollRate  float64
	PollBurst int
	// Auth switches SMART Backend Services authorization on: every bulk,
	// read and write endpoint then needs an access token.
	Auth bool
	// AuthConfig tunes token issuing; zero values take auth.DefaultConfig.
	AuthConfig auth.Config
	// AdminToken is the operator credential for /admin/* and $ingest;
	// empty disables the admin endpoints.
	AdminToken string
	// TLSCertFile and TLSKeyFile, when set, make the API serve HTTPS
	// (TLS 1.2 or later) with that certificate.
	TLSCertFile string
	TLSKeyFile  string
	// RequestTimeout bounds the reading of a request: its headers, and the
	// body of any request but a write's. A client sending slower (one byte
	// a second) is cut off, so that it holds a connection no longer.
	RequestTimeout time.Duration
	// WriteBodyTimeout bounds the reading of the body of a POST or PUT,
	// $ingest's included, once its headers are read.
	WriteBodyTimeout time.Duration
	// ConsoleEvery is how often the console's live view is updated; 0 is
	// every 2 s.
	ConsoleEvery time.Duration
	// MaxHeaderBytes bounds a request's line and headers (the URL of a
	// GET kick-off with long _typeFilter values included); beyond it the
	// answer is 431.
	MaxHeaderBytes int
	// MaxDownloadsPerClient and MaxWritesPerClient bound the file
	// downloads and the writes ($ingest, Bundles, resource writes) one
	// client has in progress at once in this replica (0: unbounded); more
	// get 429 with Retry-After.
	MaxDownloadsPerClient int
	MaxWritesPerClient    int
	// MaxConnsPerIP bounds the connections one client address holds at
	// once; 0 leaves them unbounded (clients behind one NAT gateway share
	// an address).
	MaxConnsPerIP int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Listen: "127.0.0.1:8080", RetryAfter: 5 * time.Second, StatusHold: time.Second, PollRate: 2, PollBurst: 20,
		RequestTimeout: time.Minute, WriteBodyTimeout: 30 * time.Minute, MaxHeaderBytes: 64 << 10, MaxConnsPerIP: 256,
		MaxDownloadsPerClient: 32, MaxWritesPerClient: 64}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("api listen address %q: %w", c.Listen, err)
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("api base url %q must be an absolute http(s) URL", c.BaseURL)
		}
	}
	if c.RetryAfter < time.Second {
		return errors.New("api retry-after must be at least one second")
	}
	if c.StatusHold < 0 || c.StatusHold > 30*time.Second {
		return errors.New("api status hold must be between 0 and 30 seconds")
	}
	if c.PollRate < 0 || c.PollBurst < 0 || (c.PollRate > 0 && c.PollBurst < 1) {
		return errors.New("api poll rate must not be negative, and a poll rate needs a burst of at least 1")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("api TLS needs both a certificate and a key file")
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		return errors.New("api admin token must be at least 16 characters")
	}
	if c.RequestTimeout <= 0 || c.WriteBodyTimeout < c.RequestTimeout {
		return errors.New("api request timeout must be positive, and the write body timeout at least as long")
	}
	if c.MaxHeaderBytes < 4096 || c.MaxConnsPerIP < 0 || c.MaxDownloadsPerClient < 0 || c.MaxWritesPerClient < 0 {
		return errors.New("api header limit must be at least 4096 bytes, and the connection, download and write bounds not negative")
	}
	return nil
}

// Deps are what the API works with.
type Deps struct {
	NC *nats.Conn
	JS jetstream.JetStream
	// Store serves Patient and Group kick-off checks and Group read and
	// search.
	Store  *chstore.Store
	Log    *slog.Logger
	Tracer trace.TracerProvider
	Meter  metric.MeterProvider
	Now    func() time.Time
	// HTTP fetches clients' JWKS URLs; nil uses a default client.
	HTTP *http.Client
}

// Server is the HTTP edge.
type Server struct {
	cfg     Config
	deps    Deps
	app     *fiber.App
	tracer  trace.Tracer
	metrics metrics
	jobs    streams.Jobs
	files   jetstream.ObjectStore
	polls   *pollLimiter
	// downloads and writes bound each client's requests in progress.
	downloads, writes *inFlight
	// indexes caches the attachment indexes of recent exports.
	indexes *attachmentIndexes
	auth    *auth.Authority
	tls     *tls.Config
	// done is closed when the server stops: the console's event streams
	// end with it.
	done     chan struct{}
	doneOnce sync.Once
	// consoleCounts keeps the resources and files of complete exports the
	// console lists (console.go).
	consoleCounts sync.Map
}

// New builds the server and its routes.
func New(ctx context.Context, cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.NC == nil || deps.JS == nil || deps.Store == nil || deps.Log == nil || deps.Tracer == nil || deps.Meter == nil {
		return nil, errors.New("api needs nats, jetstream, store, logger, tracer and meter")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if cfg.ConsoleEvery <= 0 {
		cfg.ConsoleEvery = 2 * time.Second
	}
	s := &Server{done: make(chan struct{}), cfg: cfg, deps: deps, tracer: deps.Tracer.Tracer("flatfhir/api"), polls: newPollLimiter(cfg.PollRate, cfg.PollBurst),
		indexes:   newAttachmentIndexes(),
		downloads: newInFlight("downloads", cfg.MaxDownloadsPerClient), writes: newInFlight("writes", cfg.MaxWritesPerClient)}
	var err error
	if s.metrics, err = newMetrics(deps.Meter); err != nil {
		return nil, err
	}
	if s.jobs, err = streams.OpenJobs(ctx, deps.JS); err != nil {
		return nil, err
	}
	if s.files, err = deps.JS.ObjectStore(ctx, streams.ObjectFiles); err != nil {
		return nil, fmt.Errorf("open object store %s: %w", streams.ObjectFiles, err)
	}
	ac := cfg.AuthConfig
	if ac == (auth.Config{}) {
		ac = auth.DefaultConfig()
	}
	// The registry and keyring are opened with auth off too, so that the
	// admin endpoints can register clients before auth is switched on.
	if s.auth, err = auth.New(ctx, ac, auth.Deps{JS: deps.JS, HTTP: deps.HTTP, Log: deps.Log, Now: deps.Now}); err != nil {
		return nil, err
	}
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS certificate: %w", err)
		}
		s.tls = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	s.app = fiber.New(fiber.Config{
		AppName:               "flatfhir",
		DisableStartupMessage: true,
		StreamRequestBody:     true,
		BodyLimit:             64 << 20, // larger bodies stream (ingest); others are read whole
		ErrorHandler:          s.errorHandler,
		// Every body names its own media type; an empty one has none
		// (fasthttp would otherwise label it text/plain).
		DisableDefaultContentType: true,
		// Headers, and the bodies of reads, within RequestTimeout; writes'
		// bodies get longer (readTimeouts).
		ReadTimeout:    cfg.RequestTimeout,
		ReadBufferSize: cfg.MaxHeaderBytes,
		IdleTimeout:    2 * time.Minute,
	})
	s.app.Server().HeaderReceived = s.readTimeouts
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	// A panic in a handler is a 500 for that request, never a crash.
	s.app.Use(recover.New())
	s.app.Use(s.traceRequests)
	s.app.Use(s.measureRequests)
	// Public: discovery and the token endpoint.
	s.app.Get("/metadata", s.metadata)
	s.app.Get(pathSmartConfig, s.smartConfiguration)
	s.app.Post(pathToken, s.token)
	s.app.Get(pathAuthorize, s.authorize)
	// Operator endpoints, behind FLATFHIR_ADMIN_TOKEN.
	s.app.Get("/admin/clients", s.admin, s.listClients)
	s.app.Get("/admin/clients/:id", s.admin, s.getClient)
	s.app.Put("/admin/clients/:id", s.admin, s.putClient)
	s.app.Delete("/admin/clients/:id", s.admin, s.deleteClient)
	s.app.Post("/admin/keys/rotate", s.admin, s.rotateKeys)
	// The operators' read-only console (console.go).
	s.app.Get("/console", s.operator, s.consoleHTML)
	s.app.Get("/console/state", s.operator, s.consoleState)
	s.app.Get("/console/events", s.operator, s.consoleEvents)
	// Every route below needs an access token when auth is on: register
	// new routes here, never above.
	s.app.Use(s.authenticate)
	s.app.Post("/$ingest", s.needIngest, s.writes.hold, s.ingest)
	for _, lvl := range []struct {
		path string
		lvl  level
	}{{"/$export", levelSystem}, {"/Patient/$export", levelPatient}, {"/Group/:id/$export", levelGroup}} {
		s.app.Get(lvl.path, s.kickoff(lvl.lvl))
		s.app.Post(lvl.path, s.kickoff(lvl.lvl))
	}
	s.app.Get("/Group", s.need(auth.PermSearch, "Group"), s.searchGroups)
	s.app.Get("/jobs/:job", s.status)
	s.app.Delete("/jobs/:job", s.cancel)
	s.app.Get("/files/:job/:name", s.file)
	// Binaries the export's Attachment.url values name, authorized as its files.
	s.app.Get("/files/:job/attachments/Binary/:id", s.attachment)
	// Batch and transaction Bundles; each entry needs its permission.
	s.app.Post("/", s.writes.hold, s.bundle)
	// FHIR reads and writes; registered last, as they match any type.
	s.app.Get("/:type/:id", s.need(auth.PermRead, ""), s.readResource)
	s.app.Put("/:type/:id", s.need(auth.PermUpdate, ""), s.writes.hold, s.putResource)
	s.app.Delete("/:type/:id", s.need(auth.PermDelete, ""), s.writes.hold, s.deleteResource)
	s.app.Post("/:type", s.need(auth.PermCreate, ""), s.writes.hold, s.createResource)
}

// traceRequests starts a span per request, named after the route that
// served it, and records the response status.
func (s *Server) traceRequests(c *fiber.Ctx) error {
	ctx, span := s.tracer.Start(c.UserContext(), c.Method(), trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	c.SetUserContext(ctx)
	err := c.Next()
	span.SetName(c.Method() + " " + c.Route().Path)
	span.SetAttributes(attribute.Int("http.response.status_code", c.Response().StatusCode()))
	return err
}

// App exposes the Fiber app for in-process tests.
func (s *Server) App() *fiber.App { return s.app }

// Run serves until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ctx, ln)
}

// readTimeouts gives a write's body (POST or PUT: $ingest, Bundles,
// resources) WriteBodyTimeout from the end of its headers; every other
// request keeps RequestTimeout for the whole of it.
func (s *Server) readTimeouts(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if h.IsPost() || h.IsPut() {
		return fasthttp.RequestConfig{ReadTimeout: s.cfg.WriteBodyTimeout}
	}
	return fasthttp.RequestConfig{}
}

// Serve serves on ln until ctx is done: HTTPS (TLS 1.2 or later) when a
// certificate is configured, else plain HTTP.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	if s.cfg.MaxConnsPerIP > 0 {
		// Over TLS, the refusal goes through the handshake too.
		ln = newPerIPListener(ln, s.cfg.MaxConnsPerIP, s.deps.Log)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.app.Listener(ln) }()
	s.deps.Log.InfoContext(ctx, "api listening", slog.String("addr", ln.Addr().String()))
	select {
	case err := <-errc:
		return fmt.Errorf("serve http: %w", err)
	case <-ctx.Done():
		s.doneOnce.Do(func() { close(s.done) })
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return s.app.ShutdownWithContext(sctx)
	}
}

// baseURL is the public FHIR base for this request, without trailing slash.
func (s *Server) baseURL(c *fiber.Ctx) string {
	if s.cfg.BaseURL != "" {
		return strings.TrimRight(s.cfg.BaseURL, "/")
	}
	return c.BaseURL()
}
