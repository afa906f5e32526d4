package flatfhir

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/childproc"
	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/keeper"
	"github.com/flatfhir/flatfhir/shared/natsembed"
	"github.com/flatfhir/flatfhir/streams"
)

// ClusterConfig describes a real cluster on this machine (make run-cluster):
// ZooKeeper, Shards × Replicas ClickHouse servers, a JetStream cluster of
// NATSNodes, and the engine as one process per role instance. Every
// process listens on loopback and keeps its data under Dir.
type ClusterConfig struct {
	Dir string
	// Binary is the flatfhir executable the NATS nodes and the engine's
	// processes run.
	Binary string
	// Listen is the API's address (127.0.0.1:8080).
	Listen                                          string
	Shards, Replicas, NATSNodes, Ingesters, Writers int
	// SamplePatients are generated and loaded into an empty cluster.
	SamplePatients int
	// Env adds FLATFHIR_* settings for the engine's processes.
	Env []string
}

func (c *ClusterConfig) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	for _, v := range []*int{&c.Shards, &c.Replicas, &c.Ingesters, &c.Writers} {
		if *v == 0 {
			*v = 2
		}
	}
	if c.NATSNodes == 0 {
		c.NATSNodes = 3
	}
}

// clusterLayout is the ports of a cluster, kept in Dir so that a restart
// finds each server where its peers (and ClickHouse's replica names,
// which are addresses) expect it.
type clusterLayout struct {
	ZooKeeper   int
	NATS        []int // client ports
	NATSRoutes  []int
	ClickHouse  [][]int // by shard, then replica
	Interserver [][]int
}

// Cluster is a running local cluster.
type Cluster struct {
	cfg    ClusterConfig
	layout clusterLayout
	log    *slog.Logger
	zk     *keeper.Server

	mu    sync.Mutex
	ch    [][]*chserver.Server
	procs map[string]*clusterProc
	order []string // start order, for Stop to reverse
}

// clusterProc is one process of the cluster that runs the flatfhir binary.
type clusterProc struct {
	args []string
	env  []string
	dir  string
	proc *childproc.Proc
}

