package chstore

import (
	"context"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/metric"
	"hash/fnv"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Table is the name of the resource-versions table.
const Table = "resource_versions"

// ChangesTable is the name of the change log: the same rows as Table,
// ordered by time, which _since reads scan only the window of.
const ChangesTable = "resource_changes"

// feedView copies every insert into Table into ChangesTable.
const feedView = "resource_changes_feed"

// horizonTable records from when on the change log holds every version.
const horizonTable = "resource_changes_horizon"

// HashBuckets is how many equal slices of the 32-bit id hash space the
// planner counts resources in.
const HashBuckets = 1024

// HashSpace is the size of the id hash space.
const HashSpace = uint64(1) << 32

// Config says how to reach ClickHouse.
type Config struct {
	// Addr is one server, or the replicas of a store of one shard.
	Addr []string
	// Shards, when set, replaces Addr: each shard's replicas (ADR 0007).
	Shards [][]string
	// Replicated makes the tables ReplicatedMergeTree even where a shard
	// has one replica, so that replicas can be added later. It is implied
	// when a shard lists several. The servers need ZooKeeper (or
	// ClickHouse Keeper) configured.
	Replicated bool
	// ReplicationPath is the coordination path under which each shard's
	// tables live: <path>/<database>/<shard>/<table>.
	ReplicationPath string
	// QuorumTimeout bounds how long an insert waits for a majority of a
	// shard's replicas.
	QuorumTimeout time.Duration
	Database      string
	Username      string
	Password      string
	// DialTimeout bounds connecting.
	DialTimeout time.Duration
	// ReadBlockRows and ReadBlockBytes bound the rows, and the bytes of
	// the largest column (the bodies), that ClickHouse sends per block on
	// a read: a reader holds a few blocks at a time (the one it scans and
	// those the driver decoded ahead), so they bound its memory whatever
	// the size of the resources.
	ReadBlockRows  int
	ReadBlockBytes int
	MaxOpenConns   int
	// Meter, when set, receives the operations' durations
	// (db.client.operation.duration).
	Meter metric.MeterProvider
}

var dbName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// Validate checks the configuration.
func (c Config) Validate() error {
	if len(c.Addr) == 0 && len(c.Shards) == 0 {
		return errors.New("clickhouse address is required")
	}
	if len(c.Shards) > HashBuckets {
		return fmt.Errorf("%d clickhouse shards: at most %d, one per hash bucket", len(c.Shards), HashBuckets)
	}
	for i, replicas := range c.Shards {
		if len(replicas) == 0 {
			return fmt.Errorf("clickhouse shard %d names no replica", i+1)
		}
	}
	if strings.ContainsAny(c.ReplicationPath, "'\\") {
		return fmt.Errorf("clickhouse replication path %q holds a quote or a backslash", c.ReplicationPath)
	}
	if !dbName.MatchString(c.Database) {
		return fmt.Errorf("clickhouse database name %q is not a plain identifier", c.Database)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Database == "" {
		c.Database = "flatfhir"
	}
	if c.Username == "" {
		c.Username = "default"
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.ReadBlockRows == 0 {
		c.ReadBlockRows = 2048
	}
	if c.ReadBlockBytes == 0 {
		c.ReadBlockBytes = 256 << 10
	}
	if c.MaxOpenConns == 0 {
		c.MaxOpenConns = 16
	}
	if len(c.Shards) == 0 {
		c.Shards = [][]string{c.Addr}
	}
	for _, replicas := range c.Shards {
		if len(replicas) > 1 {
			c.Replicated = true
		}
	}
	if c.ReplicationPath == "" {
		c.ReplicationPath = "/clickhouse/flatfhir"
	}
	if c.QuorumTimeout == 0 {
		c.QuorumTimeout = 30 * time.Second
	}
}

// Store is a connection to ClickHouse holding the resource versions.
type Store struct {
	shards     []*shard
	replicated bool
	cfg        Config
	version    Version
	table      string
	changes    string
	feed       string
	log        *slog.Logger
	stopWatch  func() // ends the replica health checks and waits for them
	ops        metric.Float64Histogram
}

// Open connects to every shard, creates the database and tables where
// missing, and returns the store.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ops, err := newOpsHistogram(cfg.Meter)
	if err != nil {
		return nil, err
	}
	s := &Store{
		ops:        ops,
		cfg:        cfg,
		replicated: cfg.Replicated,
		table:      cfg.Database + "." + Table,
		changes:    cfg.Database + "." + ChangesTable,
		feed:       cfg.Database + "." + feedView,
		log:        log,
	}
	for i, replicas := range cfg.Shards {
		sh, err := s.openShard(ctx, i, replicas)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.shards = append(s.shards, sh)
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if s.replicated {
		s.checkReplicas(ctx)
		wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		s.stopWatch = func() { stop(); <-done }
		go func() {
			defer close(done)
			s.watchReplicas(wctx)
		}()
	}
	if h, err := s.Horizon(ctx); err == nil && h > 0 && log != nil {
		log.Info("change log holds versions after its horizon; older _since reads scan the versions table",
			slog.Uint64("horizon_us", h))
	}
	return s, nil
}

// openShard opens the pool of one shard's replicas and reads the server
// version (the same release everywhere is assumed; the first shard's
// decides the DDL).
func (s *Store) openShard(ctx context.Context, i int, replicas []string) (*shard, error) {
	sh := &shard{index: i, replicas: replicas}
	opts := &clickhouse.Options{
		Addr:             replicas,
		Auth:             clickhouse.Auth{Username: s.cfg.Username, Password: s.cfg.Password},
		DialTimeout:      s.cfg.DialTimeout,
		MaxOpenConns:     s.cfg.MaxOpenConns,
		ConnOpenStrategy: clickhouse.ConnOpenRoundRobin,
	}
	if s.replicated {
		sh.quorum = len(replicas)/2 + 1
		// Connections are dialled only to caught-up replicas, and renewed
		// often enough that one falling behind stops serving soon.
		for _, addr := range replicas {
			r := &replica{addr: addr}
			r.ready.Store(true) // until the first check, after the migration
			sh.health = append(sh.health, r)
		}
		opts.DialStrategy = sh.dial
		opts.ConnMaxLifetime = time.Minute
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %v: %w", replicas, err)
	}
	sh.conn, sh.wconn = conn, conn
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("ping clickhouse %v: %w", replicas, err)
	}
	if s.replicated {
		wopts := *opts
		wopts.DialStrategy = nil // round robin over every replica, skipping those that refuse
		if sh.wconn, err = clickhouse.Open(&wopts); err != nil {
			conn.Close()
			return nil, fmt.Errorf("open clickhouse %v: %w", replicas, err)
		}
	}
	if i == 0 {
		sv, err := conn.ServerVersion()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("read clickhouse server version: %w", err)
		}
		s.version = Version{Major: int(sv.Version.Major), Minor: int(sv.Version.Minor)}
	}
	return sh, nil
}

// Close releases the connections.
func (s *Store) Close() error {
	if s.stopWatch != nil {
		s.stopWatch()
	}
	var errs []error
	for _, sh := range s.shards {
		errs = append(errs, sh.conn.Close())
		if sh.wconn != sh.conn {
			errs = append(errs, sh.wconn.Close())
		}
		for _, r := range sh.health {
			if r.conn != nil {
				errs = append(errs, r.conn.Close())
			}
		}
	}
	return errors.Join(errs...)
}

// Ping reports whether every shard answers (any of its replicas), as a
// readiness probe asks.
func (s *Store) Ping(ctx context.Context) error {
	for i, sh := range s.shards {
		if err := sh.conn.Ping(ctx); err != nil {
			return fmt.Errorf("clickhouse shard %d: %w", i+1, err)
		}
	}
	return nil
}

// Version is the server's release.
func (s *Store) Version() Version { return s.version }

// Conn exposes the first shard's connection pool, for benchmarks that
// measure raw reads and tests that look at stored rows.
func (s *Store) Conn() driver.Conn { return s.shards[0].conn }

// ShardConns exposes each shard's connection pool, in shard order, for
// benchmarks that read every row and tests that look at stored rows.
func (s *Store) ShardConns() []driver.Conn {
	out := make([]driver.Conn, len(s.shards))
	for i, sh := range s.shards {
		out[i] = sh.conn
	}
	return out
}

// TableName is the fully qualified table name.
func (s *Store) TableName() string { return s.table }

// migrate creates what is missing on every replica of every shard: DDL on
// replicated tables runs on each replica, which registers it at its
// shard's coordination path. A replica that does not answer is left for
// the next start, as long as its shard has another.
func (s *Store) migrate(ctx context.Context) error {
	for _, sh := range s.shards {
		done := 0
		var last error
		for _, addr := range sh.replicas {
			err := s.migrateReplica(ctx, sh, addr)
			if err == nil {
				done++
				continue
			}
			last = err
			if s.log != nil {
				s.log.WarnContext(ctx, "clickhouse replica not migrated", slog.Int("shard", sh.index+1), slog.String("replica", addr), slog.Any("error", err))
			}
		}
		if done == 0 {
			return last
		}
	}
	return nil
}

// dialReplica opens a connection to one replica alone.
func (s *Store) dialReplica(addr string) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{addr},
		Auth:         clickhouse.Auth{Username: s.cfg.Username, Password: s.cfg.Password},
		DialTimeout:  s.cfg.DialTimeout,
		MaxOpenConns: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", addr, err)
	}
	return conn, nil
}

