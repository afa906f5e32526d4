// Package natsembed runs a NATS server with JetStream inside the process,
// for the one-machine mode and for tests.
package natsembed

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config says where the embedded server listens and stores.
type Config struct {
	// Host and Port to listen on; Port -1 picks a free port.
	Host string
	Port int
	// StoreDir holds JetStream data; it survives restarts.
	StoreDir string
	// ReadyTimeout bounds the wait for the server to accept connections.
	ReadyTimeout time.Duration
	// Name names the server; a cluster's nodes need distinct names.
	Name string
	// Cluster, when ClusterPort is set, makes the server a node of a
	// JetStream cluster: it listens for routes on ClusterPort and dials the
	// other nodes at Routes (host:port each).
	Cluster     string
	ClusterPort int
	Routes      []string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.StoreDir == "" {
		return errors.New("nats store directory is required")
	}
	return nil
}

// Server is a running embedded server.
type Server struct {
	srv *server.Server
}

// Start starts the server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name = "flatfhir"
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		MaxPayload: 8 << 20,
	}
	if cfg.ClusterPort != 0 {
		if cfg.Cluster == "" {
			cfg.Cluster = "flatfhir"
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.Cluster, Host: cfg.Host, Port: cfg.ClusterPort}
		for _, r := range cfg.Routes {
			u, err := url.Parse("nats-route://" + r)
			if err != nil {
				return nil, fmt.Errorf("nats route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("create nats server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(cfg.ReadyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats server not ready after %s", cfg.ReadyTimeout)
	}
	return &Server{srv: srv}, nil
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Name is the server's name.
func (s *Server) Name() string { return s.srv.Name() }

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// ClientNames lists the names of the connected clients, e.g. to see which
// services have connected.
func (s *Server) ClientNames() ([]string, error) {
	cz, err := s.srv.Connz(&server.ConnzOptions{Limit: 1024})
	if err != nil {
		return nil, fmt.Errorf("list nats connections: %w", err)
	}
	names := make([]string, 0, len(cz.Conns))
	for _, c := range cz.Conns {
		names = append(names, c.Name)
	}
	return names, nil
}
