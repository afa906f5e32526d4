//go:build clustertest

// The cluster tier (make test-cluster): the engine as make run-cluster runs
// it, one process per server and role, on a 2×2 ClickHouse cluster and a
// 3-node NATS cluster, through the Synthea round trip, the chained-export
// check and chaos.

package flatfhir_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/bulkclient/chain"
	"github.com/flatfhir/flatfhir/shared/childproc"
	"github.com/flatfhir/flatfhir/shared/sampledata"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// clusterConfig builds the flatfhir binary and describes the cluster.
func clusterConfig(t *testing.T) flatfhir.ClusterConfig {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "flatfhir")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/flatfhir").CombinedOutput(); err != nil {
		t.Fatalf("build flatfhir: %v\n%s", err, out)
	}
	port, err := childproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return flatfhir.ClusterConfig{
		Dir: filepath.Join(dir, "cluster"), Binary: bin, Listen: "127.0.0.1:" + strconv.Itoa(port),
		// Small tasks and files, so that splitting and rollover happen.
		Env: []string{"FLATFHIR_TASK_ROWS=4000", "FLATFHIR_MAX_FILE_RESOURCES=1500", "FLATFHIR_LOG_LEVEL=info"},
	}
}

// startLocalCluster starts the cluster, stopped with the test.
func startLocalCluster(t *testing.T, cfg flatfhir.ClusterConfig) *flatfhir.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c, err := flatfhir.StartCluster(ctx, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// chaos is one failure made while a chained-export run goes on, and its
// repair.
type chaos struct {
	name   string
	breaks func(t *testing.T, c *flatfhir.Cluster) string // returns what it broke
	repair func(t *testing.T, c *flatfhir.Cluster, broken string)
}

// outage is how long each failure lasts before its repair.
const outage = 8 * time.Second

func TestCluster(t *testing.T) {
	cfg := clusterConfig(t)
	c := startLocalCluster(t, cfg)
	base := c.APIURL()
	t.Run("synthea round trip", func(t *testing.T) {
		checkRoundTrip(t, base, ingestSet(t, base, sampledata.Any(t)))
	})
	var baseline time.Duration
	t.Run("chained exports", func(t *testing.T) {
		baseline, _ = runChain(t, c, "zc", nil)
	})
	for i, k := range []chaos{
		{
			name: "kill -9 a ClickHouse replica",
			breaks: func(t *testing.T, c *flatfhir.Cluster) string {
				c.KillClickHouse(0, 0)
				return "shard 1 replica 1"
			},
			repair: func(t *testing.T, c *flatfhir.Cluster, _ string) {
				if err := c.RestartClickHouse(t.Context(), 0, 0); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "kill -9 the NATS node leading CHANGES",
			breaks: func(t *testing.T, c *flatfhir.Cluster) string {
				leader := changesLeader(t, c)
				if err := c.Kill(leader); err != nil {
					t.Error(err)
				}
				return leader
			},
			repair: restartProcess,
		},
		{
			name: "kill -9 an ingester",
			breaks: func(t *testing.T, c *flatfhir.Cluster) string {
				name := activeIngester(t, c)
				if err := c.Kill(name); err != nil {
					t.Error(err)
				}
				return name
			},
			repair: restartProcess,
		},
		{
			name: "kill -9 a writer",
			breaks: func(t *testing.T, c *flatfhir.Cluster) string {
				if err := c.Kill("writer1"); err != nil {
					t.Error(err)
				}
				return "writer1"
			},
			repair: restartProcess,
		},
		{
			name: "stop and restart a whole shard",
			breaks: func(t *testing.T, c *flatfhir.Cluster) string {
				c.StopClickHouse(1, 0)
				c.StopClickHouse(1, 1)
				return "shard 2"
			},
			repair: func(t *testing.T, c *flatfhir.Cluster, _ string) {
				for r := range 2 {
					if err := c.RestartClickHouse(t.Context(), 1, r); err != nil {
						t.Error(err)
					}
				}
			},
		},
	} {
		t.Run(k.name, func(t *testing.T) {
			start := time.Now()
			d, rep := runChain(t, c, fmt.Sprintf("zk%d", i+1), &k)
			if d-baseline > time.Minute {
				// Not a failure (every round was verified), but the cause
				// of a slow recovery is in what the engine logged.
				t.Logf("%s: the run took %.0fs longer than without failures; what the engine warned of meanwhile:\n%s",
					k.name, (d - baseline).Seconds(), engineLog(c, start, false))
			}
			t.Logf("%s: the chained run took %.1fs, %.1fs more than without failures (the outage lasted %s); "+
				"%d requests sent again after 503 or 429, %d transient status answers waited out; every round verified",
				k.name, d.Seconds(), (d - baseline).Seconds(), outage, rep.Retried, rep.Transient)
		})
	}
	// Stopped and started again, as make run-cluster is after Ctrl-C: the
	// same servers on the same ports and data, everything still there.
	t.Run("restart on its data", func(t *testing.T) {
		before := exportedCount(t, c.APIURL())
		c.Stop()
		c = startLocalCluster(t, cfg)
		if after := exportedCount(t, c.APIURL()); after != before {
			t.Errorf("an export after the restart holds %d resources, %d before", after, before)
		}
	})
}

// engineLog is the last 30 lines each process logged since start: at
// every level with all, else at WARN or ERROR only.
func engineLog(c *flatfhir.Cluster, start time.Time, all bool) string {
	var b strings.Builder
	for _, name := range c.Processes() {
		data, err := os.ReadFile(filepath.Join(c.LogDir(), name+".log"))
		if err != nil {
			continue
		}
		var lines []string
		for line := range strings.Lines(string(data)) {
			// The engine logs JSON lines (shared/telemetry).
			var e struct {
				Time  time.Time
				Level string
			}
			if json.Unmarshal([]byte(line), &e) != nil || !all && e.Level != "WARN" && e.Level != "ERROR" || e.Time.Before(start) {
				continue
			}
			lines = append(lines, line)
		}
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		if len(lines) > 0 {
			fmt.Fprintf(&b, "== %s\n%s", name, strings.Join(lines, ""))
		}
	}
	return b.String()
}

// exportedCount runs a system export and counts the resources in its
// manifest.
func exportedCount(t *testing.T, base string) int {
	t.Helper()
	m, _, _ := await(t, kickoff(t, base+"/$export"))
	n := 0
	for _, o := range m.Output {
		n += *o.Count
	}
	if n == 0 {
		t.Fatal("an export of the cluster holds nothing")
	}
	return n
}

func restartProcess(t *testing.T, c *flatfhir.Cluster, name string) {
	if err := c.Restart(t.Context(), name); err != nil {
		t.Error(err)
	}
}

// runChain runs the chained-export check (every round's replica must equal
// the source at its transactionTime). With k, the failure happens once the
// first round is verified, while the second round's changes are ingested
// and its export runs, and is repaired outage later.
func runChain(t *testing.T, c *flatfhir.Cluster, prefix string, k *chaos) (time.Duration, chain.Report) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	rounds := make(chan struct{}, 8)
	var wg sync.WaitGroup
	if k != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-rounds:
			case <-ctx.Done():
				return
			}
			broken := k.breaks(t, c)
			t.Logf("broke %s", broken)
			select {
			case <-time.After(outage):
			case <-ctx.Done():
			}
			k.repair(t, c, broken)
			t.Logf("repaired %s", broken)
		}()
	}
	start := time.Now()
	rep, err := chain.Run(ctx, chain.Config{
		Base: c.APIURL(), Rounds: 4, Changes: 24, Pool: 10, Concurrent: 40, Seed: 11, Prefix: prefix,
		Timeout: 5 * time.Minute, Progress: roundWriter{t, rounds},
	})
	d := time.Since(start)
	// A run that ended before its failure was made or its outage was over
	// has the failure repaired now, not when ctx would have expired (a
	// run that failed in its first round held the test for 10 minutes).
	cancel()
	wg.Wait()
	if err != nil {
		// Everything logged, not only warnings: a run that stalls (an
		// export that never completes) may warn of nothing.
		t.Fatalf("%v\nwhat the engine logged during the run:\n%s", err, engineLog(c, start, true))
	}
	if rep.Rounds != 4 || rep.Compared == 0 {
		t.Errorf("the run did not complete its rounds: %+v", rep)
	}
	return d, rep
}

