// Package api is flatfhir's only HTTP edge (Fiber): NDJSON ingest, the
// Bulk Data $export kick-off, status polling, cancellation, file downloads
// and the CapabilityStatement. It is stateless: every job lives in
// JetStream, so any number of replicas can serve any request.
//
// Every error a client can cause is a 4xx with a FHIR OperationOutcome
// naming the problem; the table in errors.go is the only place they are
// shaped.
package api
