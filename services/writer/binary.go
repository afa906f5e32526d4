package writer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/streams"
)

// The Bulk Data IG exports a Binary that belongs to one patient (its
// securityContext names a Patient) as a DocumentReference. This file is
// the writer's whole knowledge of that rule; the planner says, with a
// task's EmitAs, whether a Binary task exports only those.

// docType is the type a patient's Binary is exported as.
const docType = "DocumentReference"

// onlyPatientsBinaries reports whether task reads only Binaries in some
// patient's compartment, all of which it exports as DocumentReferences.
func onlyPatientsBinaries(task streams.Task) bool {
	return task.Type == "Binary" && task.EmitAs == docType
}

// binaryStage converts a patient's Binary to its DocumentReference and,
// in a task that exports only those, drops every other Binary. The
// DocumentReference's attachment url is the export's attachment URL of
// the Binary, which the attachment stage then records in the index.
func binaryStage(task streams.Task, att *attachments) stage {
	only := onlyPatientsBinaries(task)
	return func(r *resource) (bool, error) {
		doc, ok, err := binaryAsDocumentReference(r.body, att)
		if err != nil {
			return false, fmt.Errorf("convert Binary/%s: %w", r.id, err)
		}
		if ok {
			r.typ, r.body = docType, doc
		}
		return ok || !only, nil
	}
}

// deletedAs names a deletion in task's deleted files: a deleted Binary of
// a task that exports only patients' Binaries went out as a
// DocumentReference, and its deletion names that.
func deletedAs(task streams.Task) func(id string) (string, string) {
	if onlyPatientsBinaries(task) {
		return func(id string) (string, string) { return docType, binaryDocID(id) }
	}
	return func(id string) (string, string) { return task.Type, id }
}

// asExported is a resource as its type's task exports it, attachment url
// aside: a patient's Binary as its DocumentReference.
func asExported(typ string, body []byte) (string, []byte, error) {
	if typ != "Binary" {
		return typ, body, nil
	}
	doc, ok, err := binaryAsDocumentReference(body, &attachments{})
	if err != nil || !ok {
		return typ, body, err
	}
	return docType, doc, nil
}

// exportedTypes are the types a resource of typ may be exported as, whose
// _typeFilter queries decide whether it is.
func exportedTypes(typ string) []string {
	if typ == "Binary" {
		return []string{"Binary", docType}
	}
	return []string{typ}
}

// maxInlineData is the longest Binary.data (base64 characters, 64 KiB:
// about 48 KiB of content) a converted Binary carries inline as
// attachment.data. Larger content is only behind attachment.url, so that
// big documents do not swell the NDJSON files.
const maxInlineData = 64 << 10

// binaryAsDocumentReference turns a Binary that belongs to one patient (its
// securityContext references a Patient) into the DocumentReference the Bulk
// Data IG requires in its place: attachment.contentType is the Binary's,
// attachment.url its attachment URL (see attachments), and the content is
// inline as attachment.data too when it is at most maxInlineData long (or
// always when the task has no attachment URLs). A Binary without data
// (its content elsewhere) gets no data either. ok is false for a Binary of
// no particular patient, which is exported as it is.
func binaryAsDocumentReference(body []byte, a *attachments) (doc []byte, ok bool, err error) {
	var b struct {
		ID              string          `json:"id"`
		Meta            json.RawMessage `json:"meta,omitempty"`
		ContentType     string          `json:"contentType"`
		SecurityContext *struct {
			Reference string `json:"reference"`
		} `json:"securityContext"`
		Data string `json:"data,omitempty"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, false, err
	}
	if b.SecurityContext == nil {
		return nil, false, nil
	}
	patient, isPatient := compartment.ReferencedPatientID(b.SecurityContext.Reference)
	if !isPatient {
		return nil, false, nil
	}
	out := documentReference{
		ResourceType: docType,
		ID:           binaryDocID(b.ID),
		Meta:         b.Meta,
		Status:       "current",
		Subject:      reference{Reference: "Patient/" + patient},
		Content:      []content{{Attachment: attachment{ContentType: b.ContentType, URL: a.urlOf(b.ID), Data: b.Data}}},
	}
	switch att := &out.Content[0].Attachment; {
	case b.Data == "":
		// Nothing to serve: a url would not dereference.
		att.URL = ""
	case att.URL != "" && len(b.Data) > maxInlineData:
		att.Data = ""
	}
	doc, err = json.Marshal(out)
	return doc, err == nil, err
}

// binaryDocID is the id of the DocumentReference standing for a Binary:
// distinct from real DocumentReference ids, and a legal FHIR id.
func binaryDocID(id string) string {
	if len(id) <= 60 {
		return "bin-" + id
	}
	sum := sha256.Sum256([]byte(id))
	return "bin-" + hex.EncodeToString(sum[:20])
}

type documentReference struct {
	ResourceType string          `json:"resourceType"`
	ID           string          `json:"id"`
	Meta         json.RawMessage `json:"meta,omitempty"`
	Status       string          `json:"status"`
	Subject      reference       `json:"subject"`
	Content      []content       `json:"content"`
}

type reference struct {
	Reference string `json:"reference"`
}

type content struct {
	Attachment attachment `json:"attachment"`
}

type attachment struct {
	ContentType string `json:"contentType,omitempty"`
	Data        string `json:"data,omitempty"`
	URL         string `json:"url,omitempty"`
}
