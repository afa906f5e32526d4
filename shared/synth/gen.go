package synth

import (
	"context"
	"math"
	"math/rand/v2"
	"strconv"
	"time"
)

// Resource kinds, each with its own id sequence.
const (
	kOrganization = iota
	kPractitioner
	kPatient
	kCoverage
	kEncounter
	kCondition
	kObservation
	kProcedure
	kMedicationRequest
	kImmunization
	kClaim
	kExplanationOfBenefit
	numKinds
)

var kindNames = [numKinds]string{
	"Organization", "Practitioner", "Patient", "Coverage", "Encounter", "Condition",
	"Observation", "Procedure", "MedicationRequest", "Immunization", "Claim",
	"ExplanationOfBenefit",
}

// Pre-rendered CodeableConcepts, parallel to the tables.
var (
	encTypeCC  []string
	vitalCode  []string // `"category":[...],"code":{...}` of each vital sign
	labCode    []string // the same for laboratory observations
	vitalUnit  []string // `,"unit":...,"system":...,"code":...}` closing valueQuantity
	labUnit    []string
	condCC     []string
	procCC     []string
	medCC      []string
	vaxChildCC []string
	vaxAdultCC []string
	encWeight  int // sum of encTypes weights
)

var (
	windowStart = time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	windowEnd   = time.Date(2024, 11, 15, 0, 0, 0, 0, time.UTC).Unix() // last encounter day
	refNow      = time.Date(2024, 12, 31, 0, 0, 0, 0, time.UTC).Unix()
	birthFirst  = time.Date(1934, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	birthLast   = time.Date(2024, 6, 30, 0, 0, 0, 0, time.UTC).Unix()
	activeAfter = time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC).Unix()
	covid       = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
)

const year = 365.2425 * day

func init() {
	ccs := func(cs []code) []string {
		out := make([]string, len(cs))
		for i, c := range cs {
			out[i] = renderCC(c)
		}
		return out
	}
	pcs := func(ps []priced) []string {
		out := make([]string, len(ps))
		for i, p := range ps {
			out[i] = renderCC(p.code)
		}
		return out
	}
	obs := func(defs []obsDef, category, display string) (codes, units []string) {
		for _, d := range defs {
			codes = append(codes, `"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"`+
				category+`","display":"`+display+`"}]}],"code":`+renderCC(d.code))
			u := string(appendStr(nil, d.unit))
			units = append(units, `,"unit":`+u+`,"system":"`+sysUCUM+`","code":`+u+`}`)
		}
		return codes, units
	}
	for _, t := range encTypes {
		encTypeCC = append(encTypeCC, renderCC(t.typ))
		encWeight += t.weight
	}
	vitalCode, vitalUnit = obs(vitalObs, "vital-signs", "Vital signs")
	labCode, labUnit = obs(labObs, "laboratory", "Laboratory")
	cs := make([]code, len(conditions))
	for i, c := range conditions {
		cs[i] = c.code
	}
	condCC = ccs(cs)
	procCC = pcs(procedures)
	medCC = pcs(medications)
	vaxChildCC = pcs(vaccinesChild)
	vaxAdultCC = pcs(vaccinesAdult)
}

type condRef struct {
	id  [36]byte
	idx int
}

type procRef struct {
	id  [36]byte
	idx int
	net float64
}

type claimItem struct {
	cc      string
	net     float64
	procSeq int // >0: item for the procedure with this sequence
}

type patient struct {
	idx          int
	id, coverage [36]byte
	male         bool
	given        string
	given2       string
	family       string
	birth        int64 // unix seconds
	zone         *zone
	height, bmi  float64 // adult height (cm) and BMI
	pract, payer int
	place        int
}

type encounter struct {
	id         [36]byte
	t          *encType
	start, end int64
	pract, org int
	age        float64
	conds      []condRef
	procs      []procRef
	items      []claimItem
	claim      [36]byte
	total      float64
}

type generator struct {
	ctx     context.Context
	emit    func(string, []byte) error
	cfg     Config
	b       []byte
	pcg     rand.PCG
	r       *rand.Rand
	keys    [numKinds]idKey
	next    [numKinds]uint64
	nameKey uint64
	orgKey  uint64
	rngKey  uint64

	nOrgs, nPayers, nPracts int

	p    patient
	e    encounter
	days []int64
}

func poolSizes(patients int) (orgs, payers, practs int) {
	orgs = max(5, patients/50)
	payers = max(2, orgs/10)
	practs = max(5, patients/20)
	return
}