// migrateReplica runs the DDL on one replica, over its own connection.
func (s *Store) migrateReplica(ctx context.Context, sh *shard, addr string) error {
	conn, err := s.dialReplica(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	engine, err := s.engineFor(ctx, conn, sh, addr)
	if err != nil {
		return err
	}
	if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+s.cfg.Database); err != nil {
		return fmt.Errorf("create database %s on %s: %w", s.cfg.Database, addr, err)
	}
	if err := conn.Exec(ctx, createTableSQL(s.table, s.version, engine(Table))); err != nil {
		return fmt.Errorf("create table %s on %s: %w", s.table, addr, err)
	}
	return s.migrateChanges(ctx, conn, engine)
}

// engineFor returns, for one replica, the table engine clause of a table:
// MergeTree, or ReplicatedMergeTree at the shard's coordination path under
// the replica's name. The name is the server's {replica} macro where its
// configuration defines one, as operators of replicated clusters do, and
// else the address it was reached at.
func (s *Store) engineFor(ctx context.Context, conn driver.Conn, sh *shard, addr string) (func(table string) string, error) {
	if !s.replicated {
		return func(string) string { return "MergeTree" }, nil
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.macros WHERE macro = 'replica'").Scan(&n); err != nil {
		return nil, fmt.Errorf("read the macros of %s: %w", addr, err)
	}
	replica := "{replica}"
	if n == 0 {
		replica = addr
	}
	return func(table string) string {
		return fmt.Sprintf("ReplicatedMergeTree('%s/%s/%d/%s', '%s')", s.cfg.ReplicationPath, s.cfg.Database, sh.index+1, table, replica)
	}, nil
}

