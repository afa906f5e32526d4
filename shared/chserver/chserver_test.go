package chserver_test

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/chserver"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

func TestChServerRefusesAPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	_, err = chserver.Start(t.Context(), chserver.Config{Dir: t.TempDir(), TCPPort: port}, testenv.Logger(t))
	if err == nil || !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Fatalf("start on a busy port: %v, want an error naming port %d", err, port)
	}
}

func TestChServerStartsAndStops(t *testing.T) {
	s, err := chserver.Start(t.Context(), chserver.Config{Dir: t.TempDir()}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("server at %s not reachable: %v", s.Addr(), err)
	}
	c.Close()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", s.Addr()); err == nil {
		c.Close()
		t.Fatalf("server still reachable at %s after Stop", s.Addr())
	}
}
