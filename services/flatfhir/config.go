package flatfhir

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flatfhir/flatfhir/shared/chstore"
)

// Roles a process can play.
const (
	RoleAll      = "all"
	RoleAPI      = "api"
	RoleIngester = "ingester"
	RolePlanner  = "planner"
	RoleWriter   = "writer"
)

// Config is the launcher's configuration, read from FLATFHIR_* variables.
type Config struct {
	Role string
	// DataDir holds the embedded NATS store and the local ClickHouse.
	DataDir string
	// Listen and BaseURL configure the API.
	Listen  string
	BaseURL string
	// NATSURL points at an external NATS; empty embeds one on NATSPort.
	NATSURL  string
	NATSPort int
	// ClickHouseAddr points at an external ClickHouse; empty starts a local
	// one on ClickHousePort.
	ClickHouseAddr string
	// ClickHouseShards, when set, names a cluster instead: each shard's
	// replicas (FLATFHIR_CLICKHOUSE_SHARDS="a1:9000,a2:9000;b1:9000,b2:9000",
	// ADR 0007). Tables are then replicated where a shard has replicas.
	ClickHouseShards   [][]string
	ClickHousePort     int
	ClickHouseDatabase string
	// SamplePatients is how many generated patients to load into an empty
	// store at start-up (0: none).
	SamplePatients int
	// Writers is how many writer instances to run in this process.
	Writers int
	// TaskRows and MaxFileResources size export tasks and files
	// (FLATFHIR_TASK_ROWS, FLATFHIR_MAX_FILE_RESOURCES; 0 keeps the
	// planner's defaults of 50,000 and 100,000).
	TaskRows         int
	MaxFileResources int
	// Replicas is the JetStream replication factor.
	Replicas int
	// PollRate is the status polls per second allowed per export (0: no limit).
	PollRate float64
	// MaxConnsPerIP bounds the API connections one client address holds at
	// once (FLATFHIR_MAX_CONNS_PER_IP, 256; 0 leaves them unbounded); more
	// get 429 with Retry-After.
	MaxConnsPerIP int
	// MaxDownloadsPerClient and MaxWritesPerClient bound the file
	// downloads (32) and writes (64) one client has in progress at once in
	// an API process (FLATFHIR_MAX_DOWNLOADS_PER_CLIENT,
	// FLATFHIR_MAX_WRITES_PER_CLIENT; 0: unbounded); more get 429.
	MaxDownloadsPerClient, MaxWritesPerClient int
	// Retention is how long a completed export's files stay available.
	Retention time.Duration
	// ChangeLogRetention is how long versions stay in the change log that
	// serves _since reads (FLATFHIR_CHANGE_LOG_RETENTION; 0 keeps them all).
	ChangeLogRetention time.Duration
	// Auth switches SMART Backend Services authorization on (FLATFHIR_AUTH,
	// on by default; make run switches it off).
	Auth bool
	// AdminToken is the operator credential for the API's /admin
	// endpoints and $ingest (FLATFHIR_ADMIN_TOKEN).
	AdminToken string
	// TLSCert and TLSKey, when set, make the API serve HTTPS (TLS 1.2+).
	TLSCert string
	TLSKey  string
	// OTLPEndpoint receives traces and metrics when set.
	OTLPEndpoint string
	// FileCompression is how writers store export files: "gzip" (the
	// default) or "none" (FLATFHIR_FILE_COMPRESSION, docs/adr/0009); empty
	// leaves it to the writer's Tuning (CompressFiles, true by default).
	FileCompression string
	// DiskReserve is the space, in bytes, the one-machine engine keeps free
	// on the disk of its NATS server (FLATFHIR_NATS_DISK_RESERVE_MIB, 1024,
	// at most 5 % of the disk; 0: off): below it, new export files are
	// refused, so that the disk never fills under NATS (diskguard.go).
	DiskReserve int64
	// MetricsListen, when set, serves /metrics (Prometheus), /livez and
	// /readyz on this address (FLATFHIR_METRICS_LISTEN; operator.go).
	MetricsListen string
	// DebugListen, when set, serves Go's runtime profiles
	// (/debug/pprof/) on this address, without authentication.
	DebugListen string
	LogLevel    string
}

