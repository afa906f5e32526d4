package compartment

// link names one R4 search parameter of the patient compartment and the
// element path it is evaluated on, relative to the resource root. Path steps
// are separated by dots; every step may hold a single value or an array
// (Appointment.participant is an array of backbone elements, each with one
// actor). The last step holds a Reference or an array of References.
type link struct {
	Param string // R4 search parameter code, as listed in CompartmentDefinition/patient
	Path  string // element path, from the parameter's R4 expression
}

// patientLinks maps every R4 CompartmentDefinition/patient resource type
// that has inclusion parameters, except Group, to the patient-linking
// parameters used for export. Each comment gives the R4 (4.0.1)
// SearchParameter expression and the compartment parameters left out by the
// project policy (see the package documentation). "Patient refs only" is
// implied everywhere: a reference counts only if it names a Patient.
//
// Patient itself is handled specially (its own id) and Group is excluded;
// both are listed in comments only.
var patientLinks = map[string][]link{
	// Account: subject = Account.subject.
	"Account": {{"subject", "subject"}},
	// AdverseEvent: subject = AdverseEvent.subject.
	"AdverseEvent": {{"subject", "subject"}},
	// AllergyIntolerance: patient = AllergyIntolerance.patient.
	// Not used: recorder, asserter.
	"AllergyIntolerance": {{"patient", "patient"}},
	// Appointment: actor = Appointment.participant.actor. Only parameter;
	// participant-style, Patient refs only.
	"Appointment": {{"actor", "participant.actor"}},
	// AppointmentResponse: actor = AppointmentResponse.actor. Only parameter;
	// participant-style, Patient refs only.
	"AppointmentResponse": {{"actor", "actor"}},
	// AuditEvent: patient = AuditEvent.agent.who.where(resolve() is Patient)
	// | AuditEvent.entity.what.where(resolve() is Patient).
	"AuditEvent": {{"patient", "agent.who"}, {"patient", "entity.what"}},
	// Basic: patient = Basic.subject.where(resolve() is Patient).
	// Not used: author.
	"Basic": {{"patient", "subject"}},
	// BodyStructure: patient = BodyStructure.patient.
	"BodyStructure": {{"patient", "patient"}},
	// CarePlan: patient = CarePlan.subject.where(resolve() is Patient).
	// Not used: performer (CarePlan.activity.detail.performer).
	"CarePlan": {{"patient", "subject"}},
	// CareTeam: patient = CareTeam.subject.where(resolve() is Patient).
	// Not used: participant (CareTeam.participant.member).
	"CareTeam": {{"patient", "subject"}},
	// ChargeItem: subject = ChargeItem.subject.
	"ChargeItem": {{"subject", "subject"}},
	// Claim: patient = Claim.patient. Not used: payee (Claim.payee.party).
	"Claim": {{"patient", "patient"}},
	// ClaimResponse: patient = ClaimResponse.patient.
	"ClaimResponse": {{"patient", "patient"}},
	// ClinicalImpression: subject = ClinicalImpression.subject.
	"ClinicalImpression": {{"subject", "subject"}},
	// Communication: subject = Communication.subject.
	// Not used: sender, recipient.
	"Communication": {{"subject", "subject"}},
	// CommunicationRequest: subject = CommunicationRequest.subject.
	// Not used: sender, recipient, requester.
	"CommunicationRequest": {{"subject", "subject"}},
	// Composition: subject = Composition.subject.
	// Not used: author, attester (Composition.attester.party).
	"Composition": {{"subject", "subject"}},
	// Condition: patient = Condition.subject.where(resolve() is Patient).
	// Not used: asserter.
	"Condition": {{"patient", "subject"}},
	// Consent: patient = Consent.patient.
	"Consent": {{"patient", "patient"}},
	// Coverage: beneficiary = Coverage.beneficiary.
	// Not used: policy-holder (Coverage.policyHolder), subscriber, payor.
	"Coverage": {{"beneficiary", "beneficiary"}},
	// CoverageEligibilityRequest: patient = CoverageEligibilityRequest.patient.
	"CoverageEligibilityRequest": {{"patient", "patient"}},
	// CoverageEligibilityResponse: patient = CoverageEligibilityResponse.patient.
	"CoverageEligibilityResponse": {{"patient", "patient"}},
	// DetectedIssue: patient = DetectedIssue.patient.
	"DetectedIssue": {{"patient", "patient"}},
	// DeviceRequest: subject = DeviceRequest.subject. Not used: performer.
	"DeviceRequest": {{"subject", "subject"}},
	// DeviceUseStatement: subject = DeviceUseStatement.subject.
	"DeviceUseStatement": {{"subject", "subject"}},
	// DiagnosticReport: subject = DiagnosticReport.subject.
	"DiagnosticReport": {{"subject", "subject"}},
	// DocumentManifest: subject = DocumentManifest.subject.
	// Not used: author, recipient.
	"DocumentManifest": {{"subject", "subject"}},
	// DocumentReference: subject = DocumentReference.subject.
	// Not used: author.
	"DocumentReference": {{"subject", "subject"}},
	// Encounter: patient = Encounter.subject.where(resolve() is Patient).
	"Encounter": {{"patient", "subject"}},
	// EnrollmentRequest: subject = EnrollmentRequest.candidate.
	"EnrollmentRequest": {{"subject", "candidate"}},
	// EpisodeOfCare: patient = EpisodeOfCare.patient.
	"EpisodeOfCare": {{"patient", "patient"}},
	// ExplanationOfBenefit: patient = ExplanationOfBenefit.patient.
	// Not used: payee (ExplanationOfBenefit.payee.party).
	"ExplanationOfBenefit": {{"patient", "patient"}},
	// FamilyMemberHistory: patient = FamilyMemberHistory.patient.
	"FamilyMemberHistory": {{"patient", "patient"}},
	// Flag: patient = Flag.subject.where(resolve() is Patient).
	"Flag": {{"patient", "subject"}},
	// Goal: patient = Goal.subject.where(resolve() is Patient).
	"Goal": {{"patient", "subject"}},
	// Group: member = Group.member.entity. EXCLUDED by project policy.
	// ImagingStudy: patient = ImagingStudy.subject.where(resolve() is Patient).
	"ImagingStudy": {{"patient", "subject"}},
	// Immunization: patient = Immunization.patient.
	"Immunization": {{"patient", "patient"}},
	// ImmunizationEvaluation: patient = ImmunizationEvaluation.patient.
	"ImmunizationEvaluation": {{"patient", "patient"}},
	// ImmunizationRecommendation: patient = ImmunizationRecommendation.patient.
	"ImmunizationRecommendation": {{"patient", "patient"}},
	// Invoice: subject = Invoice.subject; patient =
	// Invoice.subject.where(resolve() is Patient) (same element).
	// Not used: recipient.
	"Invoice": {{"subject", "subject"}},
	// List: subject = List.subject. Not used: source.
	"List": {{"subject", "subject"}},
	// MeasureReport: patient = MeasureReport.subject.where(resolve() is Patient).
	"MeasureReport": {{"patient", "subject"}},
	// Media: subject = Media.subject.
	"Media": {{"subject", "subject"}},
	// MedicationAdministration: subject = MedicationAdministration.subject;
	// patient = MedicationAdministration.subject.where(resolve() is Patient)
	// (same element). Not used: performer (MedicationAdministration.performer.actor).
	"MedicationAdministration": {{"subject", "subject"}},
	// MedicationDispense: subject = MedicationDispense.subject; patient =
	// MedicationDispense.subject.where(resolve() is Patient) (same element).
	// Not used: receiver.
	"MedicationDispense": {{"subject", "subject"}},
	// MedicationRequest: subject = MedicationRequest.subject.
	"MedicationRequest": {{"subject", "subject"}},
	// MedicationStatement: subject = MedicationStatement.subject.
	"MedicationStatement": {{"subject", "subject"}},
	// MolecularSequence: patient = MolecularSequence.patient.
	"MolecularSequence": {{"patient", "patient"}},
	// NutritionOrder: patient = NutritionOrder.patient.
	"NutritionOrder": {{"patient", "patient"}},
	// Observation: subject = Observation.subject. Not used: performer.
	"Observation": {{"subject", "subject"}},
	// Patient: its own id. Not used: link (Patient.link.other).
	// Person: patient = Person.link.target.where(resolve() is Patient).
	"Person": {{"patient", "link.target"}},
	// Procedure: patient = Procedure.subject.where(resolve() is Patient).
	// Not used: performer (Procedure.performer.actor).
	"Procedure": {{"patient", "subject"}},
	// Provenance: patient = Provenance.target.where(resolve() is Patient).
	"Provenance": {{"patient", "target"}},
	// QuestionnaireResponse: subject = QuestionnaireResponse.subject.
	// Not used: author.
	"QuestionnaireResponse": {{"subject", "subject"}},
	// RelatedPerson: patient = RelatedPerson.patient.
	"RelatedPerson": {{"patient", "patient"}},
	// RequestGroup: subject = RequestGroup.subject.
	// Not used: participant (RequestGroup.action.participant).
	"RequestGroup": {{"subject", "subject"}},
	// ResearchSubject: individual = ResearchSubject.individual.
	"ResearchSubject": {{"individual", "individual"}},
	// RiskAssessment: subject = RiskAssessment.subject.
	"RiskAssessment": {{"subject", "subject"}},
	// Schedule: actor = Schedule.actor. Only parameter; participant-style,
	// Patient refs only.
	"Schedule": {{"actor", "actor"}},
	// ServiceRequest: subject = ServiceRequest.subject. Not used: performer.
	"ServiceRequest": {{"subject", "subject"}},
	// Specimen: subject = Specimen.subject.
	"Specimen": {{"subject", "subject"}},
	// SupplyDelivery: patient = SupplyDelivery.patient.
	"SupplyDelivery": {{"patient", "patient"}},
	// SupplyRequest: subject = SupplyRequest.deliverTo.
	"SupplyRequest": {{"subject", "deliverTo"}},
	// VisionPrescription: patient = VisionPrescription.patient.
	"VisionPrescription": {{"patient", "patient"}},
}
