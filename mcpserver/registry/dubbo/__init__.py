"""The Dubbo mapping every registry that carries Dubbo providers shares (ZooKeeper, Nacos):
what a provider is, which Istio port a Dubbo protocol becomes, and how providers and Dubbo 3
application instances become Services. It belongs to no registry kind, so kinds may import it
without importing each other; it does no I/O."""