// migrateChanges creates, on one replica, the change log and the feed, a
// materialized view that copies every insert into the versions table into
// the change log, server-side (on a replicated shard, each replica's view
// copies the inserts made there, and the change log replicates). A store
// that held versions before the feed existed records the latest stamp as
// the horizon, before and again after creating the feed: _since reads from
// before it scan the versions table instead. A crash in between only
// repeats the step.
func (s *Store) migrateChanges(ctx context.Context, conn driver.Conn, engine func(table string) string) error {
	var exists uint8
	if err := conn.QueryRow(ctx, "EXISTS TABLE "+s.feed).Scan(&exists); err != nil {
		return fmt.Errorf("look for table %s: %w", s.feed, err)
	}
	horizons := s.cfg.Database + "." + horizonTable
	horizonEngine := "Log"
	if s.replicated {
		horizonEngine = engine(horizonTable) + " ORDER BY horizon"
	}
	if err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+horizons+" (horizon UInt64) ENGINE = "+horizonEngine); err != nil {
		return fmt.Errorf("create table %s: %w", horizons, err)
	}
	if exists == 0 {
		// Server-side: the native protocol's INSERT ... VALUES waits for
		// data blocks from the client.
		// A fresh store needs no horizon: the change log holds everything.
		raise := "INSERT INTO " + horizons + " (horizon) SELECT max(last_updated) AS h FROM " + s.table + " HAVING h > 0"
		if err := conn.Exec(ctx, raise); err != nil {
			return fmt.Errorf("record the change log horizon: %w", err)
		}
		if err := conn.Exec(ctx, createChangesSQL(s.changes, s.version, engine(ChangesTable))); err != nil {
			return fmt.Errorf("create table %s: %w", s.changes, err)
		}
		feed := "CREATE MATERIALIZED VIEW IF NOT EXISTS " + s.feed + " TO " + s.changes +
			" AS SELECT " + Columns + " FROM " + s.table
		if err := conn.Exec(ctx, feed); err != nil {
			return fmt.Errorf("create view %s: %w", s.feed, err)
		}
		// Versions stored while the feed was being created are older than
		// this.
		if err := conn.Exec(ctx, raise); err != nil {
			return fmt.Errorf("record the change log horizon: %w", err)
		}
	}
	return nil
}

