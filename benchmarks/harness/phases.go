package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"
)

// Phase is what every process spent during one phase of the benchmark:
// CPU seconds from /proc (user and system), and with -profile where in the
// Go processes the CPU went.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	CPU     []CPU   `json:"cpu"`
}

// CPU is one process's CPU time in a phase.
type CPU struct {
	Process string  `json:"process"`
	Seconds float64 `json:"seconds"`
	// Top are the functions that spent most of it (flat: leaf frames),
	// and TopCode the code that spent it: each sample counts for its
	// deepest frame outside Go's standard library (the runtime's copying
	// for the function that asked for it), when the process was profiled.
	Top     []FuncShare `json:"top,omitempty"`
	TopCode []FuncShare `json:"topCode,omitempty"`
	// Profile is the file holding the phase's CPU profile, for go tool
	// pprof.
	Profile string `json:"profile,omitempty"`
}

// FuncShare is a function's share of a process's profiled CPU time.
type FuncShare struct {
	Function string  `json:"function"`
	Percent  float64 `json:"percent"`
}

// proc is a process whose CPU a phase measures.
type proc struct {
	name  string
	pid   int
	debug string // the address of its profiles (FLATFHIR_DEBUG_LISTEN), or ""
}

// procs lists the processes of the run: the engine's, ClickHouse's and the
// harness's own.
func (h *harness) procs() []proc {
	var out []proc
	for _, c := range h.children {
		out = append(out, proc{name: "flatfhir " + c.role, pid: c.pid(), debug: c.debug})
	}
	if h.cluster != nil {
		for _, name := range h.cluster.Processes() {
			out = append(out, proc{name: "flatfhir " + name, pid: h.cluster.Pid(name)})
		}
	}
	for _, pid := range childrenNamed("clickhouse") {
		out = append(out, proc{name: "clickhouse-server", pid: pid})
	}
	return append(out, proc{name: "harness (NATS, generator, client)", pid: os.Getpid()})
}

// clockTicks is the unit of the times in /proc/<pid>/stat (USER_HZ, 100
// on Linux).
const clockTicks = 100

// cpuSeconds reads a process's user and system CPU time.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime or stime", pid)
	}
	return float64(utime+stime) / clockTicks, nil
}

// phase is a phase being measured.
type phase struct {
	h       *harness
	name    string
	start   time.Time
	procs   []proc
	before  []float64
	self    *os.File // the harness's own CPU profile, when profiling
	workers []*profiler
}

// startPhase notes every process's CPU time and, with ProfileDir, starts
// profiling the harness and the engine processes that serve profiles.
func (h *harness) startPhase(name string) *phase {
	p := &phase{h: h, name: name, start: time.Now(), procs: h.procs()}
	p.before = make([]float64, len(p.procs))
	for i, pr := range p.procs {
		p.before[i], _ = cpuSeconds(pr.pid)
	}
	if h.opts.ProfileDir == "" {
		return p
	}
	f, err := os.Create(filepath.Join(h.opts.ProfileDir, name+"-harness.pprof"))
	if err == nil {
		if err = pprof.StartCPUProfile(f); err != nil {
			f.Close()
		} else {
			p.self = f
		}
	}
	if err != nil {
		h.warn("profiling the harness during %s: %v", name, err)
	}
	for _, pr := range p.procs {
		if pr.debug != "" {
			p.workers = append(p.workers, startProfiler(pr.debug))
		}
	}
	return p
}

// end returns the phase's figures, and writes its profiles.
func (p *phase) end() Phase {
	out := Phase{Name: p.name, Seconds: time.Since(p.start).Seconds()}
	for i, pr := range p.procs {
		after, err := cpuSeconds(pr.pid)
		if err != nil {
			continue // the process is gone; the run reports why elsewhere
		}
		out.CPU = append(out.CPU, CPU{Process: pr.name, Seconds: after - p.before[i]})
	}
	if p.self != nil {
		pprof.StopCPUProfile()
		p.self.Close()
		p.attach(&out, "harness (NATS, generator, client)", p.self.Name())
	}
	w := 0
	for _, pr := range p.procs {
		// A soak serves profiles for its samples without profiling phases.
		if pr.debug == "" || w >= len(p.workers) {
			continue
		}
		prof := p.workers[w].stop()
		w++
		role := strings.TrimPrefix(pr.name, "flatfhir ")
		p.saveHeap(pr.debug, role)
		if prof == nil {
			p.h.warn("no CPU profile of the %s during %s", role, p.name)
			continue
		}
		path := filepath.Join(p.h.opts.ProfileDir, p.name+"-"+role+".pprof")
		if err := writeProfile(prof, path); err != nil {
			p.h.warn("writing %s: %v", path, err)
			continue
		}
		p.attach(&out, pr.name, path)
	}
	sort.SliceStable(out.CPU, func(i, j int) bool { return out.CPU[i].Seconds > out.CPU[j].Seconds })
	return out
}

