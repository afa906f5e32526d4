package streams

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Config sizes the JetStream definitions.
type Config struct {
	// Replicas is the stream and bucket replication factor (1 on one
	// machine, 3 on a cluster).
	Replicas int
	// ChangesMaxAge bounds how long a change stays in CHANGES after it was
	// published; the ingester must have consumed it by then.
	ChangesMaxAge time.Duration
	// TaskAckWait is how long a writer may hold a task without a heartbeat
	// before it is handed to another writer: about how long a task of a
	// writer that died waits. Writers send five heartbeats per ack wait.
	TaskAckWait time.Duration
	// TaskMaxDeliver bounds the attempts at one task.
	TaskMaxDeliver int
	// Memory keeps everything in memory (tests only).
	Memory bool
}

// DefaultConfig is the one-machine configuration.
func DefaultConfig() Config {
	return Config{Replicas: 1, ChangesMaxAge: 7 * 24 * time.Hour, TaskAckWait: 5 * time.Second, TaskMaxDeliver: 8}
}

func (c Config) storage() jetstream.StorageType {
	if c.Memory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

// Ensure creates or updates every stream, consumer, bucket and object store.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	streams := []jetstream.StreamConfig{
		{
			Name:        StreamChanges,
			Description: "resource changes, in the order they were accepted",
			Subjects:    []string{subjectChangesAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      cfg.ChangesMaxAge,
			Storage:     cfg.storage(),
			Replicas:    cfg.Replicas,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        StreamExportJobs,
			Description: "export kick-offs, task completions and cancellations for planners",
			Subjects:    []string{subjectJobsAll},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     cfg.storage(),
			Replicas:    cfg.Replicas,
		},
		{
			Name:        StreamExportTasks,
			Description: "export tasks for writers",
			Subjects:    []string{subjectTasksAll},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     cfg.storage(),
			Replicas:    cfg.Replicas,
		},
	}
	for _, sc := range streams {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	consumers := []struct {
		stream string
		cfg    jetstream.ConsumerConfig
	}{
		{StreamExportJobs, jetstream.ConsumerConfig{
			Durable: ConsumerPlanner, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: 30 * time.Second, MaxDeliver: -1, MaxAckPending: 1000,
		}},
		{StreamExportTasks, jetstream.ConsumerConfig{
			Durable: ConsumerWriters, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: cfg.TaskAckWait, MaxDeliver: cfg.TaskMaxDeliver, MaxAckPending: 10000,
		}},
	}
	for _, c := range consumers {
		if _, err := js.CreateOrUpdateConsumer(ctx, c.stream, c.cfg); err != nil {
			return fmt.Errorf("ensure consumer %s on %s: %w", c.cfg.Durable, c.stream, err)
		}
	}
	kvs := []jetstream.KeyValueConfig{
		{Bucket: BucketJobs, Description: "export jobs and task results", History: 1, Storage: cfg.storage(), Replicas: cfg.Replicas},
		{Bucket: BucketIngest, Description: "ingest watermark", History: 1, Storage: cfg.storage(), Replicas: cfg.Replicas},
		{Bucket: BucketAuthClients, Description: "registered SMART backend clients", History: 5, Storage: cfg.storage(), Replicas: cfg.Replicas},
		{Bucket: BucketAuthKeys, Description: "access-token signing keys", History: 5, Storage: cfg.storage(), Replicas: cfg.Replicas},
		{Bucket: BucketAuthJTI, Description: "client assertion ids seen, for replay refusal", History: 1, TTL: AuthJTITTL, Storage: cfg.storage(), Replicas: cfg.Replicas},
	}
	for _, kc := range kvs {
		if _, err := js.CreateOrUpdateKeyValue(ctx, kc); err != nil {
			return fmt.Errorf("ensure key-value bucket %s: %w", kc.Bucket, err)
		}
		if err := leaderReads(ctx, js, cfg, "KV_"+kc.Bucket); err != nil {
			return err
		}
	}
	oc := jetstream.ObjectStoreConfig{Bucket: ObjectFiles, Description: "export files and manifests", Storage: cfg.storage(), Replicas: cfg.Replicas}
	if _, err := js.CreateOrUpdateObjectStore(ctx, oc); err != nil {
		return fmt.Errorf("ensure object store %s: %w", oc.Bucket, err)
	}
	return leaderReads(ctx, js, cfg, "OBJ_"+ObjectFiles)
}

// leaderReads makes the reads of a replicated bucket go to its stream's
// leader. The client libraries create buckets with direct gets, which any
// replica answers: a follower that has not applied a write yet answers
// without it, so a job just created could read as missing, or a file just
// written as absent. Handles opened after this read from the leader.
func leaderReads(ctx context.Context, js jetstream.JetStream, cfg Config, name string) error {
	if cfg.Replicas < 2 {
		return nil
	}
	s, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("open stream %s: %w", name, err)
	}
	sc := s.CachedInfo().Config
	if !sc.AllowDirect && !sc.MirrorDirect {
		return nil
	}
	sc.AllowDirect, sc.MirrorDirect = false, false
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		return fmt.Errorf("make %s read from its leader: %w", name, err)
	}
	return nil
}