// horizonRefresh is how long a store trusts the horizon it read. Trimming
// the change log raises the horizon, then waits longer than this before it
// drops anything (see TrimChangeLog).
const horizonRefresh = 10 * time.Second

// Horizon is the stamp (microseconds) after which the change log holds
// every version, on every shard, as read at most horizonRefresh ago.
func (s *Store) Horizon(ctx context.Context) (uint64, error) {
	var h uint64
	for _, sh := range s.shards {
		v, err := s.horizonOf(ctx, sh)
		if err != nil {
			return 0, err
		}
		h = max(h, v)
	}
	return h, nil
}

// horizonOf is the horizon of one shard's change log.
func (s *Store) horizonOf(ctx context.Context, sh *shard) (uint64, error) {
	sh.hmu.Lock()
	defer sh.hmu.Unlock()
	if !sh.refreshed.IsZero() && time.Since(sh.refreshed) < horizonRefresh {
		return sh.horizon, nil
	}
	var h uint64
	if err := sh.conn.QueryRow(s.readCtx(ctx, nil), "SELECT max(horizon) FROM "+s.cfg.Database+"."+horizonTable).Scan(&h); err != nil {
		return 0, fmt.Errorf("read the change log horizon: %w", err)
	}
	sh.horizon, sh.refreshed = h, time.Now()
	return h, nil
}

// Version is a ClickHouse release number.
type Version struct{ Major, Minor int }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// CreateTableSQL is the DDL of the resource-versions table for a server of
// version v. Servers from 20.3 get LowCardinality types and ZSTD-compressed
// bodies; older ones plain types with the server's default compression.
//
// Its granules are small (VersionsGranularity rows): the point lookups of
// single reads, writes and compartments read a whole granule of bodies,
// which at the default of 8,192 rows is tens of megabytes.
func CreateTableSQL(table string, v Version) string {
	return createTableSQL(table, v, "MergeTree")
}

func createTableSQL(table string, v Version, engine string) string {
	return createSQL(table, v, "type, id_hash, id, seq", engine) + fmt.Sprintf("\nSETTINGS index_granularity = %d", VersionsGranularity)
}

// VersionsGranularity is the index granularity of the versions table.
const VersionsGranularity = 512

// CreateChangesSQL is the DDL of the change log: the versions again,
// sorted by stamp within a type, so a _since read touches only the
// granules of its window (ADR 0003).
func CreateChangesSQL(table string, v Version) string {
	return createChangesSQL(table, v, "MergeTree")
}

func createChangesSQL(table string, v Version, engine string) string {
	return createSQL(table, v, "type, last_updated, id_hash, id, seq", engine)
}

func createSQL(table string, v Version, key, engine string) string {
	typeCol, bodyCol := "String", "String"
	if v.AtLeast(20, 3) {
		typeCol, bodyCol = "LowCardinality(String)", "String CODEC(ZSTD(3))"
	}
	return `CREATE TABLE IF NOT EXISTS ` + table + ` (
	type ` + typeCol + `,
	id String,
	id_hash UInt32,
	seq UInt64,
	last_updated UInt64,
	deleted UInt8,
	patients Array(String),
	body ` + bodyCol + `
) ENGINE = ` + engine + `
PARTITION BY toYYYYMM(toDate(toDateTime(intDiv(last_updated, 1000000))))
ORDER BY (` + key + `)`
}

// IDHash is the hash that spreads resources over key ranges.
func IDHash(id string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(id))
	return h.Sum32()
}

// Micros is t in microseconds since the Unix epoch, the unit of
// last_updated. Times before the epoch map to 0.
func Micros(t time.Time) uint64 {
	if t.IsZero() || t.Before(time.Unix(0, 0)) {
		return 0
	}
	return uint64(t.UnixMicro())
}
