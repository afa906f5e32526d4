package deployments_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestNATSConfigsAreAcceptedByTheServer parses the NATS configurations the
// compose profiles mount with the server's own parser, and checks that the
// cluster's routes are the nodes of the cluster profile.
func TestNATSConfigsAreAcceptedByTheServer(t *testing.T) {
	t.Run("single", func(t *testing.T) {
		o, err := server.ProcessConfigFile(filepath.Join(root, "deployments/nats/nats.conf"))
		if err != nil {
			t.Fatalf("nats-server refuses nats.conf: %v", err)
		}
		if !o.JetStream || o.Port != 4222 {
			t.Errorf("JetStream %v on port %d, want JetStream on 4222", o.JetStream, o.Port)
		}
	})
	t.Run("cluster", func(t *testing.T) {
		p := loadCompose(t, "cluster")
		var nodes []string
		for _, name := range p.ServiceNames() {
			if strings.HasPrefix(p.Services[name].Image, "nats:") {
				nodes = append(nodes, name)
			}
		}
		for _, node := range nodes {
			// Each node reads its name from the environment compose gives it.
			env := p.Services[node].Environment["NATS_SERVER_NAME"]
			if env == nil || *env != node {
				t.Errorf("%s: NATS_SERVER_NAME is not its service name", node)
				continue
			}
			t.Setenv("NATS_SERVER_NAME", *env)
			o, err := server.ProcessConfigFile(filepath.Join(root, "deployments/nats/cluster.conf"))
			if err != nil {
				t.Fatalf("nats-server refuses cluster.conf: %v", err)
			}
			if o.ServerName != node || !o.JetStream || o.Cluster.Name == "" {
				t.Errorf("%s: server name %q, JetStream %v, cluster %q", node, o.ServerName, o.JetStream, o.Cluster.Name)
			}
			var routes []string
			for _, r := range o.Routes {
				routes = append(routes, r.Hostname())
			}
			if strings.Join(routes, ",") != strings.Join(nodes, ",") {
				t.Errorf("%s routes to %v, the profile's NATS nodes are %v", node, routes, nodes)
			}
		}
		if len(nodes) != 3 {
			t.Errorf("the cluster profile has %d NATS nodes, want 3", len(nodes))
		}
	})
}
