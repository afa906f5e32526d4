package flatfhir

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// diskGuard keeps the one-machine engine's NATS server from filling its
// disk. A NATS server whose write fails for want of space marks that
// stream broken ("critical write error") until the server restarts: export
// files could not be stored again even once there was room (measured with
// nats-server 2.15). JetStream's own limit, 75 % of the space free when it
// starts, does not help when something else takes the space later:
// ClickHouse on the same disk, logs, another program.
//
// So while less than the reserve is free on the disk, the guard caps the
// export files' object store at what it holds, and a little more for the
// markers of deletions: new files are refused with "maximum bytes
// exceeded", an export that needs them fails with an OperationOutcome
// naming the cause, and nothing half-written is listed. Deleting files
// (the janitor, a cancelled export) makes room under the cap. Once twice
// the reserve is free, the cap is lifted. The engine's start lifts a cap
// left by a stop (streams.Ensure sets the store's configuration).
type diskGuard struct {
	js      jetstream.JetStream
	dir     string
	reserve int64
	every   time.Duration
	log     *slog.Logger

	capped bool
	saved  int64 // the object store's MaxBytes before the cap
}

// deleteMargin is room left under the cap for the object store's
// deletion markers (a few hundred bytes each): a full store must still be
// emptied. It is at most a quarter of the space still free.
const deleteMargin = 256 << 10

// newDiskGuard guards the disk holding dir, keeping reserve bytes free,
// or at most 5 % of the filesystem; nil when space cannot be measured.
func newDiskGuard(js jetstream.JetStream, dir string, reserve int64, log *slog.Logger) *diskGuard {
	_, size, err := diskSpace(dir)
	if err != nil || reserve <= 0 {
		log.Info("the disk guard of the NATS store is off", slog.Any("error", err), slog.Int64("reserve", reserve))
		return nil
	}
	return &diskGuard{js: js, dir: dir, reserve: min(reserve, size/20), every: 250 * time.Millisecond, log: log}
}

func (g *diskGuard) run(ctx context.Context) error {
	t := time.NewTicker(g.every)
	defer t.Stop()
	for {
		if err := g.check(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("the disk guard could not check the NATS store", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// check caps or uncaps the object store once.
func (g *diskGuard) check(ctx context.Context) error {
	free, _, err := diskSpace(g.dir)
	if err != nil {
		return err
	}
	switch {
	case !g.capped && free < g.reserve:
		s, err := g.js.Stream(ctx, "OBJ_"+streams.ObjectFiles)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		sc := info.Config
		g.saved = sc.MaxBytes
		sc.MaxBytes = int64(info.State.Bytes) + min(deleteMargin, max(free, 4)/4) //nolint:gosec // a store's size fits
		if _, err := g.js.UpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("cap the export files' store: %w", err)
		}
		g.capped = true
		g.log.Warn("the disk of the NATS store is nearly full: new export files are refused until there is room",
			slog.Int64("free_bytes", free), slog.Int64("reserve_bytes", g.reserve), slog.String("dir", g.dir))
	case g.capped && free >= 2*g.reserve:
		s, err := g.js.Stream(ctx, "OBJ_"+streams.ObjectFiles)
		if err != nil {
			return err
		}
		sc := s.CachedInfo().Config
		sc.MaxBytes = g.saved
		if _, err := g.js.UpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("uncap the export files' store: %w", err)
		}
		g.capped = false
		g.log.Info("the disk of the NATS store has room again: export files are stored again", slog.Int64("free_bytes", free))
	}
	return nil
}
