package deployments_test

import (
	"bufio"
	"encoding/xml"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/flatfhir/flatfhir/services/flatfhir"
)

// root is the repository root, where docker-compose.yml and .env are.
const root = ".."

// loadCompose loads docker-compose.yml with one profile the way docker
// compose does: .env read, variables interpolated, paths resolved, and the
// model validated (a depends_on naming a service of another profile fails).
func loadCompose(t *testing.T, profile string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithDotEnv, cli.WithProfiles([]string{profile}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("docker compose would refuse the %s profile: %v", profile, err)
	}
	return p
}

// engineService is a service built from one of the engine's Dockerfiles,
// with the configuration the engine reads from its environment.
type engineService struct {
	name string
	svc  types.ServiceConfig
	cfg  flatfhir.Config
}

// engineServices checks every service that builds the engine: its
// Dockerfile exists, and the environment the container gets (the
// Dockerfile's ENV, then the service's environment) is a configuration the
// engine accepts, without a FLATFHIR_ setting it does not read.
func engineServices(t *testing.T, p *types.Project) []engineService {
	t.Helper()
	var out []engineService
	for _, name := range p.ServiceNames() {
		svc := p.Services[name]
		if svc.Build == nil {
			continue
		}
		env := dockerfileEnv(t, filepath.Join(svc.Build.Context, svc.Build.Dockerfile))
		for k, v := range svc.Environment {
			if v == nil {
				t.Errorf("%s: %s has no value", name, k)
				continue
			}
			env[k] = *v
		}
		cfg, ok := engineConfig(t, name, env)
		if !ok {
			continue
		}
		out = append(out, engineService{name: name, svc: svc, cfg: cfg})
	}
	return out
}

// engineConfig is the configuration the engine reads from a container's
// environment, as FromLookup reads it; it reports a refusal, and a
// FLATFHIR_ setting the engine does not read, as errors of name.
func engineConfig(t *testing.T, name string, env map[string]string) (flatfhir.Config, bool) {
	t.Helper()
	read := map[string]bool{}
	cfg, err := flatfhir.FromLookup(func(key string) (string, bool) {
		read[key] = true
		v, ok := env[key]
		return v, ok
	})
	if err != nil {
		t.Errorf("%s: the engine refuses its environment: %v", name, err)
		return cfg, false
	}
	for k := range env {
		if strings.HasPrefix(k, "FLATFHIR_") && !read[k] {
			t.Errorf("%s: %s is not a setting the engine reads", name, k)
		}
	}
	return cfg, true
}

// dockerfileEnv is what a Dockerfile's ENV KEY=VALUE lines set.
func dockerfileEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("a service builds from %s: %v", path, err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "ENV ")
		if !ok {
			continue
		}
		for _, kv := range strings.Fields(rest) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("%s: ENV %s is not KEY=VALUE", path, rest)
			}
			env[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return env
}

func TestComposeProfilesRunTheEngineOnWhatTheyStart(t *testing.T) {
	for _, tc := range []struct {
		profile string
		// roles is how many engine services play each role.
		roles map[string]int
		// natsNodes and shards x replicas: the servers the engine uses.
		natsNodes, replicas int
		shards, chReplicas  int
	}{
		{"single", map[string]int{"api": 1, "ingester": 1, "planner": 1, "writer": 2}, 1, 1, 1, 1},
		{"cluster", map[string]int{"api": 1, "ingester": 2, "planner": 1, "writer": 2}, 3, 3, 2, 2},
	} {
		t.Run(tc.profile, func(t *testing.T) {
			p := loadCompose(t, tc.profile)
			services := engineServices(t, p)
			roles := map[string]int{}
			for _, s := range services {
				roles[s.cfg.Role]++
				checkServers(t, p, s, tc.natsNodes, tc.replicas, tc.shards, tc.chReplicas)
				checkHealth(t, s)
			}
			if !maps.Equal(roles, tc.roles) {
				t.Errorf("engine services by role: %v, want %v", roles, tc.roles)
			}
			checkBindMounts(t, p)
			checkSubnetAdmitted(t, p)
		})
	}
}

// checkHealth checks that an engine service serves its probes and that its
// health check asks /readyz with the engine's own binary (the image has no
// shell or HTTP client).
func checkHealth(t *testing.T, s engineService) {
	t.Helper()
	if s.cfg.MetricsListen == "" {
		t.Errorf("%s: no FLATFHIR_METRICS_LISTEN: it serves no /metrics or /readyz", s.name)
	}
	hc := s.svc.HealthCheck
	if hc == nil || hc.Disable || !slices.Equal(hc.Test, []string{"CMD", "/usr/local/bin/flatfhir", "probe"}) {
		t.Errorf("%s: health check %+v, want flatfhir probe", s.name, hc)
	}
}