// saveHeap writes the heap profile of the engine process serving
// profiles at addr, as it is at the phase's end, to
// DIR/<phase>-<role>.heap.pprof: what it holds after the phase (in use),
// and what the phase allocated, for go tool pprof -sample_index.
func (p *phase) saveHeap(addr, role string) {
	client := &http.Client{Timeout: 30 * time.Second}
	prof, err := fetchProfile(client, "http://"+addr+"/debug/pprof/heap?gc=1")
	if err == nil {
		err = writeProfile(prof, filepath.Join(p.h.opts.ProfileDir, p.name+"-"+role+".heap.pprof"))
	}
	if err != nil {
		p.h.warn("no heap profile of the %s after %s: %v", role, p.name, err)
	}
}

// attach adds the profile at path, and its top functions, to process's
// figures.
func (p *phase) attach(out *Phase, process, path string) {
	for i := range out.CPU {
		if out.CPU[i].Process != process {
			continue
		}
		out.CPU[i].Profile = path
		top, code, err := topFunctions(path, 6)
		if err != nil {
			p.h.warn("reading %s: %v", path, err)
		}
		out.CPU[i].Top, out.CPU[i].TopCode = top, code
	}
}

// profiler takes one-second CPU profiles of an engine process, back to
// back, until stopped: the standard endpoint profiles a fixed time, and a
// phase's length is not known in advance.
type profiler struct {
	mu      sync.Mutex
	stopped bool
	parts   []*profile.Profile
	done    chan struct{}
}

func startProfiler(addr string) *profiler {
	pr := &profiler{done: make(chan struct{})}
	client := &http.Client{Timeout: 30 * time.Second}
	go func() {
		defer close(pr.done)
		for {
			pr.mu.Lock()
			stopped := pr.stopped
			pr.mu.Unlock()
			if stopped {
				return
			}
			part, err := fetchProfile(client, "http://"+addr+"/debug/pprof/profile?seconds=1")
			if err != nil {
				time.Sleep(100 * time.Millisecond) // a profile already running, or the process busy starting
				continue
			}
			pr.mu.Lock()
			pr.parts = append(pr.parts, part)
			pr.mu.Unlock()
		}
	}()
	return pr
}

// stop waits for the profile in progress and returns them all merged, or
// nil when none was taken.
func (pr *profiler) stop() *profile.Profile {
	pr.mu.Lock()
	pr.stopped = true
	pr.mu.Unlock()
	<-pr.done
	if len(pr.parts) == 0 {
		return nil
	}
	merged, err := profile.Merge(pr.parts)
	if err != nil {
		return pr.parts[0]
	}
	return merged
}

func fetchProfile(client *http.Client, url string) (*profile.Profile, error) {
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return profile.ParseData(b)
}

func writeProfile(p *profile.Profile, path string) error {
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// topFunctions returns the n functions with the most CPU time in the
// profile at path, counting each sample once for its leaf frame and once
// for its deepest frame outside the standard library.
func topFunctions(path string, n int) (leaf, code []FuncShare, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	p, err := profile.ParseData(b)
	if err != nil {
		return nil, nil, err
	}
	idx := len(p.SampleType) - 1 // cpu nanoseconds, after the sample count
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			idx = i
		}
	}
	byLeaf, byCode := map[string]int64{}, map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		v := s.Value[idx]
		total += v
		frames := stackOf(s)
		if len(frames) == 0 {
			continue
		}
		byLeaf[frames[0]] += v
		owner := "(standard library only)"
		for _, f := range frames {
			if !stdlib(f) {
				owner = f
				break
			}
		}
		byCode[owner] += v
	}
	return topOf(byLeaf, total, n), topOf(byCode, total, n), nil
}

// stackOf names a sample's frames, the leaf first, inlined calls included.
func stackOf(s *profile.Sample) []string {
	var out []string
	for _, loc := range s.Location {
		for _, line := range loc.Line { // the innermost inlined call first
			if line.Function != nil {
				out = append(out, line.Function.Name)
			}
		}
	}
	return out
}

// stdlib reports whether a function belongs to Go's standard library, whose
// import paths have no dot in their first element.
func stdlib(fn string) bool {
	first, _, _ := strings.Cut(fn, "/")
	return !strings.Contains(first, ".") || strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "internal/")
}

func topOf(m map[string]int64, total int64, n int) []FuncShare {
	if total == 0 {
		return nil
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return m[names[i]] > m[names[j]] })
	var out []FuncShare
	for _, name := range names[:min(n, len(names))] {
		out = append(out, FuncShare{Function: name, Percent: 100 * float64(m[name]) / float64(total)})
	}
	return out
}

// measurePhase runs fn as the phase name and records it; when measure is
// false (the later runs of a repeated step) it only runs fn.
func (h *harness) measurePhase(ctx context.Context, name string, measure bool, fn func(context.Context) error) error {
	if !measure {
		return fn(ctx)
	}
	p := h.startPhase(name)
	err := fn(ctx)
	h.report.Phases = append(h.report.Phases, p.end())
	return err
}
