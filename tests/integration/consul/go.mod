// Builds a real Consul agent for mcpserver's tests from the Go module proxy. Consul's own
// go.mod has replace lines (its submodules live in the same repository), so
// `go install github.com/hashicorp/consul@v1.22.6` is refused; this module requires Consul
// and its submodules at the versions Consul v1.22.6 itself requires, and builds its main
// package as a tool: go build -o consul github.com/hashicorp/consul
module mcpserver.test/consul-agent

go 1.25.8

tool github.com/hashicorp/consul

require (
	github.com/hashicorp/consul v1.22.6
	github.com/hashicorp/consul/api v1.33.4
	github.com/hashicorp/consul/envoyextensions v0.9.4
	github.com/hashicorp/consul/proto-public v0.7.2
	github.com/hashicorp/consul/sdk v0.17.2
	github.com/hashicorp/consul/troubleshoot v0.8.5
)
