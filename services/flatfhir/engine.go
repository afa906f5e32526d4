package flatfhir

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/services/api"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/natsembed"
	"github.com/flatfhir/flatfhir/shared/synth"
	"github.com/flatfhir/flatfhir/shared/telemetry"
	"github.com/flatfhir/flatfhir/streams"
)

// Tuning overrides service defaults; zero values keep them. Tests use it
// to make tasks and files small.
type Tuning struct {
	Planner  planner.Config
	Writer   writer.Config
	Ingester ingester.Config
	Streams  streams.Config
	// Telemetry replaces the providers built from the configuration.
	Telemetry *telemetry.Providers
}

// Engine is a started set of services.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	tel     *telemetry.Providers
	natsSrv *natsembed.Server
	chSrv   *chserver.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *chstore.Store
	apiLn   net.Listener
	debug   *debugServer
	// operator serves /metrics, /livez and /readyz (FLATFHIR_METRICS_LISTEN).
	operator *operatorServer
	// running is set while every service Run started runs.
	running atomic.Bool
	// runners are the services, each in its shutdown stage.
	runners []runner
}

// The shutdown stages, in order: the API stops accepting requests and
// answers those in flight; then the planner and writers stop, handing
// their messages back to other replicas; then the ingester, which applies
// every change the API accepted meanwhile.
const (
	stageAPI = iota
	stageWork
	stageIngest
	stages
)

// runner is one service: its name, run function and shutdown stage.
type runner struct {
	name  string
	stage int
	run   func(context.Context) error
}

// Start brings up the servers this role needs and builds its services;
// Run runs them.
func Start(ctx context.Context, cfg Config, tune Tuning, log *slog.Logger) (_ *Engine, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if cfg.DebugListen != "" {
		if e.debug, err = startDebug(cfg.DebugListen, log); err != nil {
			return nil, err
		}
	}
	if e.tel = tune.Telemetry; e.tel == nil {
		if e.tel, err = telemetry.Setup(ctx, telemetry.Config{ServiceName: "flatfhir-" + cfg.Role, OTLPEndpoint: cfg.OTLPEndpoint, Insecure: true, Prometheus: cfg.MetricsListen != ""}); err != nil {
			return nil, err
		}
	}
	natsURL := cfg.NATSURL
	if natsURL == "" {
		if e.natsSrv, err = natsembed.Start(natsembed.Config{Port: cfg.NATSPort, StoreDir: cfg.dir("nats")}); err != nil {
			return nil, err
		}
		natsURL = e.natsSrv.URL()
		log.Info("nats started", slog.String("url", natsURL))
	}
	chAddr := cfg.ClickHouseAddr
	if chAddr == "" && len(cfg.ClickHouseShards) == 0 {
		if e.chSrv, err = chserver.Start(ctx, chserver.Config{Dir: cfg.dir("clickhouse"), TCPPort: cfg.ClickHousePort}, log); err != nil {
			return nil, err
		}
		chAddr = e.chSrv.Addr()
	}
	if e.nc, err = nats.Connect(natsURL, nats.Name("flatfhir-"+cfg.Role), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil when the engine closes it
				log.Warn("nats disconnected", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Warn("nats reconnected", slog.String("url", c.ConnectedUrl())) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("nats error", slog.String("subject", subject), slog.Any("error", err))
		})); err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", natsURL, err)
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	sc := withDefaults(tune.Streams, streams.DefaultConfig())
	if tune.Streams.Replicas == 0 {
		sc.Replicas = cfg.Replicas
	}
	if err := streams.Ensure(ctx, e.js, sc); err != nil {
		return nil, err
	}
	chCfg := chstore.Config{Addr: []string{chAddr}, Shards: cfg.ClickHouseShards, Database: cfg.ClickHouseDatabase, Meter: e.tel.Meter}
	if e.store, err = chstore.Open(ctx, chCfg, log); err != nil {
		return nil, err
	}
	if err := e.build(ctx, tune, sc); err != nil {
		return nil, err
	}
	if e.natsSrv != nil {
		if g := newDiskGuard(e.js, cfg.dir("nats"), cfg.DiskReserve, log); g != nil {
			e.runners = append(e.runners, runner{"disk guard", stageIngest, g.run})
		}
	}
	if cfg.MetricsListen != "" {
		if e.operator, err = startOperator(cfg.MetricsListen, e.tel.MetricsHandler, e.readyChecks(), log); err != nil {
			return nil, err
		}
	}
	if cfg.Role == RoleAll && cfg.SamplePatients > 0 {
		if err := loadSample(ctx, e.js, e.cfg.SamplePatients, e.log); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *Engine) has(role string) bool { return e.cfg.Role == RoleAll || e.cfg.Role == role }

