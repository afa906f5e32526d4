package synth

// Static code tables and name pools. Every table entry is turned into
// pre-rendered JSON fragments once, at package initialisation, so the hot
// path only appends bytes.

const (
	sysSNOMED = "http://snomed.info/sct"
	sysLOINC  = "http://loinc.org"
	sysRxNorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
	sysCVX    = "http://hl7.org/fhir/sid/cvx"
	sysUCUM   = "http://unitsofmeasure.org"
	sysNPI    = "http://hl7.org/fhir/sid/us-npi"
	sysSSN    = "http://hl7.org/fhir/sid/us-ssn"
	sysSynth  = "https://github.com/synthetichealth/synthea"
	sysMRN    = "http://hospital.smarthealthit.org"
	sysGroup  = "urn:flatfhir:synth:group"
)

// code is one coding of a terminology, rendered as a CodeableConcept.
type code struct {
	system, code, display string
}

// dist is a count distribution: with probability p the count is uniform in
// [lo, hi], otherwise 0. Its expectation is p*(lo+hi)/2.
type dist struct {
	p      float64
	lo, hi int
}

func (d dist) mean() float64 { return d.p * float64(d.lo+d.hi) / 2 }

// encType describes one kind of encounter and the clinical activity it
// typically produces.
type encType struct {
	class        string // v3-ActCode
	classDisplay string
	typ          code
	weight       int
	durMin       int64 // seconds
	durMax       int64
	anyTime      bool  // may start at any hour (otherwise office hours)
	vitals       []int // indices into vitalObs
	labs         dist  // laboratory observations
	cond         dist  // conditions diagnosed
	proc         dist  // procedures performed
	med          dist  // medications prescribed
	imm          dist  // immunizations given
	cost         float64
	institution  bool // institutional (vs professional) claim
}

const (
	vHeight = iota
	vWeight
	vBMI
	vHeart
	vResp
	vTemp
	vSpO2
)

const minute, hour, day = 60, 3600, 86400

var encTypes = []encType{
	{
		class: "AMB", classDisplay: "ambulatory",
		typ:    code{sysSNOMED, "162673000", "General examination of patient (procedure)"},
		weight: 30, durMin: 15 * minute, durMax: 45 * minute,
		vitals: []int{vHeight, vWeight, vBMI, vHeart, vResp, vTemp, vSpO2},
		labs:   dist{0.5, 2, 6}, cond: dist{0.15, 1, 1}, proc: dist{0.5, 1, 2},
		med: dist{0.3, 1, 1}, imm: dist{0.5, 1, 2}, cost: 136.80,
	},
	{
		class: "AMB", classDisplay: "ambulatory",
		typ:    code{sysSNOMED, "185345009", "Encounter for symptom (procedure)"},
		weight: 30, durMin: 15 * minute, durMax: 60 * minute,
		vitals: []int{vHeart, vResp, vTemp},
		labs:   dist{0.25, 1, 3}, cond: dist{0.8, 1, 2}, proc: dist{0.25, 1, 1},
		med: dist{0.6, 1, 2}, imm: dist{0.05, 1, 1}, cost: 85.55,
	},
	{
		class: "AMB", classDisplay: "ambulatory",
		typ:    code{sysSNOMED, "185349003", "Encounter for check up (procedure)"},
		weight: 15, durMin: 20 * minute, durMax: 40 * minute,
		vitals: []int{vWeight, vBMI, vHeart},
		labs:   dist{0.5, 1, 4}, cond: dist{0.3, 1, 1}, proc: dist{0.3, 1, 1},
		med: dist{0.7, 1, 2}, imm: dist{0.1, 1, 1}, cost: 110.00,
	},
	{
		class: "AMB", classDisplay: "ambulatory",
		typ:    code{sysSNOMED, "702927004", "Urgent care clinic (environment)"},
		weight: 8, durMin: 30 * minute, durMax: 90 * minute,
		vitals: []int{vHeart, vResp, vTemp, vSpO2},
		labs:   dist{0.3, 1, 2}, cond: dist{0.9, 1, 1}, proc: dist{0.3, 1, 1},
		med: dist{0.7, 1, 2}, cost: 180.00,
	},
	{
		class: "EMER", classDisplay: "emergency",
		typ:    code{sysSNOMED, "50849002", "Emergency room admission (procedure)"},
		weight: 12, durMin: 1 * hour, durMax: 6 * hour, anyTime: true,
		vitals: []int{vWeight, vHeart, vResp, vTemp, vSpO2},
		labs:   dist{0.7, 2, 6}, cond: dist{0.9, 1, 2}, proc: dist{0.7, 1, 3},
		med: dist{0.8, 1, 3}, imm: dist{0.05, 1, 1}, cost: 1250.00, institution: true,
	},
	{
		class: "IMP", classDisplay: "inpatient encounter",
		typ:    code{sysSNOMED, "32485007", "Hospital admission (procedure)"},
		weight: 5, durMin: 1 * day, durMax: 7 * day, anyTime: true,
		vitals: []int{vHeight, vWeight, vBMI, vHeart, vResp, vTemp, vSpO2},
		labs:   dist{1, 4, 10}, cond: dist{1, 1, 3}, proc: dist{1, 1, 4},
		med: dist{1, 1, 4}, imm: dist{0.1, 1, 1}, cost: 9500.00, institution: true,
	},
}