// roundWriter logs the chain's progress and signals each verified round.
type roundWriter struct {
	t      *testing.T
	rounds chan struct{}
}

func (w roundWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	select {
	case w.rounds <- struct{}{}:
	default:
	}
	return len(p), nil
}

// changesLeader is the cluster process of the NATS node leading CHANGES.
func changesLeader(t *testing.T, c *flatfhir.Cluster) string {
	t.Helper()
	_, js := testenv.JetStream(t, c.NATSURL())
	s, err := js.Stream(t.Context(), streams.StreamChanges)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("CHANGES has no leader: %v", err)
	}
	return info.Cluster.Leader // the node names are the process names
}

// activeIngester is the cluster process holding partition 0 of CHANGES.
func activeIngester(t *testing.T, c *flatfhir.Cluster) string {
	t.Helper()
	_, js := testenv.JetStream(t, c.NATSURL())
	kv, err := js.KeyValue(t.Context(), streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(t.Context(), streams.KeyPartition(0))
	if err != nil {
		t.Fatalf("no ingester ever claimed partition 0: %v", err)
	}
	var st streams.PartitionState
	if err := streams.Decode(e.Value(), &st); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(st.Owner, "/") // host/pid/random
	if len(parts) != 3 {
		t.Fatalf("partition 0's owner %q", st.Owner)
	}
	for _, name := range c.Processes() {
		if strings.HasPrefix(name, "ingester") && strconv.Itoa(c.Pid(name)) == parts[1] {
			return name
		}
	}
	t.Fatal(errors.New("partition 0's owner is no ingester of the cluster"))
	return ""
}
