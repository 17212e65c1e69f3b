"""Facts of the project's own configuration that must agree with each other."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the oldest supported Python
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_mypy_checks_against_the_oldest_supported_python() -> None:
    conf = tomllib.loads(PYPROJECT.read_text())
    oldest = re.fullmatch(r">=\s*(3\.\d+)", conf["project"]["requires-python"])
    assert oldest is not None, conf["project"]["requires-python"]
    assert conf["tool"]["mypy"]["python_version"] == oldest.group(1)
    assert conf["tool"]["ruff"]["target-version"] == "py" + oldest.group(1).replace(".", "")
