package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Sample is one moment of a soak: every process's memory and goroutines,
// and how far the load got.
type Sample struct {
	At    float64      `json:"atSeconds"`
	Procs []ProcSample `json:"processes"`
	// Ingested counts the resources the soak ingested so far, Exports
	// the exports it completed and verified.
	Ingested int64 `json:"ingested"`
	Exports  int64 `json:"exports"`
	// ObjectMiB is what the object store holds, Jobs the export records.
	ObjectMiB float64 `json:"objectStoreMiB"`
	Jobs      int     `json:"jobs"`
}

// ProcSample is one process at one moment.
type ProcSample struct {
	Process string  `json:"process"`
	RSSMiB  float64 `json:"rssMiB"`
	// HeapMiB is the Go heap live after a collection, and Goroutines the
	// goroutines; both are read from the engine's profile endpoint, so
	// they are known for the Go processes only.
	HeapMiB    float64 `json:"heapMiB,omitempty"`
	Goroutines int     `json:"goroutines,omitempty"`
}

// sampler samples the run's processes at an interval until stopped.
type sampler struct {
	h         *harness
	start     time.Time
	done      chan struct{}
	finished  chan struct{}
	mu        sync.Mutex
	samples   []Sample
	ingested  *atomic.Int64
	completed *atomic.Int64
	client    *http.Client
	// peaks is each engine process's largest live heap so far, when the
	// run keeps profiles (Options.ProfileDir): the heap profile taken at
	// it is in DIR/soak-<role>.peak.heap.pprof.
	peaks map[string]float64
}

