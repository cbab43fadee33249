"""The static registry: services listed in a YAML file, reloaded when the file changes."""

from __future__ import annotations

from mcpserver.registry.kind import Kind, OfflineView, RegistryContext
from mcpserver.registry.static.config import StaticRegistrySettings
from mcpserver.registry.static.parser import StaticFileError
from mcpserver.registry.static.watcher import StaticRegistry, options_of, read_static
from mcpserver.registry.view import View


def _build(settings: StaticRegistrySettings, context: RegistryContext) -> StaticRegistry:
    return StaticRegistry(settings, context.metrics)


def _offline(settings: StaticRegistrySettings, context: RegistryContext) -> OfflineView:
    """The file, parsed exactly as `serve` parses it."""
    try:
        _, parsed = read_static(settings.path, options_of(settings))
    except OSError as err:
        return OfflineView(errors=(f"{settings.path}: cannot read: {err.strerror}",))
    except (StaticFileError, UnicodeDecodeError) as err:
        return OfflineView(errors=(f"{settings.path}: {err}",))
    view = View(settings.name, parsed.services, synced=True, problems=parsed.problems)
    locations = {key: f"{settings.path}: {where}" for key, where in parsed.locations.items()}
    return OfflineView(view, locations, str(settings.path))


# A file read again after it was broken is no source whose clients register again.
KIND = Kind("static", StaticRegistrySettings, _build, _offline, recovery_grace=0.0)
