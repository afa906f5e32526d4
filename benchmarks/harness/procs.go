package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// findRepoRoot returns the directory of the workspace's go.work: what
// go env GOWORK names, or else the first go.work above the working
// directory.
func findRepoRoot(ctx context.Context) (string, error) {
	if out, err := exec.CommandContext(ctx, "go", "env", "GOWORK").Output(); err == nil {
		if p := strings.TrimSpace(string(out)); p != "" && p != "off" {
			return filepath.Dir(p), nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work found (go env GOWORK is empty and none is above the working directory); run from the flatfhir workspace")
		}
		dir = parent
	}
}

// enginePackage is the engine's main package, relative to the repo root.
const enginePackage = "./services/flatfhir/cmd/flatfhir"

// buildEngine compiles the engine binary into out.
func buildEngine(ctx context.Context, root, out string) error {
	if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(enginePackage))); err != nil {
		return fmt.Errorf("engine sources not found under %s: %w", root, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, enginePackage)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s in %s: %w\n%s", enginePackage, root, err, b)
	}
	return nil
}

// child is one engine process playing one role.
type child struct {
	role    string
	bin     string
	env     map[string]string
	cmd     *exec.Cmd
	logPath string
	debug   string // FLATFHIR_DEBUG_LISTEN, when profiling
	done    chan struct{}
	waitErr error // valid once done is closed
}

// startChild starts bin with env (on top of a FLATFHIR_-free copy of this
// process's environment), its output going to logPath.
func startChild(bin, role string, env map[string]string, logPath string) (*child, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", role, err)
	}
	cmd := exec.Command(bin)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLATFHIR_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = filepath.Dir(logPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The child must not outlive the harness, whatever way it exits; its
	// own process group keeps a terminal's Ctrl-C for the harness, which
	// then stops the children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s (role %s): %w", bin, role, err)
	}
	c := &child{role: role, bin: bin, env: env, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited returns an error when the process is no longer running.
func (c *child) exited() error {
	select {
	case <-c.done:
		return fmt.Errorf("the %s process exited unexpectedly (%v); last log lines:\n%s", c.role, c.waitErr, c.tail(2048))
	default:
		return nil
	}
}

// stop sends SIGTERM and waits up to timeout for a clean exit, then kills.
// It returns an error when the process did not exit cleanly.
func (c *child) stop(timeout time.Duration) error {
	select {
	case <-c.done:
		return fmt.Errorf("%s had already exited: %v", c.role, c.waitErr)
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		if c.waitErr != nil {
			return fmt.Errorf("%s exited with %v after SIGTERM; last log lines:\n%s", c.role, c.waitErr, c.tail(1024))
		}
		return nil
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM and was killed", c.role, timeout)
	}
}

// tail returns the last n bytes of the child's log.
func (c *child) tail(n int64) string {
	f, err := os.Open(c.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(b))
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
