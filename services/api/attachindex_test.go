package api

import (
	"fmt"
	"testing"
)

// TestAttachmentIndexCacheIsBounded: the cache keeps the most recently
// used exports, at most maxIndexedJobs of them and maxIndexedIDs ids in
// all, and never caches an export naming more.
func TestAttachmentIndexCacheIsBounded(t *testing.T) {
	c := newAttachmentIndexes()
	for i := range maxIndexedJobs {
		c.put(fmt.Sprintf("j%d", i), []string{"b"})
	}
	if _, ok := c.get("j0"); !ok { // j0 is now the most recently used
		t.Fatal("j0 not cached")
	}
	c.put("new", []string{"b"})
	if _, ok := c.get("j1"); ok {
		t.Error("the least recently used export was not evicted")
	}
	if _, ok := c.get("j0"); !ok {
		t.Error("a recently used export was evicted")
	}
	c.put("huge", make([]string, maxIndexedIDs+1))
	if _, ok := c.get("huge"); ok {
		t.Error("an export naming more than the bound was cached")
	}
	c.put("big", make([]string, maxIndexedIDs))
	if _, ok := c.get("big"); !ok || c.ids != maxIndexedIDs || c.order.Len() != 1 {
		t.Errorf("big: cached %v, %d ids in %d entries", ok, c.ids, c.order.Len())
	}
}