// checkServers checks that the NATS and ClickHouse servers an engine
// service is configured with are services of the profile, of the right
// image, started before it, in the expected numbers.
func checkServers(t *testing.T, p *types.Project, s engineService, natsNodes, replicas, shards, chReplicas int) {
	t.Helper()
	server := func(hostport, image, port string) {
		host, gotPort, err := net.SplitHostPort(hostport)
		if err != nil {
			t.Errorf("%s: %q: %v", s.name, hostport, err)
			return
		}
		dep, ok := p.Services[host]
		switch {
		case !ok:
			t.Errorf("%s: %s names no service of the profile", s.name, hostport)
		case !strings.HasPrefix(dep.Image, image+":"):
			t.Errorf("%s: %s runs %s, not %s", s.name, host, dep.Image, image)
		case gotPort != port:
			t.Errorf("%s: %s on port %s, the server listens on %s", s.name, host, gotPort, port)
		}
		if _, ok := s.svc.DependsOn[host]; !ok {
			t.Errorf("%s does not depend on %s, which it needs", s.name, host)
		}
	}
	urls := strings.Split(s.cfg.NATSURL, ",")
	for _, u := range urls {
		pu, err := url.Parse(u)
		if err != nil || pu.Scheme != "nats" {
			t.Errorf("%s: FLATFHIR_NATS_URL %q is not nats://host:port", s.name, u)
			continue
		}
		server(pu.Host, "nats", "4222")
	}
	if len(urls) != natsNodes || s.cfg.Replicas != replicas {
		t.Errorf("%s: %d NATS nodes at R%d, want %d at R%d", s.name, len(urls), s.cfg.Replicas, natsNodes, replicas)
	}
	layout := s.cfg.ClickHouseShards
	if s.cfg.ClickHouseAddr != "" {
		layout = [][]string{{s.cfg.ClickHouseAddr}}
	}
	seen := map[string]bool{}
	for _, shard := range layout {
		if len(shard) != chReplicas {
			t.Errorf("%s: a shard of %d replicas, want %d", s.name, len(shard), chReplicas)
		}
		for _, addr := range shard {
			server(addr, "clickhouse/clickhouse-server", "9000")
			if seen[addr] {
				t.Errorf("%s: %s is in the layout twice", s.name, addr)
			}
			seen[addr] = true
			host, _, _ := net.SplitHostPort(addr)
			// On a replicated cluster the server's {replica} macro and
			// interserver host come from CLICKHOUSE_REPLICA: its own name.
			if chReplicas > 1 {
				if v := p.Services[host].Environment["CLICKHOUSE_REPLICA"]; v == nil || *v != host {
					t.Errorf("%s: CLICKHOUSE_REPLICA is not its service name", host)
				}
			}
		}
	}
	if len(layout) != shards {
		t.Errorf("%s: %d ClickHouse shards, want %d", s.name, len(layout), shards)
	}
}

// checkBindMounts checks that every file the profile mounts from the
// repository exists.
func checkBindMounts(t *testing.T, p *types.Project) {
	t.Helper()
	for _, name := range p.ServiceNames() {
		for _, v := range p.Services[name].Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts %s: %v", name, v.Source, err)
			}
		}
	}
}

// usersFile is the part of deployments/clickhouse/users.d/flatfhir.xml
// that says where the default user may connect from.
type usersFile struct {
	Networks []string `xml:"users>default>networks>ip"`
}

// checkSubnetAdmitted checks that the ClickHouse servers admit the engine's
// connections: the compose network's subnet is among the default user's
// networks.
func checkSubnetAdmitted(t *testing.T, p *types.Project) {
	t.Helper()
	var users usersFile
	readXML(t, filepath.Join(root, "deployments/clickhouse/users.d/flatfhir.xml"), &users)
	for name, n := range p.Networks {
		for _, pool := range n.Ipam.Config {
			if !slices.Contains(users.Networks, pool.Subnet) {
				t.Errorf("network %s (%s) is not among ClickHouse's admitted networks %v", name, pool.Subnet, users.Networks)
			}
			if _, err := netip.ParsePrefix(pool.Subnet); err != nil {
				t.Errorf("network %s: %v", name, err)
			}
		}
	}
}

func readXML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// replicationFile and keeperFile are the parts of the cluster profile's
// ClickHouse and Keeper configurations that must agree.
type replicationFile struct {
	Host string `xml:"zookeeper>node>host"`
	Port string `xml:"zookeeper>node>port"`
}

type keeperFile struct {
	Port string `xml:"keeper_server>tcp_port"`
}

func TestClusterProfileClickHouseReachesItsKeeper(t *testing.T) {
	p := loadCompose(t, "cluster")
	var repl replicationFile
	var keeper keeperFile
	readXML(t, filepath.Join(root, "deployments/clickhouse/cluster.d/replication.xml"), &repl)
	readXML(t, filepath.Join(root, "deployments/clickhouse/keeper/keeper_config.xml"), &keeper)
	svc, ok := p.Services[repl.Host]
	if !ok || !strings.HasPrefix(svc.Image, "clickhouse/clickhouse-keeper:") {
		t.Fatalf("replication.xml names %q as the keeper, which is no keeper service of the profile", repl.Host)
	}
	if repl.Port == "" || repl.Port != keeper.Port {
		t.Errorf("ClickHouse looks for the keeper on port %q, the keeper listens on %q", repl.Port, keeper.Port)
	}
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		if !strings.HasPrefix(s.Image, "clickhouse/clickhouse-server:") {
			continue
		}
		if _, ok := s.DependsOn[repl.Host]; !ok {
			t.Errorf("%s does not depend on the keeper %s", name, repl.Host)
		}
	}
}
