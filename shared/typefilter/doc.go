// Package typefilter evaluates the FHIR Bulk Data (IG v2.0.0) kick-off
// parameter _typeFilter against resource JSON. An export server parses the
// parameter once with Parse and then calls Match on every resource it is
// about to export, as a post-filter.
//
// # The parameter
//
// Each _typeFilter value holds FHIR REST search queries
// "ResourceType?param=value&param2=value2", URL-encoded by the client and
// joined by commas; the parameter may repeat. Parse takes the values as the
// HTTP layer decoded them once, for example
//
//	MedicationRequest?status=active,MedicationRequest?status=completed&authoredon=gt2018-07-01T00:00:00Z
//
// A value is split into subqueries only at a comma followed by
// "[A-Z][A-Za-z]+?" (a resource type name and "?"), so a comma inside a
// parameter value ("code=a,b") stays in the value. The query part of each
// subquery is then decoded with net/url.ParseQuery: values the client
// encoded twice ("%2C" for a comma, "%7C" for "|", "%2B" for "+") arrive
// decoded here. ParseQuery reads "+" as a space; in a date value a space in
// front of a zone offset ("2020-01-01T10:00:00 05:00") is read back as the
// "+" it was. Elsewhere clients must send "+" as "%2B".
//
// Combination rules:
//
//   - Subqueries for the same type are ORed, across one value and across
//     repeated _typeFilter parameters (union).
//   - Within a subquery the parameters are ANDed; a parameter that repeats
//     ("date=ge2020&date=lt2021") is ANDed with itself.
//   - A comma inside one parameter value is an OR of values
//     ("code=8302-2,29463-7"). The R4 escapes "\,", "\|", "\$" and "\\"
//     make a comma, bar, dollar or backslash literal.
//   - Types without a subquery are not filtered: Match returns true without
//     reading the body.
//   - A subquery with no parameters ("Observation?") matches every resource
//     of its type.
//
// # Errors
//
// Parse rejects the whole parameter, naming the offending subquery and
// parameter, for: a subquery without "Type?"; an unknown resource type (the
// R4 list of package fhir; names are case-sensitive); a result parameter
// (_include, _revinclude, _sort, _count, _elements, _summary, _total,
// _contained, _containedType), which is "not allowed in _typeFilter"; a
// search parameter not in the table below (including chained parameters,
// _has, _tag, _profile, _text, ...); a modifier other than :missing (any
// parameter), :exact and :contains (string) and :not (token); and a
// malformed value: an empty value or empty OR alternative, a token "|" or
// with two unescaped bars, a bad date or prefix, a reference that is not
// "Type/id", an id, an absolute URL ending in Type/id, or a URN, a Patient
// parameter given another type, or :missing with a value other than true or
// false.
//
// Match returns an error for a malformed body: not a JSON object, a
// resourceType other than the type asked for, or the wrong JSON shape on an
// element the evaluation reads (a Reference that is a string, a code that is
// a number, an unparsable date). JSON null is absence. Elements the filter
// does not read are not checked, and evaluation stops at the first subquery
// that matches, so later subqueries' elements may go unchecked.
//
// # Supported search parameters
//
// Every resource type supports
//
//	_id           token      id
//	_lastUpdated  date       meta.lastUpdated
//
// and these types support more (paths are from the resource root; every
// step may be an array; "|" separates alternative paths, as for the JSON
// names of a choice element [x]):
//
//	Patient               gender                token      gender
//	                      birthdate             date       birthDate
//	                      family                string     name.family
//	                      given                 string     name.given
//	                      name                  string     name.family | name.given | name.text
//	                      identifier            token      identifier
//	                      active                token      active
//	                      general-practitioner  reference  generalPractitioner
//	                      organization          reference  managingOrganization
//	Observation           status                token      status
//	                      code                  token      code
//	                      category              token      category
//	                      subject               reference  subject
//	                      patient               reference  subject (Patient only)
//	                      encounter             reference  encounter
//	                      date                  date       effectiveDateTime | effectivePeriod | effectiveInstant
//	Condition             clinical-status       token      clinicalStatus
//	                      verification-status   token      verificationStatus
//	                      category              token      category
//	                      code                  token      code
//	                      subject               reference  subject
//	                      patient               reference  subject (Patient only)
//	                      encounter             reference  encounter
//	                      onset-date            date       onsetDateTime | onsetPeriod
//	                      recorded-date         date       recordedDate
//	Encounter             status                token      status
//	                      class                 token      class
//	                      type                  token      type
//	                      subject               reference  subject
//	                      patient               reference  subject (Patient only)
//	                      date                  date       period
//	                      service-provider      reference  serviceProvider
//	                      participant           reference  participant.individual
//	MedicationRequest     status                token      status
//	                      intent                token      intent
//	                      code                  token      medicationCodeableConcept
//	                      subject               reference  subject
//	                      patient               reference  subject (Patient only)
//	                      authoredon            date       authoredOn
//	                      encounter             reference  encounter
//	                      requester             reference  requester
//	Procedure             status                token      status
//	                      code                  token      code
//	                      subject               reference  subject
//	                      patient               reference  subject (Patient only)
//	                      date                  date       performedDateTime | performedPeriod
//	                      encounter             reference  encounter
//	Immunization          status                token      status
//	                      vaccine-code          token      vaccineCode
//	                      patient               reference  patient (Patient only)
//	                      date                  date       occurrenceDateTime
//	Claim                 status                token      status
//	                      use                   token      use
//	                      patient               reference  patient (Patient only)
//	                      provider              reference  provider
//	                      insurer               reference  insurer
//	                      created               date       created
//	ExplanationOfBenefit  status                token      status
//	                      patient               reference  patient (Patient only)
//	                      provider              reference  provider
//	                      claim                 reference  claim
//	                      coverage              reference  insurance.coverage
//	                      created               date       created
//	Coverage              status                token      status
//	                      beneficiary           reference  beneficiary
//	                      patient               reference  beneficiary (Patient only)
//	                      payor                 reference  payor
//	DiagnosticReport      status                token      status
//	                      code                  token      code
//	                      category              token      category
//	                      subject               reference  subject
//	                      patient               reference  subject (Patient only)
//	                      encounter             reference  encounter
//	                      date                  date       effectiveDateTime | effectivePeriod
//	AllergyIntolerance    clinical-status       token      clinicalStatus
//	                      verification-status   token      verificationStatus
//	                      code                  token      code | reaction.substance
//	                      patient               reference  patient (Patient only)
//	CarePlan              status                token      status
//	                      intent                token      intent
//	                      category              token      category
//	                      subject               reference  subject
//	                      patient               reference  subject (Patient only)
//	                      date                  date       period
//	Organization          name                  string     name | alias
//	                      identifier            token      identifier
//	                      active                token      active
//	                      type                  token      type
//	Practitioner          name                  string     name.family | name.given | name.text
//	                      family                string     name.family
//	                      given                 string     name.given
//	                      identifier            token      identifier
//	                      active                token      active
//
// The paths follow the R4 (4.0.1) SearchParameter expressions; where R4
// searches more than JSON can cheaply express, the table keeps the common
// shapes (Observation date does not search effectiveTiming, Procedure date
// not performedString/Age/Range, Immunization date not occurrenceString).
// Supported returns the same table, parameter to kind, for every R4 type.
//
// # Semantics (FHIR R4 search)
//
// token: "[system]|[code]", "code", "system|" or "|code". It matches a
// Coding (system, code), a CodeableConcept (any of its codings; text is not
// searched), an Identifier (system, value), and code, string and boolean
// primitives. "code" matches any system; "system|code" needs both;
// "system|" any code of the system; "|code" a code without a system. Codes
// and systems compare case-sensitively. A code primitive (status, gender,
// intent, use) has the implicit system of its required binding, e.g.
// "http://hl7.org/fhir/administrative-gender|male"; as the JSON carries no
// system, "|code" also matches it. Booleans match "true" and "false" (with
// no system). :not matches a resource none of whose values matches any of
// the OR'ed values, including a resource without the element.
//
// reference: "Type/id", a bare "id" (any type with that id), an absolute
// URL ending in "Type/id", or a URN (urn:uuid:..., compared as is). It is
// compared with Reference.reference: a relative "Type/id", an absolute URL
// ending in Type/id (its base is ignored, as is a search value's), a
// "/_history/version" suffix is ignored on both sides, and a bare id takes
// its type from Reference.type. Contained ("#x") and conditional references,
// and References with only an identifier or display, never match. For
// every "patient" parameter only references to a Patient count (R4
// "where(resolve() is Patient)"), and its value may not name another type.
//
// date: "[prefix]value", value YYYY, YYYY-MM, YYYY-MM-DD or
// YYYY-MM-DDThh:mm[:ss[.fff]][Z|(+|-)hh:mm]. Both the search value and the
// resource value (date, dateTime, instant) stand for a range one unit of
// their precision long: "2013-02" is all of February 2013, "...T10:00:00Z"
// one second, ".123Z" one millisecond. A value without a zone, and a date
// without a time, is taken as UTC. A Period is [start, end], with the end
// at the end of its precision; a missing start or end is open (infinite).
// With S the search range and T the resource range, the prefixes are those
// of R4 3.1.1.4.3:
//
//	eq (default)  S fully contains T
//	ne            S does not fully contain T
//	gt            the range above S overlaps T (T ends after S)
//	lt            the range below S overlaps T (T starts before S)
//	ge            gt, or S fully contains T
//	le            lt, or S fully contains T
//	sa            T starts after S ends (no overlap)
//	eb            T ends before S starts (no overlap)
//	ap            T overlaps S widened on both sides by 10% of the gap
//	              between now (when Parse runs) and the value, and by at
//	              least one day
//
// Dates are compared in UTC, so "Observation?date=2011-02-02" does not
// match an effectiveDateTime of "2011-02-02T22:30:00-05:00" (03:30 UTC on
// the 3rd).
//
// string: by default a case-insensitive "starts with", which also ignores
// Latin diacritics ("muller" finds "Müller"); :exact is case- and
// accent-sensitive equality; :contains a case- and accent-insensitive
// substring. It works on strings and arrays of strings, nested too
// (Patient name.given is an array in an array of names).
//
// :missing=true matches a resource with no value for the parameter, and
// :missing=false one with a value. Any non-null JSON value on a path counts
// (false, an Identifier, a Reference with only a display), and an empty
// array does not; for the "patient" parameters only Patient references
// count.
//
// A Filter is immutable after Parse and safe for concurrent use.
package typefilter
