// Package fhir holds the few FHIR R4 helpers every service needs: the
// resource type list, FHIR instants, OperationOutcome bodies, and cheap
// inspection and meta stamping of resource JSON that keep the rest of a
// resource byte for byte, including rewrites of references and of
// Attachment urls (RewriteAttachmentURLs).
package fhir
