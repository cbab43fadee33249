"""The static registry's settings: a YAML file of services, polled for changes."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from mcpserver.config import Duration, ExistingFile, RegistrySettings, check_template


class StaticRegistrySettings(RegistrySettings):
    kind: Literal["static"]
    path: ExistingFile
    host_template: str = "{name}.{namespace}.svc.mesh"
    poll_interval: Duration = 1.0

    def source(self) -> str:
        return str(self.path)

    @field_validator("host_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, name="n", namespace="ns", registry="r")