func newGenerator(ctx context.Context, cfg Config, emit func(string, []byte) error) *generator {
	g := &generator{ctx: ctx, emit: emit, cfg: cfg, b: make([]byte, 0, 16<<10)}
	g.r = rand.New(&g.pcg)
	for k := range numKinds {
		g.keys[k] = newIDKey(cfg.Seed, kindNames[k])
	}
	g.nameKey = mix64(cfg.Seed ^ 0x6e616d6573)
	g.orgKey = mix64(cfg.Seed ^ 0x6f726773)
	g.rngKey = mix64(cfg.Seed ^ 0x726e67)
	g.nOrgs, g.nPayers, g.nPracts = poolSizes(cfg.Patients)
	return g
}

// reseed positions the RNG deterministically for entity n of a stream, so
// every patient (organization, ...) is a pure function of seed and index.
func (g *generator) reseed(stream, n uint64) {
	a := mix64(g.rngKey + stream*golden)
	g.pcg.Seed(mix64(a^n), mix64(a+n*golden))
}

func (g *generator) newID(kind int) [36]byte {
	n := g.next[kind]
	g.next[kind]++
	return g.keys[kind].uuid(n)
}

func (g *generator) flush(kind int) error {
	return g.emit(kindNames[kind], g.b)
}

// draw samples a count from d.
func (g *generator) draw(d dist) int {
	if d.p <= 0 {
		return 0
	}
	if d.p < 1 && g.r.Float64() >= d.p {
		return 0
	}
	if d.hi <= d.lo {
		return d.lo
	}
	return d.lo + g.r.IntN(d.hi-d.lo+1)
}

// Float arithmetic below wraps every product that is followed by an
// addition in an explicit float64 conversion: the Go spec lets compilers fuse
// x*y+z into an FMA (arm64, ppc64, s390x do), and the conversion forces the
// intermediate rounding, so output is the same on every architecture.

func (g *generator) between(lo, hi float64) float64 {
	return lo + float64((hi-lo)*g.r.Float64())
}