// FromEnv reads the configuration from the environment.
func FromEnv() (Config, error) { return FromLookup(os.LookupEnv) }

// FromLookup reads the configuration from settings looked up by name, as
// os.LookupEnv looks up the environment's (a deployment's checks read a
// container's environment so).
func FromLookup(lookup func(key string) (string, bool)) (Config, error) {
	l := settings(lookup)
	c := Config{
		Role:               l.str("FLATFHIR_ROLE", RoleAll),
		DataDir:            l.str("FLATFHIR_DATA_DIR", "var"),
		Listen:             l.str("FLATFHIR_LISTEN", "127.0.0.1:8080"),
		BaseURL:            l.str("FLATFHIR_BASE_URL", ""),
		NATSURL:            l.str("FLATFHIR_NATS_URL", ""),
		ClickHouseAddr:     l.str("FLATFHIR_CLICKHOUSE_ADDR", ""),
		ClickHouseDatabase: l.str("FLATFHIR_CLICKHOUSE_DATABASE", "flatfhir"),
		AdminToken:         l.str("FLATFHIR_ADMIN_TOKEN", ""),
		TLSCert:            l.str("FLATFHIR_TLS_CERT", ""),
		TLSKey:             l.str("FLATFHIR_TLS_KEY", ""),
		OTLPEndpoint:       l.str("FLATFHIR_OTLP_ENDPOINT", ""),
		DebugListen:        l.str("FLATFHIR_DEBUG_LISTEN", ""),
		MetricsListen:      l.str("FLATFHIR_METRICS_LISTEN", ""),
		FileCompression:    l.str("FLATFHIR_FILE_COMPRESSION", "gzip"),
		LogLevel:           l.str("FLATFHIR_LOG_LEVEL", "info"),
	}
	var errs []error
	switch v := strings.ToLower(l.str("FLATFHIR_AUTH", "on")); v {
	case "on", "true", "1":
		c.Auth = true
	case "off", "false", "0":
	default:
		errs = append(errs, fmt.Errorf("FLATFHIR_AUTH=%q is not on or off", v))
	}
	if v := l.str("FLATFHIR_CLICKHOUSE_SHARDS", ""); v != "" {
		shards, err := chstore.ParseShards(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("FLATFHIR_CLICKHOUSE_SHARDS: %w", err))
		}
		c.ClickHouseShards = shards
	}
	c.NATSPort = l.int("FLATFHIR_NATS_PORT", 4222, &errs)
	c.ClickHousePort = l.int("FLATFHIR_CLICKHOUSE_PORT", 19000, &errs)
	c.SamplePatients = l.int("FLATFHIR_SAMPLE_PATIENTS", 200, &errs)
	c.Writers = l.int("FLATFHIR_WRITERS", 2, &errs)
	c.TaskRows = l.int("FLATFHIR_TASK_ROWS", 0, &errs)
	c.MaxFileResources = l.int("FLATFHIR_MAX_FILE_RESOURCES", 0, &errs)
	c.Replicas = l.int("FLATFHIR_REPLICAS", 1, &errs)
	c.MaxConnsPerIP = l.int("FLATFHIR_MAX_CONNS_PER_IP", 256, &errs)
	c.MaxDownloadsPerClient = l.int("FLATFHIR_MAX_DOWNLOADS_PER_CLIENT", 32, &errs)
	c.MaxWritesPerClient = l.int("FLATFHIR_MAX_WRITES_PER_CLIENT", 64, &errs)
	c.DiskReserve = int64(l.int("FLATFHIR_NATS_DISK_RESERVE_MIB", 1024, &errs)) << 20
	if v := l.str("FLATFHIR_POLL_RATE", "2"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			errs = append(errs, fmt.Errorf("FLATFHIR_POLL_RATE=%q is not a non-negative number", v))
		}
		c.PollRate = f
	}
	if v := l.str("FLATFHIR_RETENTION", "24h"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("FLATFHIR_RETENTION=%q is not a positive duration (e.g. 24h, 90m)", v))
		}
		c.Retention = d
	}
	if v := l.str("FLATFHIR_CHANGE_LOG_RETENTION", "0"); v != "0" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 24*time.Hour {
			errs = append(errs, fmt.Errorf("FLATFHIR_CHANGE_LOG_RETENTION=%q is not 0 or a duration of at least 24h (e.g. 2160h for 90 days)", v))
		}
		c.ChangeLogRetention = d
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch c.Role {
	case RoleAll, RoleAPI, RoleIngester, RolePlanner, RoleWriter:
	default:
		return fmt.Errorf("role %q is not one of all, api, ingester, planner, writer", c.Role)
	}
	if c.Role != RoleAll && (c.NATSURL == "" || c.ClickHouseAddr == "" && len(c.ClickHouseShards) == 0) {
		return fmt.Errorf("role %s needs FLATFHIR_NATS_URL and FLATFHIR_CLICKHOUSE_ADDR or FLATFHIR_CLICKHOUSE_SHARDS (only role all embeds servers)", c.Role)
	}
	if c.ClickHouseAddr != "" && len(c.ClickHouseShards) > 0 {
		return errors.New("set FLATFHIR_CLICKHOUSE_ADDR or FLATFHIR_CLICKHOUSE_SHARDS, not both")
	}
	if c.Writers < 1 {
		return errors.New("FLATFHIR_WRITERS must be at least 1")
	}
	if c.TaskRows < 0 || c.MaxFileResources < 0 {
		return errors.New("FLATFHIR_TASK_ROWS and FLATFHIR_MAX_FILE_RESOURCES must not be negative")
	}
	if c.SamplePatients < 0 {
		return errors.New("FLATFHIR_SAMPLE_PATIENTS must not be negative")
	}
	if c.MaxConnsPerIP < 0 || c.MaxDownloadsPerClient < 0 || c.MaxWritesPerClient < 0 {
		return errors.New("FLATFHIR_MAX_CONNS_PER_IP, FLATFHIR_MAX_DOWNLOADS_PER_CLIENT and FLATFHIR_MAX_WRITES_PER_CLIENT must not be negative (0: unbounded)")
	}
	if c.DiskReserve < 0 {
		return errors.New("FLATFHIR_NATS_DISK_RESERVE_MIB must not be negative (0: off)")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("FLATFHIR_TLS_CERT and FLATFHIR_TLS_KEY go together")
	}
	switch c.FileCompression {
	case "", "none", "gzip":
	default:
		return fmt.Errorf("FLATFHIR_FILE_COMPRESSION=%q is not none or gzip", c.FileCompression)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("FLATFHIR_METRICS_LISTEN=%q is not host:port (e.g. 127.0.0.1:9464): %w", c.MetricsListen, err)
		}
	}
	if c.DebugListen != "" {
		if _, _, err := net.SplitHostPort(c.DebugListen); err != nil {
			return fmt.Errorf("FLATFHIR_DEBUG_LISTEN=%q is not host:port (e.g. 127.0.0.1:6060): %w", c.DebugListen, err)
		}
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		return errors.New("FLATFHIR_ADMIN_TOKEN must be at least 16 characters")
	}
	return nil
}

func (c Config) dir(sub string) string { return filepath.Join(c.DataDir, sub) }

// settings looks a setting up by name.
type settings func(key string) (string, bool)

// str is the setting key, trimmed, or def when it is unset or blank.
func (l settings) str(key, def string) string {
	if v, ok := l(key); ok && strings.TrimSpace(v) != "" {
		return strings.TrimSpace(v)
	}
	return def
}

// env is the environment variable key, trimmed, or def.
func env(key, def string) string { return settings(os.LookupEnv).str(key, def) }

// int is the setting key as a whole number, or def when it is unset; a
// value that is not one is added to errs.
func (l settings) int(key string, def int, errs *[]error) int {
	v := l.str(key, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s=%q is not a whole number", key, v))
		return def
	}
	return n
}
