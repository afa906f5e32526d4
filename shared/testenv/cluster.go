package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/childproc"
	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/keeper"
	"github.com/flatfhir/flatfhir/shared/natsembed"
)

// Cluster is a real local ClickHouse cluster for one test: shards of
// replicated servers, one process each, coordinated by a local ZooKeeper.
// Everything stops with the test.
type Cluster struct {
	t       testing.TB
	dir     string
	Keeper  *keeper.Server
	Servers [][]*chserver.Server // by shard, then replica
}

// ClickHouseCluster starts ZooKeeper and shards × replicas ClickHouse
// servers. A missing ZooKeeper or ClickHouse fails the test (make deps
// installs both).
func ClickHouseCluster(t testing.TB, shards, replicas int) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := &Cluster{t: t, dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs())
		}
	})
	zk, err := keeper.Start(ctx, keeper.Config{Dir: filepath.Join(c.dir, "zk")}, Logger(t))
	if err != nil {
		t.Fatalf("start zookeeper: %v", err)
	}
	t.Cleanup(func() { _ = zk.Stop() })
	c.Keeper = zk
	for i := range shards {
		var row []*chserver.Server
		for j := range replicas {
			cfg := chserver.Config{
				Dir:            filepath.Join(c.dir, fmt.Sprintf("s%dr%d", i+1, j+1)),
				ZooKeeper:      []string{zk.Addr()},
				MaxMemoryUsage: 2 << 30,
			}
			srv, err := chserver.Start(ctx, cfg, Logger(t))
			if err != nil {
				t.Fatalf("start clickhouse shard %d replica %d: %v", i+1, j+1, err)
			}
			t.Cleanup(func() { _ = srv.Stop() })
			row = append(row, srv)
		}
		c.Servers = append(c.Servers, row)
	}
	return c
}

// Shards is the cluster's layout as chstore.Config.Shards names it.
func (c *Cluster) Shards() [][]string {
	out := make([][]string, len(c.Servers))
	for i, row := range c.Servers {
		for _, s := range row {
			out[i] = append(out[i], s.Addr())
		}
	}
	return out
}

// Config is a store configuration for a fresh database on the cluster.
func (c *Cluster) Config() chstore.Config {
	return chstore.Config{
		Shards:        c.Shards(),
		Database:      fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1)),
		QuorumTimeout: 5 * time.Second,
	}
}

// Restart starts again a server the test killed or stopped, on its data
// and ports.
func (c *Cluster) Restart(shard, replica int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := c.Servers[shard][replica].Config()
	cfg.ForceRestore = true // it may have died with parts ZooKeeper never recorded
	srv, err := chserver.Start(ctx, cfg, Logger(c.t))
	if err != nil {
		c.t.Fatalf("restart clickhouse shard %d replica %d: %v", shard+1, replica+1, err)
	}
	c.t.Cleanup(func() { _ = srv.Stop() })
	c.Servers[shard][replica] = srv
}

// Logs is the tail of every server's log, for a failure's report.
func (c *Cluster) Logs() string { return LogTails(c.dir) }

// LogTails is the last 3,000 bytes of every .log file under dir, each
// headed by its place, for a failed test's report.
func LogTails(dir string) string {
	var b strings.Builder
	_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && strings.HasSuffix(p, ".log") {
			data, _ := os.ReadFile(p)
			if len(data) > 3000 {
				data = data[len(data)-3000:]
			}
			rel, _ := filepath.Rel(dir, p)
			fmt.Fprintf(&b, "== %s\n%s\n", rel, data)
		}
		return nil
	})
	return b.String()
}

// NATSCluster is a JetStream cluster of in-process servers with loopback
// routes, for one test.
type NATSCluster struct {
	Nodes []*natsembed.Server
	cfgs  []natsembed.Config
	t     testing.TB
}

// StartNATSCluster starts n JetStream servers routed to each other and
// waits until the cluster serves JetStream.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	c := &NATSCluster{t: t}
	var routes []string
	for i := range n {
		client, err := childproc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		cluster, err := childproc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		c.cfgs = append(c.cfgs, natsembed.Config{
			Port: client, ClusterPort: cluster, Name: fmt.Sprintf("n%d", i+1),
			StoreDir: t.TempDir(), ReadyTimeout: 30 * time.Second,
		})
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", cluster))
	}
	c.Nodes = make([]*natsembed.Server, n)
	for i := range c.cfgs {
		c.cfgs[i].Routes = routes
		c.start(i)
	}
	_, js := JetStream(t, c.URL())
	Eventually(t, 30*time.Second, "the JetStream cluster to elect a leader", func() bool {
		_, err := js.AccountInfo(t.Context())
		return err == nil
	})
	return c
}

func (c *NATSCluster) start(i int) {
	srv, err := natsembed.Start(c.cfgs[i])
	if err != nil {
		c.t.Fatalf("start nats node %d: %v", i+1, err)
	}
	c.t.Cleanup(srv.Shutdown)
	c.Nodes[i] = srv
}

// URL lists every node's client URL, as nats.Connect takes a cluster.
func (c *NATSCluster) URL() string {
	urls := make([]string, len(c.cfgs))
	for i, cfg := range c.cfgs {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", cfg.Port)
	}
	return strings.Join(urls, ",")
}

// Restart starts node i again on its data, after the test shut it down.
func (c *NATSCluster) Restart(i int) { c.start(i) }
