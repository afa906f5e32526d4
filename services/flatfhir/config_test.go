package flatfhir

import (
	"strings"
	"testing"
	"time"
)

func TestLauncherConfigFromEnv(t *testing.T) {
	t.Setenv("FLATFHIR_RETENTION", "90m")
	t.Setenv("FLATFHIR_POLL_RATE", "0.5")
	t.Setenv("FLATFHIR_WRITERS", "3")
	c, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.ChangeLogRetention != 0 {
		t.Errorf("FLATFHIR_CHANGE_LOG_RETENTION unset: %s, want 0 (keep the whole change log)", c.ChangeLogRetention)
	}
	if c.FileCompression != "gzip" {
		t.Errorf("FLATFHIR_FILE_COMPRESSION unset: %q, want gzip (docs/adr/0009)", c.FileCompression)
	}
	t.Run("change log retention", func(t *testing.T) {
		t.Setenv("FLATFHIR_CHANGE_LOG_RETENTION", "2160h")
		if c, err := FromEnv(); err != nil || c.ChangeLogRetention != 90*24*time.Hour {
			t.Errorf("FLATFHIR_CHANGE_LOG_RETENTION=2160h: %s (%v)", c.ChangeLogRetention, err)
		}
	})
	if c.Retention != 90*time.Minute || c.PollRate != 0.5 || c.Writers != 3 || c.Role != RoleAll {
		t.Errorf("config %+v", c)
	}
	bad := map[string]string{
		"FLATFHIR_RETENTION":        "forever",
		"FLATFHIR_POLL_RATE":        "-1",
		"FLATFHIR_WRITERS":          "two",
		"FLATFHIR_ROLE":             "janitor",
		"FLATFHIR_DEBUG_LISTEN":     "6060",
		"FLATFHIR_METRICS_LISTEN":   "9464",
		"FLATFHIR_FILE_COMPRESSION": "zstd",
		// Shorter than a day would drop the month being written.
		"FLATFHIR_CHANGE_LOG_RETENTION": "1h",
	}
	for key, val := range bad {
		t.Run(key, func(t *testing.T) {
			t.Setenv(key, val)
			_, err := FromEnv()
			if err == nil || !strings.Contains(err.Error(), val) {
				t.Errorf("%s=%s: error %v, want one naming the value", key, val, err)
			}
		})
	}
	t.Run("client bounds", func(t *testing.T) {
		if c.MaxConnsPerIP != 256 || c.MaxDownloadsPerClient != 32 || c.MaxWritesPerClient != 64 {
			t.Errorf("defaults: %d connections per address, %d downloads, %d writes per client; want 256, 32, 64",
				c.MaxConnsPerIP, c.MaxDownloadsPerClient, c.MaxWritesPerClient)
		}
		for _, key := range []string{"FLATFHIR_MAX_CONNS_PER_IP", "FLATFHIR_MAX_DOWNLOADS_PER_CLIENT", "FLATFHIR_MAX_WRITES_PER_CLIENT"} {
			t.Setenv(key, "-1")
			if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), key) {
				t.Errorf("%s=-1: error %v, want one naming it", key, err)
			}
			t.Setenv(key, "0") // unbounded
			if _, err := FromEnv(); err != nil {
				t.Errorf("%s=0: %v", key, err)
			}
		}
	})
	t.Run("disk reserve", func(t *testing.T) {
		if c.DiskReserve != 1<<30 {
			t.Errorf("FLATFHIR_NATS_DISK_RESERVE_MIB unset: %d bytes kept free, want 1 GiB", c.DiskReserve)
		}
		t.Setenv("FLATFHIR_NATS_DISK_RESERVE_MIB", "256")
		if c, err := FromEnv(); err != nil || c.DiskReserve != 256<<20 {
			t.Errorf("FLATFHIR_NATS_DISK_RESERVE_MIB=256: %d (%v)", c.DiskReserve, err)
		}
		t.Setenv("FLATFHIR_NATS_DISK_RESERVE_MIB", "-1")
		if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), "FLATFHIR_NATS_DISK_RESERVE_MIB") {
			t.Errorf("FLATFHIR_NATS_DISK_RESERVE_MIB=-1: error %v, want one naming it", err)
		}
	})
	t.Run("auth is on unless switched off", func(t *testing.T) {
		if !c.Auth {
			t.Error("FLATFHIR_AUTH unset: auth off, want on")
		}
		t.Setenv("FLATFHIR_AUTH", "off")
		if c, err := FromEnv(); err != nil || c.Auth {
			t.Errorf("FLATFHIR_AUTH=off: auth %v (%v)", c.Auth, err)
		}
		for _, kv := range [][3]string{{"FLATFHIR_AUTH", "maybe", "off"}, {"FLATFHIR_ADMIN_TOKEN", "short", ""}} {
			t.Setenv(kv[0], kv[1])
			if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), "FLATFHIR_") {
				t.Errorf("%s=%s: error %v", kv[0], kv[1], err)
			}
			t.Setenv(kv[0], kv[2])
		}
		if _, err := FromEnv(); err != nil {
			t.Fatal(err)
		}
		t.Setenv("FLATFHIR_TLS_CERT", "cert.pem")
		if _, err := FromEnv(); err == nil {
			t.Error("FLATFHIR_TLS_CERT without FLATFHIR_TLS_KEY accepted")
		}
	})
	t.Run("single role needs external servers", func(t *testing.T) {
		t.Setenv("FLATFHIR_ROLE", "writer")
		if _, err := FromEnv(); err == nil {
			t.Error("role writer without NATS and ClickHouse addresses accepted")
		}
	})
	t.Run("a clickhouse cluster", func(t *testing.T) {
		t.Setenv("FLATFHIR_ROLE", "writer")
		t.Setenv("FLATFHIR_NATS_URL", "nats://127.0.0.1:4222,nats://127.0.0.1:4223")
		t.Setenv("FLATFHIR_CLICKHOUSE_SHARDS", "127.0.0.1:9001,127.0.0.1:9002;127.0.0.1:9003,127.0.0.1:9004")
		c, err := FromEnv()
		if err != nil || len(c.ClickHouseShards) != 2 || c.ClickHouseShards[1][1] != "127.0.0.1:9004" {
			t.Errorf("FLATFHIR_CLICKHOUSE_SHARDS: %v (%v)", c.ClickHouseShards, err)
		}
		t.Setenv("FLATFHIR_CLICKHOUSE_ADDR", "127.0.0.1:9000")
		if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), "not both") {
			t.Errorf("both FLATFHIR_CLICKHOUSE_ADDR and _SHARDS: %v, want an error", err)
		}
		t.Setenv("FLATFHIR_CLICKHOUSE_ADDR", "")
		t.Setenv("FLATFHIR_CLICKHOUSE_SHARDS", "127.0.0.1:9001;;127.0.0.1:9003")
		if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), "shard 2") {
			t.Errorf("a shard without replicas: %v, want an error naming it", err)
		}
	})
}
