// Package api is flatfhir's only HTTP edge (Fiber). It is stateless: every
// job lives in JetStream, so any number of replicas can serve any request.
//
// Its files, by what they serve:
//   - the export edge: kickoff.go and kickoff_parameters.go ($export at
//     three levels, GET and POST), status.go and progress.go (polling,
//     manifest, DELETE), download.go (files), attachment.go and
//     attachindex.go (Binaries the output names), throttle.go;
//   - the write server: write_ingest.go ($ingest NDJSON loads),
//     write_resource.go (reads and writes of one resource),
//     write_bundle.go (batch and transaction Bundles);
//   - discovery and authorization: metadata.go, group.go, smart.go and
//     the auth package.
//
// Every error a client can cause is a 4xx with a FHIR OperationOutcome
// naming the problem; errors.go is the only place they are shaped.
package api
