// Command istiod-harness runs Istio's real discovery server (the pilot/pkg/bootstrap package
// that pilot-discovery's own main runs) for mcpserver's integration tests, without Kubernetes.
//
// Why not plain pilot-discovery: from the ServiceEntry controller rewrite (istio/istio PR
// #58951, 1.30.0 onwards) pilot-discovery dereferences a nil multicluster controller when it
// has no Kubernetes client, so it panics at start whenever --registries is empty. Istio's own
// bootstrap tests (pilot/pkg/bootstrap/server_test.go) give the server an in-memory fake
// Kubernetes client instead; this harness does the same. The fake client holds no objects and
// talks to no apiserver: every ServiceEntry and WorkloadEntry still comes from the config
// sources in --meshConfig (mcpserver over xds://, plus fs:// directories).
package main

import (
	"fmt"
	"os"
	"reflect"
	"time"
	"unsafe"

	"github.com/spf13/cobra"

	"istio.io/istio/pilot/pkg/bootstrap"
	"istio.io/istio/pkg/cmd"
	"istio.io/istio/pkg/ctrlz"
	"istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/log"
)

// withInMemoryKube sets the server's (unexported) Kubernetes client before NewServer's
// initKubeClient runs; initKubeClient keeps a client that is already set.
func withInMemoryKube(s *bootstrap.Server) {
	field := reflect.ValueOf(s).Elem().FieldByName("kubeClient")
	if !field.IsValid() {
		panic("bootstrap.Server has no kubeClient field: update the harness for this Istio version")
	}
	reflect.NewAt(field.Type(), unsafe.Pointer(field.UnsafeAddr())).Elem().Set(reflect.ValueOf(kube.NewFakeClient()))
}

func main() {
	logging := log.DefaultOptions()
	args := bootstrap.NewPilotArgs(func(p *bootstrap.PilotArgs) {
		p.CtrlZOptions = ctrlz.DefaultOptions()
		p.CtrlZOptions.Port = 0
		// No injection templates: the injector is skipped (sidecar injection needs Kubernetes).
		p.InjectionOptions = bootstrap.InjectionOptions{InjectionDirectory: "/nonexistent/inject"}
		p.ShutdownDuration = time.Second
		p.ServerOptions.TLSOptions.TLSMinVersion = bootstrap.TLSMinVersion1_2
	})
	root := &cobra.Command{
		Use:          "istiod-harness",
		Short:        "Istio's discovery server with an in-memory Kubernetes client, for tests.",
		SilenceUsage: true,
		PreRunE: func(*cobra.Command, []string) error {
			if err := log.Configure(logging); err != nil {
				return err
			}
			return args.Complete()
		},
		RunE: func(*cobra.Command, []string) error {
			server, err := bootstrap.NewServer(args, withInMemoryKube)
			if err != nil {
				return fmt.Errorf("failed to create discovery service: %v", err)
			}
			stop := make(chan struct{})
			if err := server.Start(stop); err != nil {
				return fmt.Errorf("failed to start discovery service: %v", err)
			}
			cmd.WaitSignal(stop)
			server.WaitUntilCompletion()
			return nil
		},
	}
	flags := root.Flags()
	flags.StringVar(&args.MeshConfigFile, "meshConfig", "", "absolute path of the mesh config file")
	flags.StringVar(&args.NetworksConfigFile, "networksConfig", "/nonexistent", "mesh networks file")
	flags.StringVar(&args.ServerOptions.HTTPAddr, "httpAddr", "127.0.0.1:8080", "debug HTTP address")
	flags.StringVar(&args.ServerOptions.GRPCAddr, "grpcAddr", "127.0.0.1:15010", "plaintext xDS address")
	flags.StringVar(&args.ServerOptions.SecureGRPCAddr, "secureGRPCAddr", "", "TLS xDS address (empty: off)")
	flags.StringVar(&args.ServerOptions.MonitoringAddr, "monitoringAddr", "127.0.0.1:15014", "monitoring address")
	flags.StringVar(&args.ServerOptions.HTTPSAddr, "httpsAddr", "", "webhook address (empty: off)")
	flags.StringSliceVar(&args.RegistryOptions.Registries, "registries", nil, "service registries (none)")
	logging.AttachCobraFlags(root)
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}
