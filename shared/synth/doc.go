// Package synth deterministically generates realistic, Synthea-like FHIR R4
// resources for demos, tests and benchmarks of the bulk data export engine.
//
// Generation is streaming: [Generate] hands every resource to a callback as a
// compact JSON object, one at a time, without holding the generated data set
// in memory, so it scales to tens of millions of resources. The output is a
// pure function of [Config]: the same Seed and Patients (and GroupSize) always
// yield byte-identical output, and no wall-clock time is involved.
//
// Resources are emitted in dependency order, so every relative reference
// ("Type/id") points at a resource that was emitted earlier:
//
//   - Organization pool (payers and providers), then the Practitioner pool;
//   - per patient: Patient, Coverage, then per encounter: Encounter,
//     Condition, Observation, Procedure, MedicationRequest, Immunization,
//     Claim and ExplanationOfBenefit;
//   - finally Group resources partitioning all patients, in emission order,
//     into groups of at most GroupSize members (ids synth-group-1, ...).
//
// Resource ids are UUID-shaped strings derived from the seed, the resource
// type and a per-type counter; no resource carries a meta element. Clinical
// dates fall between 2010 and 2024 and carry a per-patient US timezone offset.
//
// [WriteNDJSON] writes the same stream as NDJSON, and [Estimate] predicts the
// number of resources for progress reporting and sizing.
package synth
