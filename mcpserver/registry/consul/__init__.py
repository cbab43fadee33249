"""The Consul registry: catalog and health blocking queries through py-consul's asyncio client."""