func (e *Engine) build(ctx context.Context, tune Tuning, sc streams.Config) error {
	tp, mp := e.tel.Tracer, e.tel.Meter
	if e.has(RoleIngester) {
		cfg := withDefaults(tune.Ingester, ingester.DefaultConfig())
		in, err := ingester.New(cfg, ingester.Deps{JS: e.js, Store: e.store, Log: e.log.With("service", "ingester"), Tracer: tp, Meter: mp})
		if err != nil {
			return err
		}
		e.runners = append(e.runners, runner{"ingester", stageIngest, in.Run})
	}
	if e.has(RolePlanner) {
		cfg := withDefaults(tune.Planner, planner.DefaultConfig())
		if e.cfg.Retention > 0 {
			cfg.Retention = e.cfg.Retention
		}
		if e.cfg.ChangeLogRetention > 0 {
			cfg.ChangeLogRetention = e.cfg.ChangeLogRetention
		}
		if e.cfg.TaskRows > 0 {
			cfg.TaskRows = e.cfg.TaskRows
		}
		if e.cfg.MaxFileResources > 0 {
			cfg.MaxFileResources = e.cfg.MaxFileResources
		}
		p, err := planner.New(cfg, planner.Deps{JS: e.js, Store: e.store, Log: e.log.With("service", "planner"), Tracer: tp, Meter: mp})
		if err != nil {
			return err
		}
		e.runners = append(e.runners, runner{"planner", stageWork, p.Run})
	}
	if e.has(RoleWriter) {
		cfg := withDefaults(tune.Writer, writer.DefaultConfig())
		if tune.Writer.MaxDeliver == 0 {
			cfg.MaxDeliver = sc.TaskMaxDeliver // the consumer's
		}
		switch e.cfg.FileCompression {
		case "gzip":
			cfg.CompressFiles = true
		case "none":
			cfg.CompressFiles = false
		}
		for i := range e.cfg.Writers {
			w, err := writer.New(cfg, writer.Deps{JS: e.js, Store: e.store, Log: e.log.With("service", "writer", "writer", i), Tracer: tp, Meter: mp})
			if err != nil {
				return err
			}
			e.runners = append(e.runners, runner{fmt.Sprintf("writer %d", i), stageWork, w.Run})
		}
	}
	if e.has(RoleAPI) {
		cfg := api.DefaultConfig()
		cfg.Listen, cfg.BaseURL, cfg.PollRate, cfg.MaxConnsPerIP = e.cfg.Listen, e.cfg.BaseURL, e.cfg.PollRate, e.cfg.MaxConnsPerIP
		cfg.MaxDownloadsPerClient, cfg.MaxWritesPerClient = e.cfg.MaxDownloadsPerClient, e.cfg.MaxWritesPerClient
		cfg.Auth, cfg.AdminToken, cfg.TLSCertFile, cfg.TLSKeyFile = e.cfg.Auth, e.cfg.AdminToken, e.cfg.TLSCert, e.cfg.TLSKey
		if cfg.PollRate == 0 {
			cfg.PollBurst = 0
		}
		srv, err := api.New(ctx, cfg, api.Deps{NC: e.nc, JS: e.js, Store: e.store, Log: e.log.With("service", "api"), Tracer: tp, Meter: mp})
		if err != nil {
			return err
		}
		if e.apiLn, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
		ln := e.apiLn
		e.runners = append(e.runners, runner{"api", stageAPI, func(ctx context.Context) error { return srv.Serve(ctx, ln) }})
	}
	return nil
}

