package typefilter

import (
	"fmt"
	"math"
	"time"
)

// Date ranges are half-open [lo, hi) in Unix microseconds, UTC. negInf and
// posInf stand for the open ends of a Period.
const (
	negInf = math.MinInt64
	posInf = math.MaxInt64
)

// span is the implicit range of a date, dateTime, instant or Period.
type span struct{ lo, hi int64 }

// prefixes are the R4 search prefixes valid on a date parameter.
var prefixes = map[string]bool{
	"eq": true, "ne": true, "gt": true, "lt": true, "ge": true,
	"le": true, "sa": true, "eb": true, "ap": true,
}

// dateCond is one alternative of a date parameter: a prefix and the range of
// the search value.
type dateCond struct {
	prefix string
	s      span
}

// parseDateValue parses a search value "[prefix]date".
func parseDateValue(v string, now time.Time) (dateCond, error) {
	prefix := "eq"
	if len(v) >= 2 && isLower(v[0]) && isLower(v[1]) {
		prefix = v[:2]
		if !prefixes[prefix] {
			return dateCond{}, fmt.Errorf("unknown prefix %q in date value %q (want eq, ne, gt, lt, ge, le, sa, eb or ap)", prefix, v)
		}
		v = v[2:]
	} else if len(v) > 0 && !isDigit(v[0]) {
		return dateCond{}, fmt.Errorf("bad prefix in date value %q", v)
	}
	// url.ParseQuery turns an unencoded "+" of a zone offset into a space;
	// a space is never valid in a date, so read it as the "+" it was.
	if n := len(v); n > 6 && v[n-6] == ' ' {
		v = v[:n-6] + "+" + v[n-5:]
	}
	s, err := parseDate(v)
	if err != nil {
		return dateCond{}, err
	}
	if prefix == "ap" {
		s = approx(s, now)
	}
	return dateCond{prefix: prefix, s: s}, nil
}

// approx widens a search range for ap: by 10% of the gap between now and the
// value, and by at least one day, on each side.
func approx(s span, now time.Time) span {
	gap := now.UnixMicro() - s.lo
	if gap < 0 {
		gap = -gap
	}
	w := max(gap/10, int64(24*time.Hour/time.Microsecond))
	return span{lo: s.lo - w, hi: s.hi + w}
}

// match applies the R4 prefix table (search spec 3.1.1.4.3 / date) to the
// range t of a resource value. With S the search range:
//
//	eq  S fully contains t
//	ne  S does not fully contain t
//	gt  the range above S overlaps t
//	lt  the range below S overlaps t
//	ge  the range above S overlaps t, or S fully contains t
//	le  the range below S overlaps t, or S fully contains t
//	sa  t does not overlap S and the range above S contains t
//	eb  t does not overlap S and the range below S contains t
//	ap  t overlaps S widened as in approx
func (c dateCond) match(t span) bool {
	s := c.s
	contains := s.lo <= t.lo && t.hi <= s.hi
	switch c.prefix {
	case "eq":
		return contains
	case "ne":
		return !contains
	case "gt":
		return t.hi > s.hi
	case "lt":
		return t.lo < s.lo
	case "ge":
		return t.hi > s.hi || contains
	case "le":
		return t.lo < s.lo || contains
	case "sa":
		return t.lo >= s.hi
	case "eb":
		return t.hi <= s.lo
	case "ap":
		return t.lo < s.hi && s.lo < t.hi
	}
	return false
}

// parseDate parses a FHIR date, dateTime or instant, or a search value of the
// same shape, into its implicit range: YYYY, YYYY-MM, YYYY-MM-DD, or
// YYYY-MM-DDThh:mm[:ss[.fff...]][Z|(+|-)hh:mm]. The range is one unit of the
// given precision long. A value without a zone is read as UTC; so is a
// date without a time.
func parseDate(s string) (span, error) {
	d := dateParts{month: 1, day: 1, loc: time.UTC}
	if why := d.parse(s); why != "" {
		return span{}, fmt.Errorf("malformed date %q: %s", s, why)
	}
	lo := time.Date(d.year, time.Month(d.month), d.day, d.hh, d.mm, d.ss, d.nanos, d.loc)
	var hi time.Time
	switch d.prec {
	case precYear:
		hi = lo.AddDate(1, 0, 0)
	case precMonth:
		hi = lo.AddDate(0, 1, 0)
	case precDay:
		hi = lo.AddDate(0, 0, 1)
	case precMinute:
		hi = lo.Add(time.Minute)
	default:
		hi = lo.Add(d.unit)
	}
	return span{lo: lo.UnixMicro(), hi: ceilMicro(hi)}, nil
}