// StartCluster starts every server and process of the cluster, loads the
// sample data into an empty one, and returns when the API answers.
func StartCluster(ctx context.Context, cfg ClusterConfig, log *slog.Logger) (_ *Cluster, err error) {
	cfg.setDefaults()
	if cfg.Dir == "" || cfg.Binary == "" {
		return nil, errors.New("a cluster needs a directory and the flatfhir binary")
	}
	c := &Cluster{cfg: cfg, log: log, procs: map[string]*clusterProc{}}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := c.loadLayout(); err != nil {
		return nil, err
	}
	if c.zk, err = keeper.Start(ctx, keeper.Config{Dir: filepath.Join(cfg.Dir, "zookeeper"), Port: c.layout.ZooKeeper}, log); err != nil {
		return nil, err
	}
	c.ch = make([][]*chserver.Server, cfg.Shards)
	for s := range cfg.Shards {
		c.ch[s] = make([]*chserver.Server, cfg.Replicas)
		for r := range cfg.Replicas {
			if err := c.startClickHouse(ctx, s, r); err != nil {
				return nil, err
			}
		}
	}
	for i := range cfg.NATSNodes {
		if err := c.startNATSNode(ctx, i); err != nil {
			return nil, err
		}
	}
	if err := c.awaitJetStream(ctx); err != nil {
		return nil, err
	}
	for _, role := range c.roles() {
		if err := c.startRole(ctx, role); err != nil {
			return nil, err
		}
	}
	if err := c.awaitAPI(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// loadLayout reads the ports of an earlier run, or picks free ones.
func (c *Cluster) loadLayout() error {
	path := filepath.Join(c.cfg.Dir, "cluster.json")
	if data, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(data, &c.layout); err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if len(c.layout.NATS) == c.cfg.NATSNodes && len(c.layout.ClickHouse) == c.cfg.Shards && len(c.layout.ClickHouse[0]) == c.cfg.Replicas {
			return nil
		}
		return fmt.Errorf("%s holds a cluster of another shape; remove %s to start afresh", path, c.cfg.Dir)
	}
	var errs []error
	port := func() int {
		p, err := childproc.FreePort()
		errs = append(errs, err)
		return p
	}
	l := clusterLayout{ZooKeeper: port()}
	for range c.cfg.NATSNodes {
		l.NATS, l.NATSRoutes = append(l.NATS, port()), append(l.NATSRoutes, port())
	}
	for range c.cfg.Shards {
		var tcp, inter []int
		for range c.cfg.Replicas {
			tcp, inter = append(tcp, port()), append(inter, port())
		}
		l.ClickHouse, l.Interserver = append(l.ClickHouse, tcp), append(l.Interserver, inter)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.layout = l
	data, _ := json.MarshalIndent(l, "", "  ")
	if err := os.MkdirAll(c.cfg.Dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// startClickHouse starts one server. It may have died last time (kill -9,
// or the launcher itself killed) with parts ZooKeeper never recorded:
// force_restore_data detaches those, none of them acknowledged to a quorum
// insert, and the server fetches what its replicas hold.
func (c *Cluster) startClickHouse(ctx context.Context, s, r int) error {
	srv, err := chserver.Start(ctx, chserver.Config{
		ForceRestore:    true,
		Dir:             filepath.Join(c.cfg.Dir, fmt.Sprintf("clickhouse-s%dr%d", s+1, r+1)),
		TCPPort:         c.layout.ClickHouse[s][r],
		InterserverPort: c.layout.Interserver[s][r],
		ZooKeeper:       []string{c.zk.Addr()},
		MaxMemoryUsage:  4 << 30,
	}, c.log)
	if err != nil {
		return fmt.Errorf("clickhouse shard %d replica %d: %w", s+1, r+1, err)
	}
	c.mu.Lock()
	c.ch[s][r] = srv
	c.mu.Unlock()
	return nil
}

// natsNodeName is the name of NATS node i (0-based) in a cluster, as
// JetStream reports a stream's leader.
func natsNodeName(i int) string { return fmt.Sprintf("nats%d", i+1) }

func (c *Cluster) startNATSNode(ctx context.Context, i int) error {
	var routes []string
	for _, p := range c.layout.NATSRoutes {
		routes = append(routes, "127.0.0.1:"+strconv.Itoa(p))
	}
	name := natsNodeName(i)
	p := &clusterProc{
		args: []string{"nats-node", "--name", name, "--port", strconv.Itoa(c.layout.NATS[i]),
			"--cluster-port", strconv.Itoa(c.layout.NATSRoutes[i]), "--routes", strings.Join(routes, ","),
			"--dir", filepath.Join(c.cfg.Dir, name)},
		dir: filepath.Join(c.cfg.Dir, name),
	}
	c.add(name, p)
	return c.launch(ctx, name, func() bool { return childproc.Dialable(fmt.Sprintf("127.0.0.1:%d", c.layout.NATS[i])) })
}

// NATSURL lists every node's client URL.
func (c *Cluster) NATSURL() string {
	urls := make([]string, len(c.layout.NATS))
	for i, p := range c.layout.NATS {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", p)
	}
	return strings.Join(urls, ",")
}

// ClickHouseShards is the cluster's layout as FLATFHIR_CLICKHOUSE_SHARDS
// names it.
func (c *Cluster) ClickHouseShards() string {
	var shards []string
	for _, row := range c.layout.ClickHouse {
		var replicas []string
		for _, p := range row {
			replicas = append(replicas, fmt.Sprintf("127.0.0.1:%d", p))
		}
		shards = append(shards, strings.Join(replicas, ","))
	}
	return strings.Join(shards, ";")
}

// awaitJetStream waits until the NATS cluster serves JetStream, then
// creates the streams at three replicas and loads the sample data.
func (c *Cluster) awaitJetStream(ctx context.Context) error {
	nc, err := nats.Connect(c.NATSURL(), nats.Name("flatfhir-cluster"))
	if err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		sc := streams.DefaultConfig()
		sc.Replicas = min(3, c.cfg.NATSNodes)
		// A JetStream request sent before the cluster has elected its
		// meta leader gets no answer: each attempt is bounded.
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = streams.Ensure(actx, js, sc)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the NATS cluster does not serve JetStream: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if c.cfg.SamplePatients > 0 {
		return loadSample(ctx, js, c.cfg.SamplePatients, c.log)
	}
	return nil
}

// roles lists the engine's processes: one API, the ingesters, one
// planner, the writers.
func (c *Cluster) roles() []string {
	out := []string{RoleAPI}
	for i := range c.cfg.Ingesters {
		out = append(out, fmt.Sprintf("%s%d", RoleIngester, i+1))
	}
	out = append(out, RolePlanner)
	for i := range c.cfg.Writers {
		out = append(out, fmt.Sprintf("%s%d", RoleWriter, i+1))
	}
	return out
}

func (c *Cluster) startRole(ctx context.Context, name string) error {
	role := strings.TrimRight(name, "0123456789")
	env := append([]string{
		"FLATFHIR_ROLE=" + role,
		"FLATFHIR_NATS_URL=" + c.NATSURL(),
		"FLATFHIR_CLICKHOUSE_SHARDS=" + c.ClickHouseShards(),
		"FLATFHIR_REPLICAS=" + strconv.Itoa(min(3, c.cfg.NATSNodes)),
		"FLATFHIR_DATA_DIR=" + filepath.Join(c.cfg.Dir, name),
		"FLATFHIR_LISTEN=" + c.cfg.Listen,
		"FLATFHIR_WRITERS=1",
		"FLATFHIR_AUTH=off",
		// NATS keeps every file three times: store them compressed
		// (ADR 0009; the default, named here as the Compose file does).
		"FLATFHIR_FILE_COMPRESSION=gzip",
	}, c.cfg.Env...)
	c.add(name, &clusterProc{env: env, dir: filepath.Join(c.cfg.Dir, name)})
	return c.launch(ctx, name, nil)
}

func (c *Cluster) add(name string, p *clusterProc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs[name] = p
	if !slices.Contains(c.order, name) {
		c.order = append(c.order, name)
	}
}

// launch starts (or starts again) a process of the cluster, logging to
// Dir/logs/<name>.log, and waits for ready when it is given.
func (c *Cluster) launch(ctx context.Context, name string, ready func() bool) error {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(c.LogDir(), 0o755); err != nil {
		return err
	}
	cmd := exec.Command(c.cfg.Binary, p.args...)
	// The cluster's settings, not this shell's: a FLATFHIR_CLICKHOUSE_ADDR
	// left in the environment would contradict the shards.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLATFHIR_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, p.env...)
	cmd.Dir = p.dir
	proc, err := childproc.Start(cmd, filepath.Join(c.LogDir(), name+".log"))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	c.mu.Lock()
	p.proc = proc
	c.mu.Unlock()
	if ready == nil {
		return nil
	}
	if err := proc.WaitReady(ctx, time.Minute, ready); err != nil {
		return fmt.Errorf("%s (log in %s): %w", name, filepath.Join(c.LogDir(), name+".log"), err)
	}
	return nil
}

func (c *Cluster) awaitAPI(ctx context.Context) error {
	c.mu.Lock()
	p := c.procs[RoleAPI]
	c.mu.Unlock()
	if err := p.proc.WaitReady(ctx, 2*time.Minute, func() bool { return childproc.Dialable(c.cfg.Listen) }); err != nil {
		return fmt.Errorf("api (log in %s): %w", filepath.Join(c.LogDir(), "api.log"), err)
	}
	return nil
}

// APIURL is the FHIR base of the cluster's API.
func (c *Cluster) APIURL() string { return "http://" + c.cfg.Listen }

// LogDir holds the log of each process of the cluster, <name>.log.
func (c *Cluster) LogDir() string { return filepath.Join(c.cfg.Dir, "logs") }

// Processes names the cluster's processes that run the flatfhir binary:
// nats1.., api, ingester1.., planner, writer1...
func (c *Cluster) Processes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.order)
}

// Kill kills a process of the cluster with SIGKILL, as a crash would.
func (c *Cluster) Kill(name string) error {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil || p.proc == nil {
		return fmt.Errorf("no process %q in the cluster", name)
	}
	p.proc.Kill()
	return nil
}

// Pid is the process id of a process of the cluster (0 when not running).
func (c *Cluster) Pid(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.procs[name]; p != nil && p.proc != nil {
		return p.proc.Pid()
	}
	return 0
}

// Restart starts a killed or stopped process again, on its data.
func (c *Cluster) Restart(ctx context.Context, name string) error {
	var ready func() bool
	for i := range c.cfg.NATSNodes {
		if name == natsNodeName(i) {
			addr := fmt.Sprintf("127.0.0.1:%d", c.layout.NATS[i])
			ready = func() bool { return childproc.Dialable(addr) }
		}
	}
	return c.launch(ctx, name, ready)
}

// KillClickHouse kills one ClickHouse server with SIGKILL.
func (c *Cluster) KillClickHouse(shard, replica int) {
	c.mu.Lock()
	srv := c.ch[shard][replica]
	c.mu.Unlock()
	srv.Kill()
}

// StopClickHouse stops one ClickHouse server cleanly.
func (c *Cluster) StopClickHouse(shard, replica int) {
	c.mu.Lock()
	srv := c.ch[shard][replica]
	c.mu.Unlock()
	_ = srv.Stop()
}

// RestartClickHouse starts a killed or stopped ClickHouse server again.
func (c *Cluster) RestartClickHouse(ctx context.Context, shard, replica int) error {
	return c.startClickHouse(ctx, shard, replica)
}

// Stop stops the engine's processes, then NATS, ClickHouse and ZooKeeper.
func (c *Cluster) Stop() {
	c.mu.Lock()
	order := slices.Clone(c.order)
	procs := c.procs
	c.mu.Unlock()
	slices.Reverse(order)
	for _, name := range order {
		if p := procs[name]; p != nil && p.proc != nil {
			p.proc.Stop(15 * time.Second)
		}
	}
	for _, row := range c.ch {
		for _, srv := range row {
			if srv != nil {
				_ = srv.Stop()
			}
		}
	}
	if c.zk != nil {
		_ = c.zk.Stop()
	}
}

// natsNode runs one node of a JetStream cluster until ctx is done: the
// processes of make run-cluster.
func natsNode(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nats-node", flag.ContinueOnError)
	name := fs.String("name", "nats1", "the node's name")
	port := fs.Int("port", 4222, "client port")
	clusterPort := fs.Int("cluster-port", 6222, "route port")
	routes := fs.String("routes", "", "the cluster's route addresses, host:port, comma-separated")
	dir := fs.String("dir", "", "JetStream store directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("nats-node needs --dir")
	}
	var rs []string
	for _, r := range strings.Split(*routes, ",") {
		if r = strings.TrimSpace(r); r != "" {
			if _, _, err := net.SplitHostPort(r); err != nil {
				return fmt.Errorf("route %q: %w", r, err)
			}
			rs = append(rs, r)
		}
	}
	srv, err := natsembed.Start(natsembed.Config{
		Name: *name, Port: *port, ClusterPort: *clusterPort, Routes: rs, StoreDir: *dir, ReadyTimeout: time.Minute,
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	srv.Shutdown()
	return nil
}

// clusterCommand runs make run-cluster: it starts a local cluster, prints
// how to export from it, and stops it all at Ctrl-C.
func clusterCommand(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	cfg := ClusterConfig{}
	fs.StringVar(&cfg.Dir, "dir", filepath.Join(env("FLATFHIR_DATA_DIR", "var"), "cluster"), "data and logs of every process")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "API address")
	fs.IntVar(&cfg.Shards, "shards", 2, "ClickHouse shards")
	fs.IntVar(&cfg.Replicas, "replicas", 2, "ClickHouse replicas per shard")
	fs.IntVar(&cfg.NATSNodes, "nats", 3, "NATS nodes")
	fs.IntVar(&cfg.Ingesters, "ingesters", 2, "ingester processes")
	fs.IntVar(&cfg.Writers, "writers", 2, "writer processes")
	fs.IntVar(&cfg.SamplePatients, "sample-patients", 200, "generated patients loaded into an empty cluster")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Binary = bin
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := StartCluster(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer c.Stop()
	welcome(out, "cluster", c.APIURL(), false)
	fmt.Fprintf(out, `
The cluster: %d ClickHouse shards x %d replicas (%s),
a %d-node NATS JetStream cluster (%s), and the engine as processes: %s.
Logs: %s. Ctrl-C stops everything; data stays in %s.
`, cfg.Shards, cfg.Replicas, c.ClickHouseShards(), cfg.NATSNodes, c.NATSURL(),
		strings.Join(c.Processes()[cfg.NATSNodes:], ", "), filepath.Join(cfg.Dir, "logs"), cfg.Dir)
	<-ctx.Done()
	return nil
}
