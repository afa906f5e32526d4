// Package compartment decides which patients' FHIR R4 Patient compartment a
// resource belongs to. It is used by the Bulk Data export engine at ingest
// time, once per resource, so it is written for speed: PatientIDs never
// decodes a resource into generic maps. It walks the JSON once with a small
// validating scanner, skips every element it does not need without
// allocating, and reads only the Reference objects named in the table
// (one allocation per reference it reads, plus the result slice).
//
// # Source of truth
//
// The set of resource types comes from the FHIR R4 (4.0.1)
// CompartmentDefinition/patient. For each type the element paths come from
// the R4 SearchParameter expressions of the parameters chosen below (for
// example Observation "subject" is Observation.subject, Encounter "patient"
// is Encounter.subject.where(resolve() is Patient), Person "patient" is
// Person.link.target.where(resolve() is Patient)). A "where(resolve() is
// Patient)" filter is applied by looking at the reference itself: only
// references to Patient resources are ever counted, on every path. The
// table, with the parameter and expression for every type, is in table.go.
//
// # Project policy: patient-linking parameters only
//
// CompartmentDefinition/patient also lists participant roles: performer,
// author, asserter, recorder, sender, recipient, payee, participant,
// attester, receiver, requester, source, policy-holder, subscriber, payor,
// and the like. For export we use only the parameters that point at the
// patient as the subject of care (patient, subject, beneficiary, individual
// for ResearchSubject, candidate for EnrollmentRequest, ...), so that an
// Observation performed by patient B, a Coverage whose subscriber is patient
// B, or a Claim whose payee is patient B does not leak into patient B's
// export. Where a type's only compartment parameters are participant-style
// (Appointment, AppointmentResponse and Schedule "actor"), they are used,
// and, as everywhere, only references to Patient/... count. AuditEvent is
// kept with its "patient" parameter (agent.who and entity.what, Patient
// references only), the only parameter R4 gives it.
//
// Further decisions:
//
//   - Group is in the R4 compartment through "member", but it is excluded
//     here: a Group listing a million patients must not be "in" a million
//     compartments. InCompartment("Group") is false, Types omits it, and
//     PatientIDs returns nil for it without reading the body. A Group-level
//     export starts from the Group's members; it does not need the Group in
//     each member's compartment.
//   - A Patient is in its own compartment (its own id). Patient.link.other
//     (the R4 "link" parameter) does not add patients: linked records are
//     merged, if at all, by the export engine, not by this package.
//   - Person is in the compartment of every patient in Person.link.target.
//   - contained resources are never examined: a resource is placed by its
//     own elements, not by those of resources it contains.
//
// # Which references count
//
// Only references whose target is a Patient count:
//
//   - relative "Patient/<id>", optionally with "/_history/<vid>";
//   - absolute "http(s)://host/.../Patient/<id>" (the last two path
//     segments, after removing a "/_history/<vid>" suffix);
//   - a bare relative id such as "123" when the Reference has
//     "type": "Patient" (or the Patient StructureDefinition URL).
//
// References that are "urn:uuid:..." or any other URN, contained ("#x"),
// conditional ("Patient?identifier=..."), of another type, or whose id is not
// a valid FHIR id ([A-Za-z0-9.-]{1,64}) are ignored, and so are logical
// references that carry only an identifier. When a literal reference names
// its type, that type decides; "type" only qualifies bare ids.
//
// # Errors
//
// A body that is not valid JSON, is not a JSON object, names a different
// resourceType, or has the wrong JSON shape on a path the table reads (for
// example "subject" as a string, or "reference" as a number) is malformed:
// PatientIDs returns an error wrapping ErrMalformed, never a panic. JSON null
// on a path is treated as absent. For types outside the compartment the body
// is not examined at all. If a key occurs more than once on a path the
// table reads, the references under every occurrence are counted.
//
// All functions are safe for concurrent use.
package compartment
