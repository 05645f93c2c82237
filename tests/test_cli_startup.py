"""`zoo`, `zoo --help` and the zoo's own commands start without importing Lightning or torch
(ZooCLI lives in zoo.lightning_cli, imported for fit / validate / test / predict only)."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import zoo.cli
code = zoo.cli.main({args!r})
print(json.dumps({{"code": code, "loaded": sorted(m for m in ("torch", "pytorch_lightning", "lightning_fabric")
                                                  if m in sys.modules)}}))
"""


def run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], []])
def test_help_imports_neither_lightning_nor_torch(args: list[str]) -> None:
    result = run(args)
    assert result == {"code": 0 if args else 2, "loaded": []}


def test_zoo_cli_class_is_still_importable_from_zoo_cli() -> None:
    from zoo import cli, lightning_cli

    assert cli.ZooCLI is lightning_cli.ZooCLI and cli.DISABLING_FLAGS is lightning_cli.DISABLING_FLAGS
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cli.nothing  # noqa: B018
