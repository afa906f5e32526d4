package streams_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// TestStreamsOnAThreeNodeCluster: at three replicas every stream, bucket and
// the object store live on all three nodes; when the node leading CHANGES
// shuts down, a client connected to the cluster reconnects and carries on:
// no file, change or watermark is lost, and new ones are accepted.
func TestStreamsOnAThreeNodeCluster(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3)
	nc, js := testenv.JetStream(t, c.URL())
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cfg := streams.DefaultConfig()
	cfg.Replicas = 3
	if err := streams.Ensure(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{streams.StreamChanges, streams.StreamExportJobs, streams.StreamExportTasks, "KV_" + streams.BucketIngest, "OBJ_" + streams.ObjectFiles} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("stream %s: %d replicas configured, cluster %+v; want 3 on three nodes", name, info.Config.Replicas, info.Cluster)
		}
		if strings.HasPrefix(name, "KV_") || strings.HasPrefix(name, "OBJ_") {
			if info.Config.AllowDirect {
				t.Errorf("bucket stream %s allows direct gets: a follower may answer a read without the last write", name)
			}
		}
	}
	obj, err := js.ObjectStore(ctx, streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	file := bytes.Repeat([]byte(`{"resourceType":"Patient","id":"p"}`+"\n"), 20_000) // several chunks
	if _, err := obj.PutBytes(ctx, "job1/Patient.000.ndjson", file); err != nil {
		t.Fatal(err)
	}
	pub := streams.NewChangePublisher(js)
	for i := range 100 {
		if err := pub.Put(ctx, "Patient", "p"+string(rune('a'+i%26)), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, streams.BucketIngest)
	if err != nil {
		t.Fatal(err)
	}
	wm := streams.Watermark{Seq: 100, Stamp: time.Now().UTC().Truncate(time.Microsecond)}
	rev, err := kv.Create(ctx, streams.KeyWatermark, streams.Encode(wm))
	if err != nil {
		t.Fatal(err)
	}

	// The node leading CHANGES goes down.
	changes, err := js.Stream(ctx, streams.StreamChanges)
	if err != nil {
		t.Fatal(err)
	}
	info, err := changes.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := info.Cluster.Leader
	down := -1
	for i, n := range c.Nodes {
		if n.Name() == leader {
			down = i
		}
	}
	if down < 0 {
		t.Fatalf("no node is named %q, the CHANGES leader", leader)
	}
	// A second client knows only the leader's URL: it learns the others
	// from the cluster, as a service given one address would.
	nc2, js2 := testenv.JetStream(t, c.Nodes[down].URL())
	c.Nodes[down].Shutdown()
	t.Logf("shut down %s, the CHANGES leader; the first client was on %s", leader, nc.ConnectedServerName())

	// Everything is still there, and new writes pass, once a new leader is
	// elected.
	// A JetStream request made while the cluster elects a leader may get
	// no answer: every call below is bounded.
	testenv.Eventually(t, time.Minute, "CHANGES to elect a new leader", func() bool {
		info, err := changes.Info(short(ctx, t))
		return err == nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != leader
	})
	got, err := obj.GetBytes(ctx, "job1/Patient.000.ndjson")
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("file after the node loss: %d bytes, %v; want the %d stored", len(got), err, len(file))
	}
	if last, err := streams.LastChangeSeq(ctx, js); err != nil || last != 100 {
		t.Errorf("last change after the node loss: %d, %v; want 100", last, err)
	}
	back, _, err := streams.LoadWatermark(ctx, js)
	if err != nil || back != wm {
		t.Errorf("watermark after the node loss: %+v, %v; want %+v", back, err, wm)
	}
	testenv.Eventually(t, time.Minute, "a change to be accepted after the node loss", func() bool {
		_, err := streams.PublishChange(short(ctx, t), js, streams.OpPut, "Patient", "late", []byte(`{}`))
		return err == nil
	})
	if _, err := kv.Update(ctx, streams.KeyWatermark, streams.Encode(streams.Watermark{Seq: 101, Stamp: wm.Stamp.Add(time.Second)}), rev); err != nil {
		t.Errorf("advance the watermark after the node loss: %v", err)
	}
	if nc.Status() != nats.CONNECTED {
		t.Errorf("client status %v after the node loss, want connected", nc.Status())
	}
	testenv.Eventually(t, time.Minute, "the leader's client to reconnect to another node", func() bool {
		return nc2.Status() == nats.CONNECTED && nc2.ConnectedServerName() != leader
	})
	obj2, err := js2.ObjectStore(ctx, streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := obj2.GetBytes(ctx, "job1/Patient.000.ndjson"); err != nil || !bytes.Equal(got, file) {
		t.Errorf("file read by the reconnected client: %d bytes, %v", len(got), err)
	}

	// The node comes back and catches up.
	c.Restart(down)
	testenv.Eventually(t, time.Minute, "the restarted node to catch up", func() bool {
		info, err := changes.Info(short(ctx, t))
		if err != nil || info.Cluster == nil {
			return false
		}
		if info.Cluster.Leader == leader {
			return true
		}
		for _, r := range info.Cluster.Replicas {
			if r.Name == leader {
				return r.Current && !r.Offline
			}
		}
		return false
	})
}

// short bounds one request to 5 s.
func short(ctx context.Context, t *testing.T) context.Context {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	t.Cleanup(cancel)
	return c
}
