"""The static registry: services listed in a YAML file, reloaded when the file changes."""
