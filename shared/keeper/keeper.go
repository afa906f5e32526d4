// Package keeper starts a local ZooKeeper as a child process on loopback,
// the coordination service ClickHouse 18.16's replicated tables need. It
// runs Debian's zookeeper package (the jar, on Java) in standalone mode
// with its own data directory: the one-machine cluster and the cluster
// tests use it. Deployments run ZooKeeper or ClickHouse Keeper as their
// operators do.
package keeper

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flatfhir/flatfhir/shared/childproc"
)

// Config says where ZooKeeper keeps data and listens.
type Config struct {
	// Dir holds data and logs; it is reused across restarts.
	Dir string
	// Port is the client port; 0 picks a free one.
	Port int
	// Jar overrides the ZooKeeper jar (default: Debian's).
	Jar string
	// ReadyTimeout bounds the wait until it serves.
	ReadyTimeout time.Duration
}

// DefaultJar is where Debian's zookeeper package puts the server.
const DefaultJar = "/usr/share/java/zookeeper.jar"

// simpleLogger is Debian's SLF4J binding that logs to stderr.
const simpleLogger = "/usr/share/java/slf4j-simple.jar"

// ErrNotInstalled means Java or the ZooKeeper jar is missing.
var ErrNotInstalled = errors.New("zookeeper is not installed (install the Debian package zookeeper, or run make deps-cluster)")

// Server is a running local ZooKeeper.
type Server struct {
	proc *childproc.Proc
	addr string
}

// Start starts ZooKeeper and waits until it serves requests.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("zookeeper directory is required")
	}
	if cfg.Jar == "" {
		cfg.Jar = DefaultJar
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return nil, ErrNotInstalled
	}
	if _, err := os.Stat(cfg.Jar); err != nil {
		return nil, ErrNotInstalled
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, fmt.Errorf("create zookeeper directory: %w", err)
	}
	if cfg.Port == 0 {
		if cfg.Port, err = childproc.FreePort(); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(dir, "zoo.cfg")
	body := fmt.Sprintf("tickTime=500\ndataDir=%s\nclientPort=%d\nclientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,mntr\n",
		filepath.Join(dir, "data"), cfg.Port)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, fmt.Errorf("write zookeeper config: %w", err)
	}
	classpath := cfg.Jar
	if _, err := os.Stat(simpleLogger); err == nil {
		classpath += ":" + simpleLogger // logs to zookeeper.log instead of nowhere
	}
	cmd := exec.Command(java, "-Xmx256m", "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain", conf)
	cmd.Dir = dir
	proc, err := childproc.Start(cmd, filepath.Join(dir, "zookeeper.log"))
	if err != nil {
		return nil, fmt.Errorf("zookeeper: %w", err)
	}
	s := &Server{proc: proc, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port))}
	if err := proc.WaitReady(ctx, cfg.ReadyTimeout, func() bool { return serving(s.addr) }); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("zookeeper at %s (log in %s): %w", s.addr, dir, err)
	}
	log.Info("zookeeper started", slog.String("addr", s.addr), slog.String("dir", dir))
	return s, nil
}

// Addr is host:port of the client port.
func (s *Server) Addr() string { return s.addr }

// Stop terminates ZooKeeper and waits for it to exit.
func (s *Server) Stop() error {
	s.proc.Stop(10 * time.Second)
	return nil
}

// serving asks the four-letter "srvr" command whether the server serves
// requests. "ruok" answers "imok" as soon as the process listens, while a
// restarted server may still be loading its data and drops every session:
// a ClickHouse server starting then gives up on its replicated tables.
func serving(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("srvr")); err != nil {
		return false
	}
	out, _ := io.ReadAll(bufio.NewReader(c))
	return strings.Contains(string(out), "Mode: ")
}
