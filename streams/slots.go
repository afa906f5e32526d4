package streams

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"

	"github.com/nats-io/nats.go/jetstream"
)

// A slot records that a client runs an export of one request, so that the
// same client cannot start the same export twice at once (the API answers
// 429 naming the running one). Slots live in BucketJobs.

var slotUnsafe = regexp.MustCompile(`[^A-Za-z0-9_-]`)

// keySlot is the KV key of client's slot for request.
func keySlot(client, request string) string {
	if client == "" {
		client = "anonymous"
	}
	sum := sha256.Sum256([]byte(request))
	return keySlotPrefix + slotUnsafe.ReplaceAllString(client, "_") + "." + hex.EncodeToString(sum[:16])
}

const keySlotPrefix = "active."

// ClaimSlot records job as client's running export of request. When the
// same client already runs the same request it fails with ok false and
// names the running job; a slot whose export finished or is gone is taken
// over.
func (j Jobs) ClaimSlot(ctx context.Context, client, request, job string) (running string, ok bool, err error) {
	key := keySlot(client, request)
	for range 5 {
		_, err := j.kv.Create(ctx, key, []byte(job))
		if err == nil {
			return "", true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", false, fmt.Errorf("claim export slot: %w", err)
		}
		e, err := j.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return "", false, fmt.Errorf("claim export slot: %w", err)
		}
		other := string(e.Value())
		if o, _, err := j.Get(ctx, other); err == nil && (o.Status == JobAccepted || o.Status == JobRunning) {
			return other, false, nil
		}
		// The earlier export finished or is gone: take the slot over.
		if _, err := j.kv.Update(ctx, key, []byte(job), e.Revision()); err == nil {
			return "", true, nil
		}
	}
	return "", false, errors.New("claim export slot: too much contention")
}

// SweepSlots deletes the slots whose export no longer exists, unless they
// were claimed again meanwhile.
func (j Jobs) SweepSlots(ctx context.Context) error {
	keys, err := j.keys(ctx, keySlotPrefix+">")
	if err != nil {
		return fmt.Errorf("list export slots: %w", err)
	}
	for _, key := range keys {
		e, err := j.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		if _, _, err := j.Get(ctx, string(e.Value())); errors.Is(err, jetstream.ErrKeyNotFound) {
			_ = j.kv.Purge(ctx, key, jetstream.LastRevision(e.Revision()))
		}
	}
	return nil
}

// SlotHolder is the job holding client's slot for request; ok is false
// when there is none.
func (j Jobs) SlotHolder(ctx context.Context, client, request string) (job string, ok bool, err error) {
	e, err := j.kv.Get(ctx, keySlot(client, request))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read export slot: %w", err)
	}
	return string(e.Value()), true, nil
}