func (h *harness) startSampler(every time.Duration, ingested, completed *atomic.Int64) *sampler {
	s := &sampler{h: h, start: time.Now(), done: make(chan struct{}), finished: make(chan struct{}),
		ingested: ingested, completed: completed, client: &http.Client{Timeout: 10 * time.Second}, peaks: map[string]float64{}}
	go func() {
		defer close(s.finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop takes a last sample and returns them all.
func (s *sampler) stop() []Sample {
	close(s.done)
	<-s.finished
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

func (s *sampler) sample() {
	smp := Sample{At: time.Since(s.start).Seconds(), Ingested: s.ingested.Load(), Exports: s.completed.Load()}
	for _, p := range s.h.procs() {
		ps := ProcSample{Process: p.name}
		if rss, err := procStatus(p.pid, "VmRSS:"); err == nil {
			ps.RSSMiB = float64(rss) / MiB
		}
		switch {
		case p.pid == os.Getpid():
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			ps.HeapMiB, ps.Goroutines = float64(ms.HeapAlloc)/MiB, runtime.NumGoroutine()
		case p.debug != "":
			ps.HeapMiB, ps.Goroutines = s.goStats(p.debug)
			s.keepPeak(p, ps.HeapMiB)
		}
		smp.Procs = append(smp.Procs, ps)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := s.h.storeState(ctx); err == nil {
		smp.ObjectMiB, smp.Jobs = float64(st.ObjectBytes)/MiB, st.Jobs
	}
	s.mu.Lock()
	s.samples = append(s.samples, smp)
	s.mu.Unlock()
}

// keepPeak saves the heap profile of an engine process whose live heap
// is the largest it has been in the run, when the run keeps profiles: what
// the process held then, by allocation site, tells growth from a burst.
func (s *sampler) keepPeak(p proc, heapMiB float64) {
	if s.h.opts.ProfileDir == "" || heapMiB <= s.peaks[p.name] {
		return
	}
	prof, err := fetchProfile(s.client, "http://"+p.debug+"/debug/pprof/heap")
	if err != nil {
		return // the next sample tries again
	}
	role := strings.TrimPrefix(p.name, "flatfhir ")
	if err := writeProfile(prof, filepath.Join(s.h.opts.ProfileDir, "soak-"+role+".peak.heap.pprof")); err != nil {
		s.h.warn("no heap profile of the %s at its peak: %v", role, err)
		return
	}
	s.peaks[p.name] = heapMiB
}

// goStats reads a Go process's live heap (after a collection) and its
// goroutines from its profile endpoint; zero when it does not answer.
func (s *sampler) goStats(addr string) (heapMiB float64, goroutines int) {
	if b, err := s.get("http://" + addr + "/debug/pprof/heap?gc=1&debug=1"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
				n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				heapMiB = n / MiB
			}
		}
	}
	if b, err := s.get("http://" + addr + "/debug/pprof/goroutine?debug=1"); err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		if v, ok := strings.CutPrefix(first, "goroutine profile: total "); ok {
			goroutines, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return heapMiB, goroutines
}

func (s *sampler) get(url string) ([]byte, error) {
	resp, err := s.client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// procStatus reads a kB field of /proc/<pid>/status, in bytes.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// Trend is what a process's samples during the load say: the medians of
// the first and the last third of them after the first fifth (the
// warm-up).
type Trend struct {
	Process string `json:"process"`
	// Checked: the process is the engine's, whose memory must stay flat
	// (DESIGN.md invariant 4); ClickHouse's caches and the harness's NATS
	// server grow with the data they hold, and are shown only.
	Checked    bool       `json:"checked"`
	RSSMiB     [2]float64 `json:"rssMiB"`
	HeapMiB    [2]float64 `json:"heapMiB"`
	Goroutines [2]float64 `json:"goroutines"`
	Flat       bool       `json:"flat"`
	Why        string     `json:"why,omitempty"`
}

// Flatness bounds: a figure is flat when its late median is at most 25 %
// above its early one, or above it by less than a floor that keeps small
// figures' noise from counting.
const (
	flatGrowth     = 1.25
	flatHeapMiB    = 16
	flatRSSMiB     = 32
	flatGoroutines = 20
	minTrendPoints = 6
)

// processNames lists the processes the samples name, in order of first
// appearance.
func processNames(samples []Sample) []string {
	var names []string
	seen := map[string]bool{}
	for _, s := range samples {
		for _, p := range s.Procs {
			if !seen[p.Process] {
				seen[p.Process] = true
				names = append(names, p.Process)
			}
		}
	}
	return names
}

// trends computes every process's trend over the samples taken in the
// first `load` seconds (the load; the samples after it show the engine
// idle, and would hide growth under load).
func trends(samples []Sample, load float64) []Trend {
	var during []Sample
	for _, s := range samples {
		if s.At <= load {
			during = append(during, s)
		}
	}
	rest := during[len(during)/5:]
	names := processNames(samples)
	var out []Trend
	for _, name := range names {
		t := Trend{Process: name, Checked: strings.HasPrefix(name, "flatfhir "), Flat: true}
		third := len(rest) / 3
		if len(rest) < minTrendPoints {
			t.Checked, t.Why = false, fmt.Sprintf("%d samples after the warm-up, too few to tell", len(rest))
			out = append(out, t)
			continue
		}
		med := func(part []Sample, f func(ProcSample) float64) float64 {
			var xs []float64
			for _, s := range part {
				for _, p := range s.Procs {
					if p.Process == name {
						xs = append(xs, f(p))
					}
				}
			}
			return medianOf(xs)
		}
		early, late := rest[:third], rest[len(rest)-third:]
		figure := func(f func(ProcSample) float64) [2]float64 { return [2]float64{med(early, f), med(late, f)} }
		t.RSSMiB = figure(func(p ProcSample) float64 { return p.RSSMiB })
		t.HeapMiB = figure(func(p ProcSample) float64 { return p.HeapMiB })
		t.Goroutines = figure(func(p ProcSample) float64 { return float64(p.Goroutines) })
		var why []string
		for _, f := range []struct {
			name  string
			v     [2]float64
			floor float64
			unit  string
		}{{"live heap", t.HeapMiB, flatHeapMiB, " MiB"}, {"RSS", t.RSSMiB, flatRSSMiB, " MiB"}, {"goroutines", t.Goroutines, flatGoroutines, ""}} {
			if f.v[1] > f.v[0]*flatGrowth && f.v[1]-f.v[0] > f.floor {
				why = append(why, fmt.Sprintf("%s grew from %.0f%s to %.0f%s", f.name, f.v[0], f.unit, f.v[1], f.unit))
			}
		}
		if len(why) > 0 {
			t.Flat, t.Why = false, strings.Join(why, "; ")
		}
		out = append(out, t)
	}
	return out
}

// LogCount is how often an engine process logged one message at WARN or
// ERROR, or crashed (CRASH: the first line of a panic).
type LogCount struct {
	Process string `json:"process"`
	Level   string `json:"level"`
	Message string `json:"message"`
	Count   int    `json:"count"`
	// Unexpected: an error (or a crash's output) that a soak on a healthy
	// machine should not show.
	Unexpected bool `json:"unexpected"`
	// Example is the first such record, whole (up to 1,000 bytes).
	Example string `json:"example,omitempty"`
}

// scanLogs counts the warnings and errors of every engine process's log.
func (h *harness) scanLogs() []LogCount {
	counts := map[LogCount]int{}
	examples := map[LogCount]string{}
	for _, c := range h.children {
		f, err := os.Open(c.logPath)
		if err != nil {
			h.warn("reading the %s log: %v", c.role, err)
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Bytes()
			var rec struct {
				Level string `json:"level"`
				Msg   string `json:"msg"`
			}
			if json.Unmarshal(line, &rec) != nil || rec.Level == "" {
				text := strings.TrimSpace(string(line))
				if text == "" {
					continue
				}
				// The API's banner aside, what is not a log record
				// matters when a process crashed.
				if strings.HasPrefix(text, "panic:") || strings.HasPrefix(text, "fatal error:") {
					counts[LogCount{Process: c.role, Level: "CRASH", Message: text, Unexpected: true}]++
				}
				continue
			}
			if rec.Level != "WARN" && rec.Level != "ERROR" {
				continue
			}
			k := LogCount{Process: c.role, Level: rec.Level, Message: rec.Msg, Unexpected: rec.Level == "ERROR"}
			if counts[k] == 0 {
				examples[k] = string(line[:min(len(line), 1000)])
			}
			counts[k]++
		}
		if err := sc.Err(); err != nil {
			h.warn("reading the %s log: %v", c.role, err)
		}
		f.Close()
	}
	var out []LogCount
	for k, n := range counts {
		ex := examples[k]
		k.Count, k.Example = n, ex
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Process != out[j].Process {
			return out[i].Process < out[j].Process
		}
		return out[i].Count > out[j].Count
	})
	return out
}
