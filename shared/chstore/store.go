package chstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"regexp"
	"sync"
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
	Addr     []string
	Database string
	Username string
	Password string
	// DialTimeout bounds connecting; ReadBlockRows bounds the rows
	// ClickHouse sends per block on a read (and so a reader's memory).
	DialTimeout   time.Duration
	ReadBlockRows int
	MaxOpenConns  int
}

var dbName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// Validate checks the configuration.
func (c Config) Validate() error {
	if len(c.Addr) == 0 {
		return errors.New("clickhouse address is required")
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
	if c.MaxOpenConns == 0 {
		c.MaxOpenConns = 16
	}
}

// Store is a connection to ClickHouse holding the resource versions.
type Store struct {
	conn    driver.Conn
	cfg     Config
	version Version
	table   string
	changes string
	feed    string
	// horizon: every version stamped after it (microseconds) is in the
	// change log too. Stores created with the change log start at 0;
	// trimming the change log raises it. Read at most every
	// horizonRefresh, at refreshed.
	hmu       sync.Mutex
	horizon   uint64
	refreshed time.Time
	log       *slog.Logger
}

// Open connects, creates the database and table when missing, and returns
// the store.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         cfg.Addr,
		Auth:         clickhouse.Auth{Username: cfg.Username, Password: cfg.Password},
		DialTimeout:  cfg.DialTimeout,
		MaxOpenConns: cfg.MaxOpenConns,
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %v: %w", cfg.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("ping clickhouse %v: %w", cfg.Addr, err)
	}
	sv, err := conn.ServerVersion()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read clickhouse server version: %w", err)
	}
	s := &Store{
		conn:    conn,
		cfg:     cfg,
		version: Version{Major: int(sv.Version.Major), Minor: int(sv.Version.Minor)},
		table:   cfg.Database + "." + Table,
		changes: cfg.Database + "." + ChangesTable,
		feed:    cfg.Database + "." + feedView,
		log:     log,
	}
	if err := s.migrate(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the connections.
func (s *Store) Close() error { return s.conn.Close() }

// Version is the server's release.
func (s *Store) Version() Version { return s.version }

// Conn exposes the driver connection, for benchmarks that measure raw reads.
func (s *Store) Conn() driver.Conn { return s.conn }

// TableName is the fully qualified table name.
func (s *Store) TableName() string { return s.table }

func (s *Store) migrate(ctx context.Context) error {
	if err := s.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+s.cfg.Database); err != nil {
		return fmt.Errorf("create database %s: %w", s.cfg.Database, err)
	}
	if err := s.conn.Exec(ctx, CreateTableSQL(s.table, s.version)); err != nil {
		return fmt.Errorf("create table %s: %w", s.table, err)
	}
	return s.migrateChanges(ctx)
}

// migrateChanges creates the change log and the feed, a materialized view
// that copies every insert into the versions table into the change log,
// server-side. A store that held versions before the feed existed records
// the latest stamp as the horizon, before and again after creating the
// feed: _since reads from before it scan the versions table instead. A
// crash in between only repeats the step.
func (s *Store) migrateChanges(ctx context.Context) error {
	var exists uint8
	if err := s.conn.QueryRow(ctx, "EXISTS TABLE "+s.feed).Scan(&exists); err != nil {
		return fmt.Errorf("look for table %s: %w", s.feed, err)
	}
	horizons := s.cfg.Database + "." + horizonTable
	if err := s.conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+horizons+" (horizon UInt64) ENGINE = Log"); err != nil {
		return fmt.Errorf("create table %s: %w", horizons, err)
	}
	if exists == 0 {
		// Server-side: the native protocol's INSERT ... VALUES waits for
		// data blocks from the client.
		raise := "INSERT INTO " + horizons + " (horizon) SELECT max(last_updated) FROM " + s.table
		if err := s.conn.Exec(ctx, raise); err != nil {
			return fmt.Errorf("record the change log horizon: %w", err)
		}
		if err := s.conn.Exec(ctx, CreateChangesSQL(s.changes, s.version)); err != nil {
			return fmt.Errorf("create table %s: %w", s.changes, err)
		}
		feed := "CREATE MATERIALIZED VIEW IF NOT EXISTS " + s.feed + " TO " + s.changes +
			" AS SELECT " + columns + " FROM " + s.table
		if err := s.conn.Exec(ctx, feed); err != nil {
			return fmt.Errorf("create view %s: %w", s.feed, err)
		}
		// Versions stored while the feed was being created are older than
		// this.
		if err := s.conn.Exec(ctx, raise); err != nil {
			return fmt.Errorf("record the change log horizon: %w", err)
		}
	}
	h, err := s.Horizon(ctx)
	if err != nil {
		return err
	}
	if h > 0 && s.log != nil {
		s.log.Info("change log holds versions after its horizon; older _since reads scan the versions table",
			slog.Uint64("horizon_us", h))
	}
	return nil
}

// horizonRefresh is how long a store trusts the horizon it read. Trimming
// the change log raises the horizon, then waits longer than this before it
// drops anything (see TrimChangeLog).
const horizonRefresh = 10 * time.Second

// Horizon is the stamp (microseconds) after which the change log holds
// every version, as read at most horizonRefresh ago.
func (s *Store) Horizon(ctx context.Context) (uint64, error) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if !s.refreshed.IsZero() && time.Since(s.refreshed) < horizonRefresh {
		return s.horizon, nil
	}
	var h uint64
	if err := s.conn.QueryRow(ctx, "SELECT max(horizon) FROM "+s.cfg.Database+"."+horizonTable).Scan(&h); err != nil {
		return 0, fmt.Errorf("read the change log horizon: %w", err)
	}
	s.horizon, s.refreshed = h, time.Now()
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
	return createSQL(table, v, "type, id_hash, id, seq") + fmt.Sprintf("\nSETTINGS index_granularity = %d", VersionsGranularity)
}

// VersionsGranularity is the index granularity of the versions table.
const VersionsGranularity = 512

// CreateChangesSQL is the DDL of the change log: the versions again,
// sorted by stamp within a type, so a _since read touches only the
// granules of its window (ADR 0003).
func CreateChangesSQL(table string, v Version) string {
	return createSQL(table, v, "type, last_updated, id_hash, id, seq")
}

func createSQL(table string, v Version, key string) string {
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
) ENGINE = MergeTree
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
