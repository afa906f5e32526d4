// Package chserver starts a local ClickHouse server as a child process with
// its own data directory on loopback: the one-machine mode and the test
// harness use it. It works with Debian's clickhouse-server (18.16) and with
// current releases (the single "clickhouse" binary).
package chserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"text/template"
	"time"

	"github.com/flatfhir/flatfhir/shared/childproc"
)

// Config says where the server keeps data and listens.
type Config struct {
	// Dir holds config, data and logs. It is reused across restarts.
	Dir string
	// TCPPort is the native protocol port; 0 picks a free one.
	TCPPort int
	// Binary overrides the server binary lookup.
	Binary string
	// ReadyTimeout bounds the wait for the server to accept connections.
	ReadyTimeout time.Duration
	// MaxMemoryUsage caps one query's memory, in bytes.
	MaxMemoryUsage int64
	// ZooKeeper, when set (host:port each), coordinates replicated
	// tables; the server then also serves its parts to its replicas on
	// InterserverPort (0 picks a free one).
	ZooKeeper       []string
	InterserverPort int
	// ForceRestore starts a replicated server that died (kill -9, power
	// loss) even when it holds parts its coordination service never
	// recorded: ClickHouse detaches them and fetches what its replicas
	// have (the flags/force_restore_data file). Such parts were never
	// acknowledged to a quorum insert.
	ForceRestore bool
}

// zkNode is one ZooKeeper server in the configuration.
type zkNode struct {
	Host string
	Port string
}

// templateData is what the configuration template reads.
type templateData struct {
	Config
	ZKNodes []zkNode
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("clickhouse directory is required")
	}
	if c.TCPPort < 0 || c.TCPPort > 65535 {
		return fmt.Errorf("clickhouse tcp port %d out of range", c.TCPPort)
	}
	return nil
}

// Server is a running local ClickHouse.
type Server struct {
	proc *childproc.Proc
	addr string
	cfg  Config
}

// ErrNoBinary means no ClickHouse server binary is installed.
var ErrNoBinary = errors.New("no clickhouse-server or clickhouse binary on PATH (install the clickhouse-server package, or run make deps)")

// FindBinary returns the server binary and the arguments that select the
// server mode.
func FindBinary(override string) (string, []string, error) {
	if override != "" {
		return override, nil, nil
	}
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return p, nil, nil
	}
	if p, err := exec.LookPath("clickhouse"); err == nil {
		return p, []string{"server"}, nil
	}
	return "", nil, ErrNoBinary
}

var configTemplate = template.Must(template.New("config").Parse(`<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{{.Dir}}/log/clickhouse-server.log</log>
    <errorlog>{{.Dir}}/log/clickhouse-server.err.log</errorlog>
    <size>50M</size>
    <count>2</count>
  </logger>
  <tcp_port>{{.TCPPort}}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{{.Dir}}/data/</path>
  <tmp_path>{{.Dir}}/tmp/</tmp_path>
  <user_files_path>{{.Dir}}/user_files/</user_files_path>
  <format_schema_path>{{.Dir}}/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <profiles>
    <default>
      <max_memory_usage>{{.MaxMemoryUsage}}</max_memory_usage>
    </default>
  </profiles>
  <quotas>
    <default>
      <interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval>
    </default>
  </quotas>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
{{- if .ZKNodes}}
  <interserver_http_port>{{.InterserverPort}}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <zookeeper>
{{- range .ZKNodes}}
    <node><host>{{.Host}}</host><port>{{.Port}}</port></node>
{{- end}}
    <session_timeout_ms>10000</session_timeout_ms>
  </zookeeper>
{{- end}}
  <timezone>UTC</timezone>
</yandex>
`))

// Start writes the configuration into cfg.Dir, starts the server and waits
// until it accepts connections. The server dies with this process.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bin, args, err := FindBinary(cfg.Binary)
	if err != nil {
		return nil, err
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	if cfg.MaxMemoryUsage == 0 {
		cfg.MaxMemoryUsage = 8 << 30
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolve clickhouse directory: %w", err)
	}
	cfg.Dir = dir
	for _, sub := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("create clickhouse directory: %w", err)
		}
	}
	if cfg.ForceRestore {
		if err := os.MkdirAll(filepath.Join(dir, "data", "flags"), 0o755); err != nil {
			return nil, fmt.Errorf("create clickhouse directory: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "data", "flags", "force_restore_data"), nil, 0o644); err != nil {
			return nil, fmt.Errorf("flag clickhouse data for restoring: %w", err)
		}
	}
	if cfg.TCPPort == 0 {
		if cfg.TCPPort, err = childproc.FreePort(); err != nil {
			return nil, err
		}
	}
	// A server already on the port would answer for ours and hide that ours
	// failed to bind.
	if childproc.Dialable(net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.TCPPort))) {
		return nil, fmt.Errorf("port %d is already in use: stop what listens there or choose another ClickHouse port", cfg.TCPPort)
	}
	data := templateData{Config: cfg}
	for _, a := range cfg.ZooKeeper {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("zookeeper address %q: %w", a, err)
		}
		data.ZKNodes = append(data.ZKNodes, zkNode{host, port})
	}
	if len(data.ZKNodes) > 0 && data.InterserverPort == 0 {
		if data.InterserverPort, err = childproc.FreePort(); err != nil {
			return nil, err
		}
	}
	confPath := filepath.Join(dir, "config.xml")
	f, err := os.Create(confPath)
	if err != nil {
		return nil, fmt.Errorf("write clickhouse config: %w", err)
	}
	if err := configTemplate.Execute(f, data); err != nil {
		f.Close()
		return nil, fmt.Errorf("write clickhouse config: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write clickhouse config: %w", err)
	}

	args = append(args, "--config-file="+confPath)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	// The server must not outlive us, whatever way we exit.
	proc, err := childproc.Start(cmd, filepath.Join(dir, "log", "stdout.log"))
	if err != nil {
		return nil, fmt.Errorf("clickhouse: %w", err)
	}
	cfg.InterserverPort = data.InterserverPort
	s := &Server{proc: proc, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.TCPPort)), cfg: cfg}
	if err := proc.WaitReady(ctx, cfg.ReadyTimeout, func() bool { return childproc.Dialable(s.addr) }); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("clickhouse at %s (logs in %s): %w", s.addr, filepath.Join(dir, "log"), err)
	}
	log.Info("clickhouse started", slog.String("addr", s.addr), slog.String("dir", dir))
	return s, nil
}

// Addr is host:port of the native protocol.
func (s *Server) Addr() string { return s.addr }

// Config is the configuration the server runs with, ports included: Start
// with it restarts the same server on the same data.
func (s *Server) Config() Config { return s.cfg }

// Kill kills the server with SIGKILL, as a crash would.
func (s *Server) Kill() { s.proc.Kill() }

// Stop terminates the server and waits for it to exit.
func (s *Server) Stop() error {
	s.proc.Stop(15 * time.Second)
	return nil
}
