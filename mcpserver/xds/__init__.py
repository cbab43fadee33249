"""The MCP-over-xDS side: type URLs, packed resources, snapshots, the protocol and the server."""