// encountersPerPatient is the uniform range of encounters per patient.
var encountersPerPatient = dist{1, 2, 6}

// obsDef is an Observation kind with a plausible value range.
type obsDef struct {
	code     code
	unit     string // UCUM code, also used as the human-readable unit
	lo, hi   float64
	decimals int
}

var vitalObs = []obsDef{
	vHeight: {code{sysLOINC, "8302-2", "Body Height"}, "cm", 0, 0, 1},
	vWeight: {code{sysLOINC, "29463-7", "Body Weight"}, "kg", 0, 0, 1},
	vBMI:    {code{sysLOINC, "39156-5", "Body mass index (BMI) [Ratio]"}, "kg/m2", 0, 0, 1},
	vHeart:  {code{sysLOINC, "8867-4", "Heart rate"}, "/min", 58, 102, 0},
	vResp:   {code{sysLOINC, "9279-1", "Respiratory rate"}, "/min", 12, 20, 0},
	vTemp:   {code{sysLOINC, "8310-5", "Body temperature"}, "Cel", 36.1, 37.6, 1},
	vSpO2:   {code{sysLOINC, "2708-6", "Oxygen saturation in Arterial blood"}, "%", 94, 100, 1},
}

var labObs = []obsDef{
	{code{sysLOINC, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma"}, "mg/dL", 145, 265, 1},
	{code{sysLOINC, "2571-8", "Triglycerides [Mass/volume] in Serum or Plasma"}, "mg/dL", 70, 250, 1},
	{code{sysLOINC, "18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay"}, "mg/dL", 70, 185, 1},
	{code{sysLOINC, "2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma"}, "mg/dL", 35, 80, 1},
	{code{sysLOINC, "2339-0", "Glucose [Mass/volume] in Blood"}, "mg/dL", 68, 140, 1},
	{code{sysLOINC, "38483-4", "Creatinine [Mass/volume] in Blood"}, "mg/dL", 0.6, 1.35, 2},
	{code{sysLOINC, "6299-2", "Urea nitrogen [Mass/volume] in Blood"}, "mg/dL", 7, 21, 1},
	{code{sysLOINC, "49765-1", "Calcium [Mass/volume] in Blood"}, "mg/dL", 8.5, 10.3, 1},
	{code{sysLOINC, "2947-0", "Sodium [Moles/volume] in Blood"}, "mmol/L", 135, 145, 1},
	{code{sysLOINC, "6298-4", "Potassium [Moles/volume] in Blood"}, "mmol/L", 3.5, 5.1, 1},
	{code{sysLOINC, "2069-3", "Chloride [Moles/volume] in Blood"}, "mmol/L", 96, 107, 1},
	{code{sysLOINC, "718-7", "Hemoglobin [Mass/volume] in Blood"}, "g/dL", 11.5, 17.5, 1},
	{code{sysLOINC, "6690-2", "Leukocytes [#/volume] in Blood by Automated count"}, "10*3/uL", 3.8, 10.8, 1},
	{code{sysLOINC, "777-3", "Platelets [#/volume] in Blood by Automated count"}, "10*3/uL", 150, 450, 0},
	{code{sysLOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"}, "%", 4.4, 8.6, 1},
}

// condDef is a SNOMED-coded condition; chronic ones stay active.
type condDef struct {
	code    code
	chronic bool
}

var conditions = []condDef{
	{code{sysSNOMED, "444814009", "Viral sinusitis (disorder)"}, false},
	{code{sysSNOMED, "195662009", "Acute viral pharyngitis (disorder)"}, false},
	{code{sysSNOMED, "10509002", "Acute bronchitis (disorder)"}, false},
	{code{sysSNOMED, "59621000", "Essential hypertension (disorder)"}, true},
	{code{sysSNOMED, "44054006", "Diabetes mellitus type 2 (disorder)"}, true},
	{code{sysSNOMED, "162864005", "Body mass index 30+ - obesity (finding)"}, true},
	{code{sysSNOMED, "65363002", "Otitis media (disorder)"}, false},
	{code{sysSNOMED, "43878008", "Streptococcal sore throat (disorder)"}, false},
	{code{sysSNOMED, "233604007", "Pneumonia (disorder)"}, false},
	{code{sysSNOMED, "55822004", "Hyperlipidemia (disorder)"}, true},
	{code{sysSNOMED, "195967001", "Asthma (disorder)"}, true},
	{code{sysSNOMED, "40055000", "Chronic sinusitis (disorder)"}, true},
	{code{sysSNOMED, "271737000", "Anemia (disorder)"}, false},
	{code{sysSNOMED, "15777000", "Prediabetes (finding)"}, true},
	{code{sysSNOMED, "283371005", "Laceration of forearm (disorder)"}, false},
	{code{sysSNOMED, "62106007", "Concussion with no loss of consciousness (disorder)"}, false},
	{code{sysSNOMED, "68496003", "Polyp of colon (disorder)"}, false},
	{code{sysSNOMED, "36971009", "Sinusitis (disorder)"}, false},
}

// priced is a code with a typical price, used for claim items.
type priced struct {
	code     code
	lo, high float64
}

var procedures = []priced{
	{code{sysSNOMED, "430193006", "Medication Reconciliation (procedure)"}, 250, 650},
	{code{sysSNOMED, "710824005", "Assessment of health and social care needs (procedure)"}, 300, 500},
	{code{sysSNOMED, "171207006", "Depression screening (procedure)"}, 350, 500},
	{code{sysSNOMED, "428191000124101", "Documentation of current medications (procedure)"}, 250, 400},
	{code{sysSNOMED, "73761001", "Colonoscopy (procedure)"}, 2500, 9000},
	{code{sysSNOMED, "117015009", "Throat culture (procedure)"}, 1800, 3300},
	{code{sysSNOMED, "23426006", "Measurement of respiratory function (procedure)"}, 400, 700},
	{code{sysSNOMED, "399208008", "Plain chest X-ray (procedure)"}, 300, 900},
	{code{sysSNOMED, "288086009", "Suture open wound (procedure)"}, 600, 1500},
	{code{sysSNOMED, "80146002", "Excision of appendix (procedure)"}, 12000, 30000},
	{code{sysSNOMED, "76164006", "Biopsy of colon (procedure)"}, 1500, 4000},
	{code{sysSNOMED, "127783003", "Spirometry (procedure)"}, 300, 600},
	{code{sysSNOMED, "252160004", "Standard pregnancy test (procedure)"}, 150, 300},
}

var medications = []priced{
	{code{sysRxNorm, "313782", "Acetaminophen 325 MG Oral Tablet"}, 3, 12},
	{code{sysRxNorm, "308182", "Amoxicillin 250 MG Oral Capsule"}, 10, 40},
	{code{sysRxNorm, "834061", "Penicillin V Potassium 250 MG Oral Tablet"}, 8, 30},
	{code{sysRxNorm, "314076", "lisinopril 10 MG Oral Tablet"}, 12, 60},
	{code{sysRxNorm, "860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"}, 15, 70},
	{code{sysRxNorm, "197361", "Amlodipine 5 MG Oral Tablet"}, 10, 45},
	{code{sysRxNorm, "310798", "Hydrochlorothiazide 25 MG Oral Tablet"}, 6, 25},
	{code{sysRxNorm, "849574", "Naproxen sodium 220 MG Oral Tablet"}, 5, 20},
	{code{sysRxNorm, "198405", "Ibuprofen 100 MG Oral Tablet"}, 4, 15},
	{code{sysRxNorm, "562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet"}, 20, 80},
	{code{sysRxNorm, "895994", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler"}, 150, 300},
	{code{sysRxNorm, "745679", "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"}, 40, 90},
	{code{sysRxNorm, "259255", "Atorvastatin 80 MG Oral Tablet"}, 20, 120},
	{code{sysRxNorm, "1049221", "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet"}, 15, 60},
}

// vaccines are split by audience; pediatric ones go to patients under 18.
var (
	vaccinesChild = []priced{
		{code{sysCVX, "08", "Hep B, adolescent or pediatric"}, 120, 140},
		{code{sysCVX, "20", "DTaP"}, 130, 150},
		{code{sysCVX, "10", "IPV"}, 130, 150},
		{code{sysCVX, "133", "Pneumococcal conjugate PCV 13"}, 140, 150},
		{code{sysCVX, "03", "MMR"}, 130, 150},
		{code{sysCVX, "21", "varicella"}, 130, 150},
		{code{sysCVX, "83", "Hep A, ped/adol, 2 dose"}, 130, 150},
		{code{sysCVX, "140", "Influenza, seasonal, injectable, preservative free"}, 130, 145},
		{code{sysCVX, "62", "HPV, quadrivalent"}, 130, 150},
		{code{sysCVX, "114", "meningococcal MCV4P"}, 130, 150},
	}
	vaccinesAdult = []priced{
		{code{sysCVX, "140", "Influenza, seasonal, injectable, preservative free"}, 130, 145},
		{code{sysCVX, "140", "Influenza, seasonal, injectable, preservative free"}, 130, 145},
		{code{sysCVX, "115", "Tdap"}, 130, 150},
		{code{sysCVX, "113", "Td (adult) preservative free"}, 130, 150},
		{code{sysCVX, "133", "Pneumococcal conjugate PCV 13"}, 140, 150},
		{code{sysCVX, "121", "zoster"}, 130, 150},
		{code{sysCVX, "208", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose"}, 130, 150},
	}
)

var (
	givenMale = []string{
		"James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph",
		"Thomas", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul",
		"Andrew", "Joshua", "Kevin", "Brian", "George", "Edward", "Ronald", "Timothy",
		"Jason", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "José", "Luis",
		"Carlos", "Wei", "Hiroshi", "Ahmed", "Ivan", "Omar", "Liam", "Noah",
	}
	givenFemale = []string{
		"Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
		"Sarah", "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley",
		"Kimberly", "Emily", "Donna", "Michelle", "Dorothy", "Carol", "Amanda", "Melissa",
		"Deborah", "Stephanie", "Rebecca", "Laura", "Sharon", "Cynthia", "María", "Sofía",
		"Mei", "Yuki", "Fatima", "Olga", "Zoë", "Emma", "Olivia", "Ava",
	}
	families = []string{
		"Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
		"Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas",
		"Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
		"Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
		"Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
		"Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell",
		"Carter", "Roberts", "O'Connor", "Kowalski", "Müller", "Chen", "Tanaka", "Ivanova",
	}
	streets = []string{
		"Main Street", "Oak Avenue", "Maple Drive", "Cedar Lane", "Pine Street", "Elm Street",
		"Washington Avenue", "Lake Road", "Hill Street", "Park Avenue", "Church Street",
		"Spring Street", "River Road", "Highland Avenue", "School Street", "Chestnut Street",
		"Summer Street", "Franklin Street", "Pleasant Street", "Center Street",
	}
	providerSuffixes = []string{
		"General Hospital", "Medical Center", "Family Practice", "Urgent Care",
		"Community Health Center", "Pediatrics", "Internal Medicine Associates", "Regional Hospital",
	}
	payerNames = []string{
		"Medicare", "Medicaid", "Blue Cross Blue Shield", "Aetna", "UnitedHealthcare",
		"Cigna Health", "Humana", "Anthem", "Kaiser Permanente", "Harvard Pilgrim",
	}
)

// place is a city with its state and a ZIP code prefix.
type place struct {
	city, state, zip3 string
}

var places = []place{
	{"Boston", "MA", "021"}, {"Worcester", "MA", "016"}, {"Springfield", "MA", "011"},
	{"Cambridge", "MA", "021"}, {"Lowell", "MA", "018"}, {"Brockton", "MA", "023"},
	{"Quincy", "MA", "021"}, {"Lynn", "MA", "019"}, {"New Bedford", "MA", "027"},
	{"Fall River", "MA", "027"}, {"Newton", "MA", "024"}, {"Somerville", "MA", "021"},
	{"Providence", "RI", "029"}, {"Hartford", "CT", "061"}, {"Manchester", "NH", "031"},
	{"Portland", "ME", "041"}, {"Burlington", "VT", "054"}, {"Albany", "NY", "122"},
	{"Chicago", "IL", "606"}, {"Denver", "CO", "802"}, {"Phoenix", "AZ", "850"},
	{"Seattle", "WA", "981"}, {"Austin", "TX", "787"}, {"Atlanta", "GA", "303"},
}

// zone is a fixed UTC offset used for every dateTime of one patient.
type zone struct {
	offset int64 // seconds east of UTC
	text   string
}

var zones = []zone{
	{-4 * hour, "-04:00"}, {-5 * hour, "-05:00"}, {-5 * hour, "-05:00"}, {-6 * hour, "-06:00"},
	{-7 * hour, "-07:00"}, {-8 * hour, "-08:00"}, {-10 * hour, "-10:00"},
}

type marital struct{ code, display string }

var maritals = []marital{
	{"M", "Married"}, {"S", "Never Married"}, {"D", "Divorced"}, {"W", "Widowed"}, {"M", "Married"},
}
