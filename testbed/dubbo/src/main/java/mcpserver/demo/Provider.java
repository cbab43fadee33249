package mcpserver.demo;

import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.ProtocolConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.ServiceConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;

/**
 * Exports GreetingService over dubbo:// on 127.0.0.1 and registers it in ZooKeeper or Nacos in
 * both the interface-level and the application-level form (register-mode=all).
 *
 * Usage: Provider REGISTRY DUBBO_PORT APPLICATION VERSION, where REGISTRY is a ZooKeeper
 * host:port or a registry URL such as nacos://127.0.0.1:8848
 */
public final class Provider {
    private Provider() {}

    public static void main(String[] args) throws Exception {
        String address = args[0].contains("://") ? args[0] : "zookeeper://" + args[0];
        int port = Integer.parseInt(args[1]);
        String application = args[2];
        String version = args[3];

        ApplicationConfig app = new ApplicationConfig(application);
        app.setRegisterMode("all");
        app.setQosEnable(false);
        app.setMetadataType("local");

        RegistryConfig registry = new RegistryConfig(address);
        registry.setTimeout(10000);

        ProtocolConfig protocol = new ProtocolConfig("dubbo", port);
        protocol.setHost("127.0.0.1");

        ServiceConfig<GreetingService> service = new ServiceConfig<>();
        service.setInterface(GreetingService.class);
        service.setRef(name -> "hello " + name);
        service.setVersion(version);

        DubboBootstrap.getInstance()
            .application(app)
            .registry(registry)
            .protocol(protocol)
            .service(service)
            .start();
        System.out.println("PROVIDER READY");
        System.out.flush();
        Thread.currentThread().join();
    }
}
