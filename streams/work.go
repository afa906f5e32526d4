package streams

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Work runs workers goroutines that each pull one message at a time from
// cons and hand it to handle, until ctx is done. A worker pulls only when it
// is free, so no process hoards messages another could start on: long
// tasks are shared fairly across every replica. Pulls do not wait at the
// server (an idle worker polls every IdleWait), so a process that stops
// leaves no pull request behind for a message to be delivered to and
// stranded until its ack wait runs out.
// IdleWait is how long an idle worker waits before pulling again.
const IdleWait = 50 * time.Millisecond

func Work(ctx context.Context, cons jetstream.Consumer, workers int, handle func(context.Context, jetstream.Msg)) error {
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				batch, err := cons.FetchNoWait(1)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					errc <- err
					return
				}
				got := false
				for msg := range batch.Messages() {
					got = true
					if ctx.Err() != nil {
						_ = msg.Nak() // hand it straight to another replica
						continue
					}
					handle(ctx, msg)
				}
				if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
					got = false // a transient pull failure (e.g. a leader change): retry after a pause
				}
				if !got {
					select {
					case <-ctx.Done():
					case <-time.After(IdleWait):
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}
