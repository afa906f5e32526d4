package chserver_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/keeper"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestChServerReplicas: two servers on one ZooKeeper replicate a table and
// the change feed a materialized view fills; a quorum insert is seen by
// both, fails fast while a replica is down, and a read asking for
// sequential consistency is served by the surviving replica.
func TestChServerReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	defer func() {
		if t.Failed() {
			t.Log(testenv.LogTails(dir))
		}
	}()
	zk, err := keeper.Start(ctx, keeper.Config{Dir: filepath.Join(dir, "zk")}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer zk.Stop()
	var servers []*chserver.Server
	var conns []clickhouse.Conn
	for _, name := range []string{"r1", "r2"} {
		s, err := chserver.Start(ctx, chserver.Config{Dir: filepath.Join(dir, name), ZooKeeper: []string{zk.Addr()}}, testenv.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Stop()
		servers = append(servers, s)
		c, err := clickhouse.Open(&clickhouse.Options{Addr: []string{s.Addr()}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		for _, q := range []string{
			"CREATE DATABASE IF NOT EXISTS d",
			"CREATE TABLE d.v (id String, seq UInt64) ENGINE = ReplicatedMergeTree('/t/v', '" + name + "') ORDER BY (id, seq)",
			"CREATE TABLE d.c (id String, seq UInt64) ENGINE = ReplicatedMergeTree('/t/c', '" + name + "') ORDER BY (seq, id)",
			"CREATE MATERIALIZED VIEW d.feed TO d.c AS SELECT id, seq FROM d.v",
		} {
			if err := c.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %s: %v", name, q, err)
			}
		}
	}
	quorum := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_quorum": 2, "insert_quorum_timeout": 20000}))
	insert := func(c clickhouse.Conn, id string, seq uint64) error {
		b, err := c.PrepareBatch(quorum, "INSERT INTO d.v (id, seq)")
		if err != nil {
			return err
		}
		if err := b.Append(id, seq); err != nil {
			return err
		}
		return b.Send()
	}
	if err := insert(conns[0], "a", 1); err != nil {
		t.Fatalf("quorum insert: %v", err)
	}
	consistent := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"select_sequential_consistency": 1}))
	count := func(c clickhouse.Conn, table string) (uint64, error) {
		var n uint64
		err := c.QueryRow(consistent, "SELECT count() FROM d."+table).Scan(&n)
		return n, err
	}
	for i, c := range conns {
		for _, table := range []string{"v", "c"} {
			if n, err := count(c, table); err != nil || n != 1 {
				t.Errorf("replica %d table %s right after a quorum insert: %d rows, %v", i+1, table, n, err)
			}
		}
	}
	if err := servers[1].Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = insert(conns[0], "b", 2)
	if err == nil || !strings.Contains(err.Error(), "quorum") {
		t.Errorf("quorum insert with a replica down: %v, want a quorum error", err)
	}
	t.Logf("quorum insert with a replica down failed after %s: %v", time.Since(start), err)
	if n, err := count(conns[0], "v"); err != nil || n != 1 {
		t.Errorf("surviving replica: %d rows, %v", n, err)
	}
}