// loadSample fills an empty store with generated data, once: nothing is
// loaded when CHANGES holds a change.
func loadSample(ctx context.Context, js jetstream.JetStream, patients int, log *slog.Logger) error {
	last, err := streams.LastChangeSeq(ctx, js)
	if err != nil {
		return err
	}
	if last > 0 {
		return nil
	}
	log.Info("loading sample data", slog.Int("patients", patients))
	pub := streams.NewChangePublisher(js)
	n := 0
	err = synth.Generate(ctx, synth.Config{Patients: patients, Seed: 1}, func(typ string, body []byte) error {
		n++
		id, err := idOf(body)
		if err != nil {
			return err
		}
		return pub.Put(ctx, typ, id, append([]byte(nil), body...))
	})
	if err == nil {
		err = pub.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("load sample data: %w", err)
	}
	log.Info("sample data loaded", slog.Int("resources", n))
	return nil
}

// APIURL is the API's base URL on its listen address: https when it
// serves TLS (role all or api; empty otherwise).
func (e *Engine) APIURL() string {
	if e.apiLn == nil {
		return ""
	}
	if e.cfg.TLSCert != "" {
		return "https://" + e.APIAddr()
	}
	return "http://" + e.APIAddr()
}

// OperatorAddr is the address of the metrics and probes server
// (FLATFHIR_METRICS_LISTEN), empty when there is none.
func (e *Engine) OperatorAddr() string {
	if e.operator == nil {
		return ""
	}
	return e.operator.Addr()
}

// DebugAddr is the address of the profiles server (FLATFHIR_DEBUG_LISTEN),
// or "" when there is none.
func (e *Engine) DebugAddr() string {
	if e.debug == nil {
		return ""
	}
	return e.debug.Addr()
}

// APIAddr is where the API listens (role all or api).
func (e *Engine) APIAddr() string {
	if e.apiLn == nil {
		return ""
	}
	return e.apiLn.Addr().String()
}

// Run runs every service until ctx is done or one fails, then shuts down
// in stages, each after the one before has stopped: the API first (no new
// work; requests in flight are answered), then the planner and writers
// (their unfinished messages go back to other replicas), then the ingester
// (every change accepted so far is applied), and last NATS and ClickHouse.
func (e *Engine) Run(ctx context.Context) error {
	defer e.close()
	failed, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	var stageCtx [stages]context.Context
	var stop [stages]context.CancelFunc
	var wg [stages]sync.WaitGroup
	for i := range stages {
		// A stage's context outlives the caller's: it ends only when Run
		// stops that stage.
		stageCtx[i], stop[i] = context.WithCancel(context.WithoutCancel(ctx))
		defer stop[i]()
	}
	for _, r := range e.runners {
		wg[r.stage].Add(1)
		go func() {
			defer wg[r.stage].Done()
			if err := r.run(stageCtx[r.stage]); err != nil {
				fail(fmt.Errorf("%s: %w", r.name, err))
			}
			e.log.Debug("service stopped", slog.String("service", r.name))
		}()
	}
	e.running.Store(true)
	<-failed.Done()
	e.running.Store(false)
	for i := range stages {
		stop[i]()
		wg[i].Wait()
	}
	e.log.Info("engine stopped")
	if err := context.Cause(failed); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func (e *Engine) close() {
	if e.debug != nil {
		e.debug.close()
	}
	if e.operator != nil {
		e.operator.close()
	}
	if e.nc != nil {
		// Every service has stopped: send what they queued (acks and naks
		// of messages they gave up) before the connection and server go.
		_ = e.nc.FlushTimeout(5 * time.Second)
		e.nc.Close()
	}
	if e.store != nil {
		_ = e.store.Close()
	}
	if e.natsSrv != nil {
		e.natsSrv.Shutdown()
	}
	if e.chSrv != nil {
		_ = e.chSrv.Stop()
	}
	if e.tel != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.tel.Shutdown(sctx)
	}
}