// Precisions of a date value.
const (
	precYear = iota
	precMonth
	precDay
	precMinute
	precSub // seconds or finer: dateParts.unit
)

// dateParts are the fields of a parsed date.
type dateParts struct {
	year, month, day, hh, mm, ss, nanos int
	loc                                 *time.Location
	prec                                int
	unit                                time.Duration
}

// parse fills d from s; it returns why s is malformed, or "".
func (d *dateParts) parse(s string) string {
	p := dateParser{s: s}
	var ok bool
	if d.year, ok = p.digits(4); !ok {
		return "want YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][Z|+hh:mm]"
	}
	if d.prec = precYear; p.done() {
		return ""
	}
	if !p.lit('-') {
		return "want '-' after the year"
	}
	if d.month, ok = p.digits(2); !ok || d.month < 1 || d.month > 12 {
		return "bad month"
	}
	if d.prec = precMonth; p.done() {
		return ""
	}
	if !p.lit('-') {
		return "want '-' after the month"
	}
	if d.day, ok = p.digits(2); !ok || d.day < 1 || d.day > daysIn(d.year, d.month) {
		return "bad day"
	}
	if d.prec = precDay; p.done() {
		return ""
	}
	if !p.lit('T') {
		return "want 'T' after the day"
	}
	if d.hh, ok = p.digits(2); !ok || d.hh > 23 {
		return "bad hour"
	}
	if !p.lit(':') {
		return "want hh:mm"
	}
	if d.mm, ok = p.digits(2); !ok || d.mm > 59 {
		return "bad minute"
	}
	d.prec = precMinute
	if p.lit(':') {
		if d.ss, ok = p.digits(2); !ok || d.ss > 59 {
			return "bad second"
		}
		d.prec, d.unit = precSub, time.Second
		if p.lit('.') {
			n := 0
			for !p.done() && isDigit(p.s[p.i]) {
				if n < 9 {
					d.nanos = d.nanos*10 + int(p.s[p.i]-'0')
					d.unit /= 10
				}
				n++
				p.i++
			}
			if n == 0 {
				return "want digits after '.'"
			}
			for k := n; k < 9; k++ {
				d.nanos *= 10
			}
		}
	}
	switch {
	case p.done():
		return ""
	case p.lit('Z'):
	case p.s[p.i] == '+' || p.s[p.i] == '-':
		sign := 1
		if p.s[p.i] == '-' {
			sign = -1
		}
		p.i++
		zh, ok1 := p.digits(2)
		ok2 := p.lit(':')
		zm, ok3 := p.digits(2)
		if !ok1 || !ok2 || !ok3 || zm > 59 || zh > 14 || (zh == 14 && zm > 0) {
			return "bad zone offset"
		}
		d.loc = time.FixedZone("", sign*(zh*3600+zm*60))
	default:
		return "bad zone"
	}
	if !p.done() {
		return "trailing characters"
	}
	return ""
}

// ceilMicro is t in Unix microseconds, rounded up.
func ceilMicro(t time.Time) int64 {
	us := t.UnixMicro()
	if t.Nanosecond()%1000 != 0 {
		us++
	}
	return us
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// dateParser reads a date string left to right.
type dateParser struct {
	s string
	i int
}

func (p *dateParser) done() bool { return p.i >= len(p.s) }

func (p *dateParser) lit(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *dateParser) digits(n int) (int, bool) {
	if p.i+n > len(p.s) {
		return 0, false
	}
	v := 0
	for k := 0; k < n; k++ {
		c := p.s[p.i+k]
		if !isDigit(c) {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	p.i += n
	return v, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
