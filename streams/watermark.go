package streams

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// LoadWatermark reads the ingest watermark and its KV revision (0 when no
// change was ever ingested).
func LoadWatermark(ctx context.Context, js jetstream.JetStream) (Watermark, uint64, error) {
	kv, err := js.KeyValue(ctx, BucketIngest)
	if err != nil {
		return Watermark{}, 0, fmt.Errorf("open bucket %s: %w", BucketIngest, err)
	}
	return ReadWatermark(ctx, kv)
}

// ReadWatermark reads the ingest watermark and its KV revision (0 when no
// change was ever ingested) from the ingest bucket kv.
func ReadWatermark(ctx context.Context, kv jetstream.KeyValue) (Watermark, uint64, error) {
	e, err := kv.Get(ctx, KeyWatermark)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Watermark{}, 0, nil
	}
	if err != nil {
		return Watermark{}, 0, fmt.Errorf("read watermark: %w", err)
	}
	var w Watermark
	if err := Decode(e.Value(), &w); err != nil {
		return Watermark{}, 0, err
	}
	return w, e.Revision(), nil
}

// LastChangeSeq is the sequence of the newest change accepted so far.
func LastChangeSeq(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	s, err := js.Stream(ctx, StreamChanges)
	if err != nil {
		return 0, fmt.Errorf("open stream %s: %w", StreamChanges, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read stream %s info: %w", StreamChanges, err)
	}
	return info.State.LastSeq, nil
}

// AwaitWatermark waits until every change up to seq is queryable (and the
// watermark has a stamp); ctx bounds the wait. It reads the watermark once
// and, when that is not far enough, watches it: no polling. When ctx ends
// first the error says how far ingest got.
func AwaitWatermark(ctx context.Context, js jetstream.JetStream, seq uint64) (Watermark, error) {
	kv, err := js.KeyValue(ctx, BucketIngest)
	if err != nil {
		return Watermark{}, fmt.Errorf("open bucket %s: %w", BucketIngest, err)
	}
	reached := func(wm Watermark) bool { return wm.Seq >= seq && !wm.Stamp.IsZero() }
	wm, _, err := ReadWatermark(ctx, kv)
	if err != nil && ctx.Err() == nil {
		return Watermark{}, err
	}
	if err == nil && reached(wm) {
		return wm, nil
	}
	late := func() error {
		return fmt.Errorf("changes up to %d not ingested yet (ingested up to %d): %w", seq, wm.Seq, context.Cause(ctx))
	}
	if ctx.Err() != nil {
		return wm, late()
	}
	// The watch delivers the current value first, then every update.
	w, err := kv.Watch(ctx, KeyWatermark)
	if err != nil {
		if ctx.Err() != nil {
			return wm, late()
		}
		return Watermark{}, fmt.Errorf("watch watermark: %w", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return wm, late()
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return wm, late()
				}
				return wm, errors.New("watch watermark: the watch ended")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var got Watermark
			if err := Decode(e.Value(), &got); err != nil {
				return wm, err
			}
			if wm = got; reached(wm) {
				return wm, nil
			}
		}
	}
}
