"""The Kubernetes sink: the served set written into the apiserver as ServiceEntry and
WorkloadEntry objects, for meshes that cannot read an `xds://` config source (ambient's
ztunnel, managed control planes). MCP stays the default; the sink runs beside it when asked.
"""
