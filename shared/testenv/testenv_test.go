package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestRemoveStaleDirsRemovesOnlyThoseOfDeadProcesses(t *testing.T) {
	tmp := t.TempDir()
	// A process that has exited: its pid names no process any more.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(tmp, fmt.Sprintf("%s%d-123", chDirPrefix, cmd.Process.Pid))
	alive := filepath.Join(tmp, fmt.Sprintf("%s%d-456", chDirPrefix, os.Getpid()))
	other := filepath.Join(tmp, chDirPrefix+"notapid-789")
	for _, d := range []string{dead, alive, other} {
		if err := os.MkdirAll(filepath.Join(d, "data"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	removeStaleDirs(tmp)
	for d, want := range map[string]bool{dead: false, alive: true, other: true} {
		_, err := os.Stat(d)
		if got := err == nil; got != want {
			t.Errorf("%s exists: %v, want %v", filepath.Base(d), got, want)
		}
	}
}
