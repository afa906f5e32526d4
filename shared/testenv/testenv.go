// Package testenv starts the real servers flatfhir's tests run against: an
// in-process NATS JetStream server per test, and one local ClickHouse
// server per test binary with a fresh database per test. There are no mocks
// of either. A missing ClickHouse binary fails the test: it is never a
// silent skip (make deps installs it).
package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/natsembed"
)

// NATS starts an embedded JetStream server for the test and returns its URL.
func NATS(t testing.TB) string {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Config{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv.URL()
}

// JetStream connects to url and returns a JetStream context closed with the test.
func JetStream(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

var (
	chOnce sync.Once
	chSrv  *chserver.Server
	chErr  error
	dbSeq  atomic.Int64
)

// chDirPrefix names the data directories of the test binaries' ClickHouse
// servers; the test process's pid follows it.
const chDirPrefix = "flatfhir-clickhouse-"

// Main runs a package's tests; call it from TestMain. When they are done it
// stops the ClickHouse server they shared and removes its data directory.
func Main(m *testing.M) {
	code := m.Run()
	if chSrv != nil {
		_ = chSrv.Stop()
		_ = os.RemoveAll(chSrv.Config().Dir)
	}
	os.Exit(code)
}

// ClickHouseAddr starts (once per test binary) a local ClickHouse server and
// returns its address. The server dies with the test process; Main removes
// its data, and the next start removes what a killed test binary left.
func ClickHouseAddr(t testing.TB) string {
	t.Helper()
	chOnce.Do(func() {
		removeStaleDirs(os.TempDir())
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", chDirPrefix, os.Getpid()))
		if err != nil {
			chErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		chSrv, chErr = chserver.Start(ctx, chserver.Config{Dir: dir}, Logger(t))
	})
	if chErr != nil {
		t.Fatalf("start clickhouse: %v", chErr)
	}
	return chSrv.Addr()
}

// removeStaleDirs removes the ClickHouse data directories in tmp whose test
// process no longer runs: a test binary killed at its timeout never reaches
// Main's clean-up.
func removeStaleDirs(tmp string) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, chDirPrefix+"*-*"))
	for _, dir := range dirs {
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(filepath.Base(dir), chDirPrefix), "-", 2)[0])
		if err != nil || pid <= 0 {
			continue
		}
		// ESRCH: no such process. Anything else (alive, or another
		// user's) leaves the directory alone.
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}

// ClickHouse returns a store config pointing at a fresh, empty database.
func ClickHouse(t testing.TB) chstore.Config {
	t.Helper()
	addr := ClickHouseAddr(t)
	return chstore.Config{
		Addr:     []string{addr},
		Database: fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1)),
	}
}

// Store opens a store on a fresh database, closed with the test.
func Store(t testing.TB) *chstore.Store {
	t.Helper()
	s, err := chstore.Open(context.Background(), ClickHouse(t), Logger(t))
	if err != nil {
		t.Fatalf("open clickhouse store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Logger discards logs unless FLATFHIR_TEST_LOG is set: to a level name
// (debug, info, warn, error) it logs from that level on, to anything else
// from debug on.
func Logger(t testing.TB) *slog.Logger {
	if v := os.Getenv("FLATFHIR_TEST_LOG"); v != "" {
		var level slog.Level
		if level.UnmarshalText([]byte(v)) != nil {
			level = slog.LevelDebug
		}
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Eventually polls cond every 20ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