// norm returns an approximately standard normal deviate (Irwin-Hall with
// three uniforms, scaled to unit variance) using additions only, so it is
// bit-for-bit reproducible across platforms, unlike rand.NormFloat64.
func (g *generator) norm() float64 {
	return (g.r.Float64() + g.r.Float64() + g.r.Float64() - 1.5) * 2
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

func (g *generator) run() error {
	if err := g.ctx.Err(); err != nil {
		return err
	}
	for i := range g.nOrgs {
		if err := g.poolCheck(i); err != nil {
			return err
		}
		if err := g.organization(i); err != nil {
			return err
		}
	}
	for i := range g.nPracts {
		if err := g.poolCheck(i); err != nil {
			return err
		}
		if err := g.practitioner(i); err != nil {
			return err
		}
	}
	for i := range g.cfg.Patients {
		if err := g.ctx.Err(); err != nil {
			return err
		}
		if err := g.patient(i); err != nil {
			return err
		}
	}
	return g.groups()
}

// ---- pools ----

// poolCheck looks at the context every 4096 pool entries (the pools of a
// huge run hold hundreds of thousands of resources).
func (g *generator) poolCheck(i int) error {
	if i%4096 != 4095 {
		return nil
	}
	return g.ctx.Err()
}

func (g *generator) practName(j int) (male bool, given, family string) {
	h := mix64(g.nameKey + uint64(j)*golden)
	male = h&1 == 0
	if male {
		given = givenMale[(h>>8)%uint64(len(givenMale))]
	} else {
		given = givenFemale[(h>>8)%uint64(len(givenFemale))]
	}
	return male, given, families[(h>>32)%uint64(len(families))]
}

// practOrg is the provider organization a practitioner works for.
func (g *generator) practOrg(j int) int {
	return g.nPayers + j%(g.nOrgs-g.nPayers)
}

func (g *generator) orgHash(i int) uint64 { return mix64(g.orgKey + uint64(i)*golden) }

// appendOrgName appends the organization's name, unquoted-safe (table text).
func (g *generator) appendOrgName(b []byte, i int) []byte {
	if i < g.nPayers {
		b = append(b, payerNames[i%len(payerNames)]...)
		if n := i / len(payerNames); n > 0 {
			b = append(b, " Plan "...)
			b = strconv.AppendInt(b, int64(n+1), 10)
		}
		return b
	}
	h := g.orgHash(i)
	b = append(b, places[h%uint64(len(places))].city...)
	b = append(b, ' ')
	return append(b, providerSuffixes[(h>>20)%uint64(len(providerSuffixes))]...)
}

func (g *generator) appendOrgRef(b []byte, i int) []byte {
	id := g.keys[kOrganization].uuid(uint64(i))
	b = append(b, `{"reference":"Organization/`...)
	b = append(b, id[:]...)
	b = append(b, `","display":"`...)
	b = g.appendOrgName(b, i)
	return append(b, `"}`...)
}

func (g *generator) appendPractRef(b []byte, j int) []byte {
	id := g.keys[kPractitioner].uuid(uint64(j))
	_, given, family := g.practName(j)
	b = append(b, `{"reference":"Practitioner/`...)
	b = append(b, id[:]...)
	b = append(b, `","display":"Dr. `...)
	b = append(b, given...)
	b = append(b, ' ')
	b = append(b, family...)
	return append(b, `"}`...)
}

func (g *generator) appendPhone(b []byte) []byte {
	b = append(b, "555-"...)
	b = appendDigits(b, g.r.Uint64N(1000), 3)
	b = append(b, '-')
	return appendDigits(b, g.r.Uint64N(10000), 4)
}

func (g *generator) appendAddress(b []byte, pl int) []byte {
	p := &places[pl]
	b = append(b, `[{"line":["`...)
	b = strconv.AppendInt(b, int64(1+g.r.IntN(9999)), 10)
	b = append(b, ' ')
	b = append(b, streets[g.r.IntN(len(streets))]...)
	b = append(b, `"],"city":"`...)
	b = append(b, p.city...)
	b = append(b, `","state":"`...)
	b = append(b, p.state...)
	b = append(b, `","postalCode":"`...)
	b = append(b, p.zip3...)
	b = appendDigits(b, g.r.Uint64N(100), 2)
	return append(b, `","country":"US"}]`...)
}

func (g *generator) organization(i int) error {
	g.reseed(1, uint64(i))
	id := g.newID(kOrganization)
	b := g.b[:0]
	b = append(b, `{"resourceType":"Organization","id":"`...)
	b = append(b, id[:]...)
	b = append(b, `","identifier":[{"system":"`+sysSynth+`","value":"`...)
	b = append(b, id[:]...)
	b = append(b, `"}],"active":true,"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/organization-type","code":"`...)
	if i < g.nPayers {
		b = append(b, `pay","display":"Payer"}],"text":"Payer"}]`...)
	} else {
		b = append(b, `prov","display":"Healthcare Provider"}],"text":"Healthcare Provider"}]`...)
	}
	b = append(b, `,"name":"`...)
	b = g.appendOrgName(b, i)
	b = append(b, `","telecom":[{"system":"phone","value":"`...)
	b = g.appendPhone(b)
	b = append(b, `","use":"work"}],"address":`...)
	pl := int(g.orgHash(i) % uint64(len(places)))
	if i < g.nPayers {
		pl = g.r.IntN(len(places))
	}
	b = g.appendAddress(b, pl)
	b = append(b, '}')
	g.b = b
	return g.flush(kOrganization)
}

func (g *generator) practitioner(j int) error {
	g.reseed(2, uint64(j))
	id := g.newID(kPractitioner)
	male, given, family := g.practName(j)
	b := g.b[:0]
	b = append(b, `{"resourceType":"Practitioner","id":"`...)
	b = append(b, id[:]...)
	b = append(b, `","identifier":[{"system":"`+sysNPI+`","value":"99`...)
	b = appendDigits(b, uint64(j), 8)
	b = append(b, `"}],"active":true,"name":[{"use":"official","family":`...)
	b = appendStr(b, family)
	b = append(b, `,"given":[`...)
	b = appendStr(b, given)
	b = append(b, `],"prefix":["Dr."]}],"telecom":[{"system":"phone","value":"`...)
	b = g.appendPhone(b)
	b = append(b, `","use":"work"}],"address":`...)
	b = g.appendAddress(b, int(g.orgHash(g.practOrg(j))%uint64(len(places))))
	if male {
		b = append(b, `,"gender":"male"}`...)
	} else {
		b = append(b, `,"gender":"female"}`...)
	}
	g.b = b
	return g.flush(kPractitioner)
}

// ---- patients ----

func (g *generator) patient(i int) error {
	g.reseed(3, uint64(i))
	r := g.r
	p := &g.p
	*p = patient{idx: i}
	p.id = g.newID(kPatient)
	p.male = r.IntN(2) == 0
	if p.male {
		p.given = givenMale[r.IntN(len(givenMale))]
		p.given2 = givenMale[r.IntN(len(givenMale))]
		p.height = 176 + float64(7*g.norm())
	} else {
		p.given = givenFemale[r.IntN(len(givenFemale))]
		p.given2 = givenFemale[r.IntN(len(givenFemale))]
		p.height = 163 + float64(6.5*g.norm())
	}
	p.family = families[r.IntN(len(families))]
	p.bmi = min(max(27+float64(4.5*g.norm()), 17), 48)
	p.birth = birthFirst + r.Int64N(birthLast-birthFirst)
	p.zone = &zones[r.IntN(len(zones))]
	p.place = r.IntN(len(places))
	p.pract = r.IntN(g.nPracts)
	age := float64(refNow-p.birth) / year
	p.payer = r.IntN(g.nPayers)
	if age >= 65 && r.IntN(4) != 0 {
		p.payer = 0 // Medicare
	}

	b := g.b[:0]
	b = append(b, `{"resourceType":"Patient","id":"`...)
	b = append(b, p.id[:]...)
	b = append(b, `","identifier":[{"system":"`+sysSynth+`","value":"`...)
	b = append(b, p.id[:]...)
	b = append(b, `"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}],"text":"Medical Record Number"},"system":"`+sysMRN+`","value":"`...)
	b = append(b, p.id[:]...)
	b = append(b, `"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"SS","display":"Social Security Number"}],"text":"Social Security Number"},"system":"`+sysSSN+`","value":"999-`...)
	b = appendDigits(b, r.Uint64N(100), 2)
	b = append(b, '-')
	b = appendDigits(b, r.Uint64N(10000), 4)
	b = append(b, `"}],"name":[{"use":"official","family":`...)
	b = appendStr(b, p.family)
	b = append(b, `,"given":[`...)
	b = appendStr(b, p.given)
	if p.given2 != p.given {
		b = append(b, ',')
		b = appendStr(b, p.given2)
	}
	b = append(b, ']')
	mar := &maritals[1]
	if age >= 18 {
		mar = &maritals[r.IntN(len(maritals))]
		switch {
		case p.male:
			b = append(b, `,"prefix":["Mr."]`...)
		case mar.code == "S":
			b = append(b, `,"prefix":["Ms."]`...)
		default:
			b = append(b, `,"prefix":["Mrs."]`...)
		}
	}
	b = append(b, `}],"telecom":[{"system":"phone","value":"`...)
	b = g.appendPhone(b)
	if p.male {
		b = append(b, `","use":"home"}],"gender":"male","birthDate":"`...)
	} else {
		b = append(b, `","use":"home"}],"gender":"female","birthDate":"`...)
	}
	b = appendDate(b, p.birth, 0)
	b = append(b, `","address":`...)
	b = g.appendAddress(b, p.place)
	b = append(b, `,"maritalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"`...)
	b = append(b, mar.code...)
	b = append(b, `","display":"`...)
	b = append(b, mar.display...)
	b = append(b, `"}],"text":"`...)
	b = append(b, mar.display...)
	b = append(b, `"},"multipleBirthBoolean":false,"communication":[{"language":{"coding":[{"system":"urn:ietf:bcp:47","code":"en-US","display":"English (United States)"}],"text":"English (United States)"}}]}`...)
	g.b = b
	if err := g.flush(kPatient); err != nil {
		return err
	}

	// Coverage.
	p.coverage = g.newID(kCoverage)
	covStart := max(windowStart, p.birth)
	b = g.b[:0]
	b = append(b, `{"resourceType":"Coverage","id":"`...)
	b = append(b, p.coverage[:]...)
	b = append(b, `","status":"active","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"HIP","display":"health insurance plan policy"}],"text":"health insurance plan policy"},"subscriberId":"`...)
	b = appendDigits(b, r.Uint64N(1e10), 10)
	b = append(b, `","beneficiary":`...)
	b = appendRef(b, "Patient", &p.id)
	b = append(b, `,"relationship":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/subscriber-relationship","code":"self","display":"Self"}],"text":"Self"},"period":{"start":"`...)
	b = appendDate(b, covStart, 0)
	b = append(b, `"},"payor":[`...)
	b = g.appendOrgRef(b, p.payer)
	b = append(b, `]}`...)
	g.b = b
	if err := g.flush(kCoverage); err != nil {
		return err
	}

	// Encounter days, sorted.
	n := g.draw(encountersPerPatient)
	firstDay := max(windowStart, p.birth+day) / day
	lastDay := windowEnd / day
	g.days = g.days[:0]
	for range n {
		d := firstDay + r.Int64N(lastDay-firstDay+1)
		k := len(g.days)
		g.days = append(g.days, d)
		for k > 0 && g.days[k-1] > d {
			g.days[k] = g.days[k-1]
			k--
		}
		g.days[k] = d
	}
	for _, d := range g.days {
		if err := g.encounter(d); err != nil {
			return err
		}
	}
	return nil
}

func (g *generator) pickEncType() int {
	w := g.r.IntN(encWeight)
	for i := range encTypes {
		if w < encTypes[i].weight {
			return i
		}
		w -= encTypes[i].weight
	}
	return len(encTypes) - 1
}

func (g *generator) encounter(dayNo int64) error {
	r := g.r
	p := &g.p
	e := &g.e
	ti := g.pickEncType()
	e.t = &encTypes[ti]
	t := e.t
	e.id = g.newID(kEncounter)
	e.conds = e.conds[:0]
	e.procs = e.procs[:0]
	e.items = e.items[:0]
	var tod int64
	if t.anyTime {
		tod = r.Int64N(day/minute) * minute
	} else {
		tod = 8*hour + r.Int64N(9*12)*5*minute
	}
	e.start = dayNo*day + tod - p.zone.offset
	e.end = e.start + t.durMin + r.Int64N((t.durMax-t.durMin)/minute+1)*minute
	e.age = float64(e.start-p.birth) / year
	e.pract = p.pract
	if t.anyTime || r.IntN(5) == 0 {
		e.pract = r.IntN(g.nPracts) // seen by someone else
	}
	e.org = g.practOrg(e.pract)
	z := p.zone

	b := g.b[:0]
	b = append(b, `{"resourceType":"Encounter","id":"`...)
	b = append(b, e.id[:]...)
	b = append(b, `","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"`...)
	b = append(b, t.class...)
	b = append(b, `","display":"`...)
	b = append(b, t.classDisplay...)
	b = append(b, `"},"type":[`...)
	b = append(b, encTypeCC[ti]...)
	b = append(b, `],"subject":`...)
	b = appendRef(b, "Patient", &p.id)
	b = append(b, `,"participant":[{"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PPRF","display":"primary performer"}],"text":"primary performer"}],"period":`...)
	b = appendPeriod(b, e.start, e.end, z)
	b = append(b, `,"individual":`...)
	b = g.appendPractRef(b, e.pract)
	b = append(b, `}],"period":`...)
	b = appendPeriod(b, e.start, e.end, z)
	b = append(b, `,"serviceProvider":`...)
	b = g.appendOrgRef(b, e.org)
	b = append(b, '}')
	g.b = b
	if err := g.flush(kEncounter); err != nil {
		return err
	}
	cost := round2(t.cost * g.between(0.85, 1.15))
	e.items = append(e.items, claimItem{cc: encTypeCC[ti], net: cost})
	e.total = cost

	if err := g.conditions(); err != nil {
		return err
	}
	if err := g.observations(); err != nil {
		return err
	}
	if err := g.procedures(); err != nil {
		return err
	}
	if err := g.medications(); err != nil {
		return err
	}
	if err := g.immunizations(); err != nil {
		return err
	}
	return g.claim()
}

// header starts a clinical resource: resourceType, id and returns the buffer.
func (g *generator) header(kind int, id *[36]byte) []byte {
	b := g.b[:0]
	b = append(b, `{"resourceType":"`...)
	b = append(b, kindNames[kind]...)
	b = append(b, `","id":"`...)
	b = append(b, id[:]...)
	return append(b, '"')
}

// subjectEncounter appends ,"subject":{Patient},"encounter":{Encounter}.
func (g *generator) subjectEncounter(b []byte, subjectKey string) []byte {
	b = append(b, subjectKey...)
	b = appendRef(b, "Patient", &g.p.id)
	b = append(b, `,"encounter":`...)
	return appendRef(b, "Encounter", &g.e.id)
}

func (g *generator) conditions() error {
	e, p, r := &g.e, &g.p, g.r
	n := g.draw(e.t.cond)
	first := r.IntN(len(conditions))
	for k := range n {
		idx := (first + k*7) % len(conditions)
		c := &conditions[idx]
		id := g.newID(kCondition)
		e.conds = append(e.conds, condRef{id: id, idx: idx})
		b := g.header(kCondition, &id)
		if c.chronic {
			b = append(b, `,"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]}`...)
		} else {
			b = append(b, `,"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"resolved"}]}`...)
		}
		b = append(b, `,"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}]},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"encounter-diagnosis","display":"Encounter Diagnosis"}]}],"code":`...)
		b = append(b, condCC[idx]...)
		b = g.subjectEncounter(b, `,"subject":`)
		b = append(b, `,"onsetDateTime":`...)
		b = appendDateTime(b, e.start, p.zone)
		if !c.chronic {
			b = append(b, `,"abatementDateTime":`...)
			b = appendDateTime(b, e.start+(7+r.Int64N(24))*day, p.zone)
		}
		b = append(b, `,"recordedDate":`...)
		b = appendDateTime(b, e.start, p.zone)
		b = append(b, '}')
		g.b = b
		if err := g.flush(kCondition); err != nil {
			return err
		}
	}
	return nil
}

func (g *generator) vitalValue(v int) float64 {
	p := &g.p
	f := min(max(g.e.age, 0)/18, 1)
	height := 50 + float64((p.height-50)*math.Sqrt(f))
	bmi := 15.5 + float64((p.bmi-15.5)*f)
	switch v {
	case vHeight:
		return height
	case vWeight:
		return float64(bmi*height*height/10000) + float64(g.norm()*0.8)
	case vBMI:
		return bmi + float64(g.norm()*0.3)
	default:
		d := &vitalObs[v]
		return g.between(d.lo, d.hi)
	}
}

func (g *generator) observations() error {
	e, r := &g.e, g.r
	for _, v := range e.t.vitals {
		if err := g.observation(vitalCode[v], vitalUnit[v], g.vitalValue(v), vitalObs[v].decimals); err != nil {
			return err
		}
	}
	n := g.draw(e.t.labs)
	first := r.IntN(len(labObs))
	for k := range n {
		l := (first + k) % len(labObs)
		d := &labObs[l]
		if err := g.observation(labCode[l], labUnit[l], g.between(d.lo, d.hi), d.decimals); err != nil {
			return err
		}
	}
	return nil
}

func (g *generator) observation(codeFrag, unitFrag string, value float64, decimals int) error {
	e, p := &g.e, &g.p
	id := g.newID(kObservation)
	b := g.header(kObservation, &id)
	b = append(b, `,"status":"final",`...)
	b = append(b, codeFrag...)
	b = g.subjectEncounter(b, `,"subject":`)
	b = append(b, `,"effectiveDateTime":`...)
	b = appendDateTime(b, e.start, p.zone)
	b = append(b, `,"issued":`...)
	b = appendDateTime(b, e.start, p.zone)
	b = append(b, `,"valueQuantity":{"value":`...)
	b = strconv.AppendFloat(b, value, 'f', decimals, 64)
	b = append(b, unitFrag...)
	b = append(b, '}')
	g.b = b
	return g.flush(kObservation)
}

func (g *generator) reasonReference(b []byte, k int) []byte {
	if len(g.e.conds) == 0 {
		return b
	}
	c := &g.e.conds[k%len(g.e.conds)]
	b = append(b, `,"reasonReference":[`...)
	b = appendRef(b, "Condition", &c.id)
	return append(b, ']')
}

func (g *generator) procedures() error {
	e, p, r := &g.e, &g.p, g.r
	n := g.draw(e.t.proc)
	first := r.IntN(len(procedures))
	for k := range n {
		idx := (first + k*5) % len(procedures)
		pr := &procedures[idx]
		id := g.newID(kProcedure)
		net := round2(g.between(pr.lo, pr.high))
		e.procs = append(e.procs, procRef{id: id, idx: idx, net: net})
		e.items = append(e.items, claimItem{cc: procCC[idx], net: net, procSeq: len(e.procs)})
		e.total += net
		start := e.start + int64(k)*10*minute
		end := min(start+(10+r.Int64N(50))*minute, e.end)
		if start >= e.end {
			start = e.start
		}
		b := g.header(kProcedure, &id)
		b = append(b, `,"status":"completed","code":`...)
		b = append(b, procCC[idx]...)
		b = g.subjectEncounter(b, `,"subject":`)
		b = append(b, `,"performedPeriod":`...)
		b = appendPeriod(b, start, end, p.zone)
		b = g.reasonReference(b, k)
		b = append(b, '}')
		g.b = b
		if err := g.flush(kProcedure); err != nil {
			return err
		}
	}
	return nil
}

func (g *generator) medications() error {
	e, p, r := &g.e, &g.p, g.r
	n := g.draw(e.t.med)
	first := r.IntN(len(medications))
	for k := range n {
		idx := (first + k*3) % len(medications)
		m := &medications[idx]
		id := g.newID(kMedicationRequest)
		net := round2(g.between(m.lo, m.high))
		e.items = append(e.items, claimItem{cc: medCC[idx], net: net})
		e.total += net
		b := g.header(kMedicationRequest, &id)
		switch {
		case r.IntN(20) == 0:
			b = append(b, `,"status":"stopped"`...)
		case e.start >= activeAfter:
			b = append(b, `,"status":"active"`...)
		default:
			b = append(b, `,"status":"completed"`...)
		}
		b = append(b, `,"intent":"order","medicationCodeableConcept":`...)
		b = append(b, medCC[idx]...)
		b = g.subjectEncounter(b, `,"subject":`)
		b = append(b, `,"authoredOn":`...)
		b = appendDateTime(b, e.start, p.zone)
		b = append(b, `,"requester":`...)
		b = g.appendPractRef(b, e.pract)
		b = g.reasonReference(b, k)
		b = append(b, `,"dosageInstruction":[{"sequence":1,"timing":{"repeat":{"frequency":`...)
		b = strconv.AppendInt(b, int64(1+r.IntN(3)), 10)
		b = append(b, `,"period":1,"periodUnit":"d"}},"asNeededBoolean":false,"doseAndRate":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/dose-rate-type","code":"ordered","display":"Ordered"}]},"doseQuantity":{"value":1}}]}]}`...)
		g.b = b
		if err := g.flush(kMedicationRequest); err != nil {
			return err
		}
	}
	return nil
}

func (g *generator) immunizations() error {
	e, p, r := &g.e, &g.p, g.r
	n := g.draw(e.t.imm)
	for range n {
		var cc string
		var v *priced
		if e.age < 18 {
			idx := r.IntN(len(vaccinesChild))
			v, cc = &vaccinesChild[idx], vaxChildCC[idx]
		} else {
			idx := r.IntN(len(vaccinesAdult))
			if vaccinesAdult[idx].code.code == "208" && e.start < covid {
				idx = 0 // no COVID-19 vaccines before 2021: influenza instead
			}
			v, cc = &vaccinesAdult[idx], vaxAdultCC[idx]
		}
		net := round2(g.between(v.lo, v.high))
		e.items = append(e.items, claimItem{cc: cc, net: net})
		e.total += net
		id := g.newID(kImmunization)
		b := g.header(kImmunization, &id)
		b = append(b, `,"status":"completed","vaccineCode":`...)
		b = append(b, cc...)
		b = g.subjectEncounter(b, `,"patient":`)
		b = append(b, `,"occurrenceDateTime":`...)
		b = appendDateTime(b, e.start, p.zone)
		b = append(b, `,"primarySource":true}`...)
		g.b = b
		if err := g.flush(kImmunization); err != nil {
			return err
		}
	}
	return nil
}

// claimType appends ,"type":{...},"use":"claim".
func (g *generator) claimType(b []byte) []byte {
	if g.e.t.institution {
		b = append(b, `,"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"institutional","display":"Institutional"}]}`...)
	} else {
		b = append(b, `,"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"professional","display":"Professional"}]}`...)
	}
	return append(b, `,"use":"claim"`...)
}

// claimItems appends ,"item":[...]; eob adds servicedPeriod and adjudication.
func (g *generator) claimItems(b []byte, eob bool) []byte {
	e, p := &g.e, &g.p
	b = append(b, `,"item":[`...)
	for k := range e.items {
		it := &e.items[k]
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"sequence":`...)
		b = strconv.AppendInt(b, int64(k+1), 10)
		if k == 0 && len(e.conds) > 0 {
			b = append(b, `,"diagnosisSequence":[`...)
			for c := range e.conds {
				if c > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendInt(b, int64(c+1), 10)
			}
			b = append(b, ']')
		}
		if it.procSeq > 0 {
			b = append(b, `,"procedureSequence":[`...)
			b = strconv.AppendInt(b, int64(it.procSeq), 10)
			b = append(b, ']')
		}
		b = append(b, `,"productOrService":`...)
		b = append(b, it.cc...)
		if eob {
			b = append(b, `,"servicedPeriod":`...)
			b = appendPeriod(b, e.start, e.end, p.zone)
		}
		b = append(b, `,"encounter":[`...)
		b = appendRef(b, "Encounter", &e.id)
		b = append(b, `],"net":`...)
		b = appendMoney(b, it.net)
		if eob {
			b = append(b, `,"adjudication":[{"category":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/adjudication","code":"submitted","display":"Submitted Amount"}]},"amount":`...)
			b = appendMoney(b, it.net)
			b = append(b, `}]`...)
		}
		b = append(b, '}')
	}
	return append(b, ']')
}

func (g *generator) claim() error {
	e, p, r := &g.e, &g.p, g.r
	e.claim = g.newID(kClaim)
	b := g.header(kClaim, &e.claim)
	b = append(b, `,"status":"active"`...)
	b = g.claimType(b)
	b = append(b, `,"patient":`...)
	b = appendRef(b, "Patient", &p.id)
	b = append(b, `,"billablePeriod":`...)
	b = appendPeriod(b, e.start, e.end, p.zone)
	b = append(b, `,"created":`...)
	b = appendDateTime(b, e.end, p.zone)
	b = append(b, `,"provider":`...)
	b = g.appendOrgRef(b, e.org)
	b = append(b, `,"priority":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/processpriority","code":"normal"}]}`...)
	b = appendSequenced(b, "diagnosis", "Condition", len(e.conds), func(k int) *[36]byte { return &e.conds[k].id })
	b = appendSequenced(b, "procedure", "Procedure", len(e.procs), func(k int) *[36]byte { return &e.procs[k].id })
	b = append(b, `,"insurance":[{"sequence":1,"focal":true,"coverage":`...)
	b = appendRef(b, "Coverage", &p.coverage)
	b = append(b, `}]`...)
	b = g.claimItems(b, false)
	b = append(b, `,"total":`...)
	b = appendMoney(b, e.total)
	b = append(b, '}')
	g.b = b
	if err := g.flush(kClaim); err != nil {
		return err
	}

	// ExplanationOfBenefit for the claim.
	id := g.newID(kExplanationOfBenefit)
	b = g.header(kExplanationOfBenefit, &id)
	b = append(b, `,"status":"active"`...)
	b = g.claimType(b)
	b = append(b, `,"patient":`...)
	b = appendRef(b, "Patient", &p.id)
	b = append(b, `,"billablePeriod":`...)
	b = appendPeriod(b, e.start, e.end, p.zone)
	b = append(b, `,"created":`...)
	b = appendDateTime(b, e.end+(1+r.Int64N(20))*day, p.zone)
	b = append(b, `,"insurer":`...)
	b = g.appendOrgRef(b, p.payer)
	b = append(b, `,"provider":`...)
	b = g.appendPractRef(b, e.pract)
	b = append(b, `,"claim":`...)
	b = appendRef(b, "Claim", &e.claim)
	b = append(b, `,"outcome":"complete","insurance":[{"focal":true,"coverage":`...)
	b = appendRef(b, "Coverage", &p.coverage)
	b = append(b, `}]`...)
	b = g.claimItems(b, true)
	b = append(b, `,"total":[{"category":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/adjudication","code":"submitted","display":"Submitted Amount"}],"text":"Submitted Amount"},"amount":`...)
	b = appendMoney(b, e.total)
	b = append(b, `}],"payment":{"amount":`...)
	b = appendMoney(b, round2(e.total*g.between(0.7, 0.95)))
	b = append(b, `}}`...)
	g.b = b
	return g.flush(kExplanationOfBenefit)
}

// ---- groups ----

func groupCount(patients, size int) int { return (patients + size - 1) / size }

func (g *generator) groups() error {
	size := g.cfg.groupSize()
	n := groupCount(g.cfg.Patients, size)
	key := g.keys[kPatient]
	for gi := range n {
		if err := g.ctx.Err(); err != nil {
			return err
		}
		first := gi * size
		last := min(first+size, g.cfg.Patients)
		b := g.b[:0]
		b = append(b, `{"resourceType":"Group","id":"synth-group-`...)
		b = strconv.AppendInt(b, int64(gi+1), 10)
		b = append(b, `","identifier":[{"system":"`+sysGroup+`","value":"synth-group-`...)
		b = strconv.AppendInt(b, int64(gi+1), 10)
		b = append(b, `"}],"active":true,"type":"person","actual":true,"name":"Synthetic patients, group `...)
		b = strconv.AppendInt(b, int64(gi+1), 10)
		b = append(b, ` of `...)
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, `","quantity":`...)
		b = strconv.AppendInt(b, int64(last-first), 10)
		b = append(b, `,"member":[`...)
		for i := first; i < last; i++ {
			if i > first {
				b = append(b, ',')
			}
			id := key.uuid(uint64(i))
			b = append(b, `{"entity":{"reference":"Patient/`...)
			b = append(b, id[:]...)
			b = append(b, `"}}`...)
		}
		b = append(b, `]}`...)
		g.b = b
		if err := g.emit("Group", b); err != nil {
			return err
		}
	}
	return nil
}
