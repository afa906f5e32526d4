package chstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// healthEvery is how often a replicated store asks each replica whether
// it is caught up.
const healthEvery = 2 * time.Second

// errNoReplica means no replica of a shard is reachable and caught up.
var errNoReplica = errors.New("no replica of the shard is reachable and caught up")

// caughtUpSQL counts this database's replicated tables on a replica that
// may lack parts the others have: read-only (its coordination session is
// gone), parts queued to fetch (it restarted, or lags behind the inserts),
// or parts under check. A replica answering 0 holds every part it is
// meant to.
const caughtUpSQL = "SELECT count() FROM system.replicas WHERE database = ? AND " +
	"(is_readonly OR is_session_expired OR inserts_in_queue > 0 OR parts_to_check > 0)"

// replica is one server of a replicated shard, as the health checks see it.
type replica struct {
	addr  string
	ready atomic.Bool
	conn  driver.Conn // its own connection, for the checks
}

// dial is the shard pool's dial strategy: round robin over the replicas
// that are caught up. Sequential consistency alone makes a replica refuse
// a read only when it lacks the newest quorum insert; one that restarted
// after a crash may lack older parts it is still fetching, and would
// answer without them.
func (sh *shard) dial(ctx context.Context, connID int, opt *clickhouse.Options, dial clickhouse.Dial) (clickhouse.DialResult, error) {
	last := errNoReplica
	n := len(sh.health)
	for i := range n {
		r := sh.health[(connID+i)%n]
		if !r.ready.Load() {
			continue
		}
		res, err := dial(ctx, r.addr, opt)
		if err == nil {
			return res, nil
		}
		last = err
	}
	return clickhouse.DialResult{}, fmt.Errorf("shard %d: %w", sh.index+1, last)
}

// checkReplicas asks every replica of every replicated shard whether it is
// caught up, and marks it.
func (s *Store) checkReplicas(ctx context.Context) {
	for _, sh := range s.shards {
		for _, r := range sh.health {
			ok := s.caughtUp(ctx, r)
			if was := r.ready.Swap(ok); was != ok && s.log != nil {
				s.log.InfoContext(ctx, "clickhouse replica readiness changed", slog.Int("shard", sh.index+1),
					slog.String("replica", r.addr), slog.Bool("caught_up", ok))
			}
		}
	}
}

func (s *Store) caughtUp(ctx context.Context, r *replica) bool {
	if r.conn == nil {
		conn, err := s.dialReplica(r.addr)
		if err != nil {
			return false
		}
		r.conn = conn
	}
	ctx, cancel := context.WithTimeout(ctx, healthEvery)
	defer cancel()
	var n uint64
	if err := r.conn.QueryRow(ctx, caughtUpSQL, s.cfg.Database).Scan(&n); err != nil {
		return false
	}
	return n == 0
}

// watchReplicas checks the replicas every healthEvery until ctx ends.
func (s *Store) watchReplicas(ctx context.Context) {
	t := time.NewTicker(healthEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkReplicas(ctx)
		}
	}
}
