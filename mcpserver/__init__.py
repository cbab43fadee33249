"""mcpserver: an Istio config source that serves registry services to istiod over MCP-over-xDS."""

__version__ = "0.1.0"
