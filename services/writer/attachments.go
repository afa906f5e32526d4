package writer

import (
	"bytes"
	"slices"
	"strings"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// attachments points the Attachment.url values of exported resources that
// name a Binary of this server at the export's attachment URL, which the
// API serves under the export's authorization (Bulk Data v2 Req 213-216:
// absolute, dereferenceable with the bulk token alone).
//
// Rewritten: "Binary/<id>", "Binary/<id>/_history/<vid>", and the same
// absolute on the job's base URL; each becomes base+"Binary/<id>" (the
// Binary as of the export's transactionTime: a version in the url is
// dropped). base+"Binary/<id>" itself, as a converted Binary's
// DocumentReference carries it, stays as it is. Anything else (other servers, urn:, contained "#x", malformed
// ids) is left as it is.
//
// It also collects the ids of the Binaries it points attachment URLs at:
// the attempt's attachment index, the only Binaries the API serves for the
// export. A failed rewrite or write fails the whole attempt, so every id
// collected by a successful attempt is in one of its output lines. The set
// costs about 100 bytes per distinct Binary a task names (ids are at most
// 64 bytes).
type attachments struct {
	// own is the job's base URL plus "/", empty when unknown.
	own string
	// base is the task's AttachmentBase; empty switches rewriting off.
	base string
	// named holds the ids of the Binaries named so far.
	named map[string]struct{}
}

func newAttachments(baseURL, attachmentBase string) *attachments {
	a := &attachments{base: attachmentBase, named: map[string]struct{}{}}
	if baseURL != "" {
		a.own = strings.TrimRight(baseURL, "/") + "/"
	}
	return a
}

// urlOf is the attachment URL of Binary/id, "" when rewriting is off.
func (a *attachments) urlOf(id string) string {
	if a.base == "" {
		return ""
	}
	return a.base + "Binary/" + id
}

// name records that an output line carries the attachment URL of
// Binary/id.
func (a *attachments) name(id string) {
	if a.base != "" {
		a.named[id] = struct{}{}
	}
}

// index is the ids of the Binaries named so far, sorted.
func (a *attachments) index() []string {
	ids := make([]string, 0, len(a.named))
	for id := range a.named {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// target is the attachment URL an Attachment.url stands for, if it names
// a Binary of this server; the Binary is then recorded as named.
func (a *attachments) target(u string) (string, bool) {
	if a.base == "" {
		return "", false
	}
	rest := u
	switch {
	case strings.HasPrefix(u, a.base):
		// Already the export's attachment URL: a converted Binary's.
		rest = u[len(a.base):]
	case a.own != "" && strings.HasPrefix(u, a.own):
		rest = u[len(a.own):]
	}
	rest, ok := strings.CutPrefix(rest, "Binary/")
	if !ok {
		return "", false
	}
	id, version, versioned := strings.Cut(rest, "/_history/")
	if !fhir.ValidID(id) || versioned && !fhir.ValidID(version) {
		return "", false
	}
	a.name(id)
	return a.urlOf(id), true
}

// rewrite returns body with its Attachment urls rewritten; body itself
// when there is nothing to do. Most bodies are passed over by two byte
// searches: every url it rewrites names "Binary" (spelled out, unless JSON
// escapes hide it, which "\u" gives away).
func (a *attachments) rewrite(typ string, body []byte) ([]byte, error) {
	if a.base == "" || !bytes.Contains(body, []byte("Binary")) && !bytes.Contains(body, []byte(`\u`)) {
		return body, nil
	}
	return fhir.RewriteAttachmentURLs(typ, body, a.target)
}
