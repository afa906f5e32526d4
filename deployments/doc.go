// Package deployments holds no code: its tests load the deployment files
// (docker-compose.yml and what it mounts and builds) the way their tools
// do, and check them against the engine's own configuration parsing, since
// no test here runs a container.
package deployments
