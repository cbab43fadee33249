"""Write the `config` part of the chart's values.schema.json from the settings models, and
check that it is current.

Why a script: the chart renders `config` verbatim into mcpserver's config file, so the only
schema that can say what `config` may hold is the one mcpserver validates with. A hand-kept
copy accepted any key (`config.foo=bar` rendered, and the pods exited 2); generated from the
same pydantic models, `helm install` refuses what `mcpserver serve` would refuse, naming the
field, before anything is deployed. CI checks the file is current, as it checks generated/.

    python scripts/gen_chart_schema.py            # rewrite charts/mcpserver/values.schema.json
    python scripts/gen_chart_schema.py --check    # exit 1 if it differs from a fresh run

Only `properties.config` and `$defs` are written; the rest of the file (the chart's own
values) is kept as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mcpserver.settings import settings_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.generated_file import ROOT, write_or_check  # run as a file

SCHEMA = ROOT / "charts" / "mcpserver" / "values.schema.json"
DESCRIPTION = (
    "mcpserver's config file (docs/configuration.md), generated from its settings models "
    "(scripts/gen_chart_schema.py); server.listen and server.admin come from `service`"
)


def _strip(node: Any) -> Any:
    """Without pydantic's titles and defaults: noise in helm's messages, not constraints."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k not in ("title", "default")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _by_kind(node: Any) -> Any:
    """pydantic's discriminated union (oneOf) as if/then per `kind`: a registry entry is then
    checked against its own kind's model only, and helm names the one field that is wrong
    instead of listing why it matches none of six kinds."""
    if isinstance(node, dict):
        mapping = node.get("discriminator", {}).get("mapping")
        if mapping and "oneOf" in node:
            key = node["discriminator"]["propertyName"]
            return {
                "type": "object",
                "required": [key],
                "properties": {key: {"enum": list(mapping)}},
                "allOf": [
                    {
                        "if": {"properties": {key: {"const": kind}}, "required": [key]},
                        "then": {"$ref": ref},
                    }
                    for kind, ref in mapping.items()
                ],
            }
        return {k: _by_kind(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_by_kind(v) for v in node]
    return node


def generated(current: dict[str, Any]) -> str:
    """values.schema.json with `config` and `$defs` made from the settings models."""
    model = _by_kind(_strip(settings_model().model_json_schema()))
    defs = model.pop("$defs")
    model.pop("description", None)
    schema = dict(current)
    properties = dict(schema["properties"])
    properties["config"] = {"description": DESCRIPTION, **model}
    schema["properties"] = properties
    schema["$defs"] = defs
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        SCHEMA,
        lambda: generated(json.loads(SCHEMA.read_text(encoding="utf-8"))),
        "gen_chart_schema.py",
        argv,
        __doc__.split("\n\n")[0],
    )


if __name__ == "__main__":
    sys.exit(main())
