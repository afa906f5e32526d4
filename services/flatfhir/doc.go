// Package flatfhir is the launcher: it wires the services together and runs
// them, all in one process on one machine (an embedded NATS JetStream
// server and a local ClickHouse server, sample data loaded once) or one
// role per process against a NATS cluster and a ClickHouse cluster. The
// services themselves never import each other; this package is the only
// place that knows all of them.
package flatfhir
