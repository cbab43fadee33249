"""Generate Python code for our Istio proto subset, and check that generated/ is current.

Why a script: CI must prove that generated/ matches protos/ (a stale copy would silently
put the wrong wire format on istiod's stream), and developers need the same one command.

    python scripts/gen_protos.py            # regenerate generated/
    python scripts/gen_protos.py --check    # exit 1 if generated/ differs from a fresh run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "generated"
PACKAGE = "mcpserver_protos"


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) over every .proto under protos/ into out."""
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for directory in [out / PACKAGE, *(d for d in (out / PACKAGE).rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()
    (out / PACKAGE / "py.typed").touch()


def differences(left: Path, right: Path) -> list[str]:
    """Relative paths that differ, byte for byte, between two trees (ignoring caches)."""

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    a, b = files(left), files(right)
    return [name for name in sorted(a.keys() | b.keys()) if a.get(name) != b.get(name)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    args = parser.parse_args()
    if not args.check:
        if (GENERATED / PACKAGE).exists():
            shutil.rmtree(GENERATED / PACKAGE)
        generate(GENERATED)
        print(f"generated {GENERATED / PACKAGE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = differences(Path(tmp) / PACKAGE, GENERATED / PACKAGE)
    if stale:
        print("generated/ is stale; run `make protos`. Differs: " + ", ".join(sorted(stale)))
        return 1
    print("generated/ is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
