package streams

import (
	"fmt"
	"regexp"
	"strings"
)

// The kinds of file a task writes, as the manifest lists them.
const (
	KindOutput  = "output"  // resources of the export's types
	KindDeleted = "deleted" // transaction Bundles of DELETE entries (_since)
	KindError   = "error"   // OperationOutcomes
)

// FileKind is the manifest array f belongs to. Results recorded before
// files carried a kind are told apart by name.
func (f File) FileKind() string {
	if f.Kind != "" {
		return f.Kind
	}
	if f.Type == "Bundle" && strings.HasPrefix(f.Name, deletedPrefix) {
		return KindDeleted
	}
	return KindOutput
}

const deletedPrefix = "deleted-"

// PartName names, within its job, part of a task attempt's files of one
// kind (output or deleted) and resource type. The attempt's token keeps
// two attempts apart even when delivery counts repeat.
func PartName(kind, typ, task string, attempt uint64, token string, part int) string {
	prefix := ""
	if kind == KindDeleted {
		prefix = deletedPrefix
	}
	return fmt.Sprintf("%s%s-%s-a%d-%s-%03d.ndjson", prefix, typ, task, attempt, token, part)
}

// AttachmentIndexName names, within its job, a task attempt's attachment
// index (see TaskResult.AttachmentIndex). It does not end in .ndjson, so
// the file route never serves it.
func AttachmentIndexName(task string, attempt uint64, token string) string {
	return fmt.Sprintf("%s%s-a%d-%s.ids", attachmentIndexPrefix, task, attempt, token)
}

const attachmentIndexPrefix = "attachments-"

var attachmentIndexName = regexp.MustCompile(`^attachments-[A-Za-z0-9.\-]{1,200}\.ids$`)

// IsAttachmentIndex reports whether name is shaped as AttachmentIndexName
// makes them (so that a recorded name can be trusted as an object name).
func IsAttachmentIndex(name string) bool { return attachmentIndexName.MatchString(name) }
