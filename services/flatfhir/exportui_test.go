package flatfhir

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
)

// TestExportUIOnATerminal drives the terminal display as a download does:
// the server's progress, then bars for files downloaded at once, and it
// ends, with the files' lines counted in the overall bar.
func TestExportUIOnATerminal(t *testing.T) {
	var out lockedBuffer
	ui := &exportUI{out: &out, tty: true}
	ui.progress(bulkclient.Progress{XProgress: "planning"})
	ui.progress(bulkclient.Progress{XProgress: "40% (2 of 5 tasks)"})
	ui.startDownloads(3, 30)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			n := 10
			tick := ui.fileStarted("output/Patient-"+string(rune('a'+i))+".ndjson", &n)
			for range n {
				tick(100)
			}
			ui.fileDone("output/Patient.ndjson", n, false, nil)
		})
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { ui.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the display did not end")
	}
	if got := ui.overall.Current(); got != 30 {
		t.Errorf("the overall bar counted %d resources, want 30", got)
	}
	if s := out.String(); !strings.Contains(s, "40% (2 of 5 tasks)") || !strings.Contains(s, "all files") {
		t.Errorf("the display showed:\n%s", s)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
