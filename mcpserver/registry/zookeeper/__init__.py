"""The ZooKeeper registry: Dubbo providers (interface- and application-level) and Curator
service discovery (Spring Cloud Zookeeper), watched with kazoo."""
