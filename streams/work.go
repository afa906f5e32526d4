package streams

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// IdleWait is how long a worker pauses after a failed pull (e.g. during a
// leader change) before it pulls again.
const IdleWait = 50 * time.Millisecond

// PullWait is how long one pull request of an idle worker waits at the
// server for a message. Below 10 s, so that no idle heartbeats flow.
const PullWait = 9 * time.Second

// Work runs workers goroutines that each pull one message at a time from
// cons and hand it to handle, until ctx is done. A worker pulls only when it
// is free, so no process hoards messages another could start on: long
// tasks are shared fairly across every replica. An idle worker's pull
// waits at the server (up to PullWait), so a message is handed out the
// moment it arrives and an idle process makes one request per worker every
// PullWait instead of polling. When ctx ends, pending pulls are withdrawn
// with their subscriptions, so the server hands nothing to a process that
// stopped.
func Work(ctx context.Context, cons jetstream.Consumer, workers int, handle func(context.Context, jetstream.Msg)) error {
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := pullOne(ctx, cons, handle); err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// pullOne waits for one message and handles it. It returns an error only
// when no pull can be made at all (e.g. the consumer is gone).
func pullOne(ctx context.Context, cons jetstream.Consumer, handle func(context.Context, jetstream.Msg)) error {
	pctx, cancel := context.WithTimeout(ctx, PullWait)
	defer cancel()
	batch, err := cons.Fetch(1, jetstream.FetchContext(pctx))
	if err != nil {
		return err
	}
	for msg := range batch.Messages() {
		if ctx.Err() != nil {
			_ = msg.Nak() // hand it straight to another replica
			continue
		}
		handle(ctx, msg)
	}
	switch err := batch.Error(); {
	case err == nil, errors.Is(err, jetstream.ErrNoMessages), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
	default:
		// A transient pull failure (e.g. a leader change): retry after a pause.
		select {
		case <-ctx.Done():
		case <-time.After(IdleWait):
		}
	}
	return nil
}
