"""The wheel maps the top-level folders into the one `weightbank` package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


SOURCE_FOLDERS = ("registry", "composer", "cli", "schemas")


def _source_modules() -> list[str]:
    """Every module of the source folders, as its path inside the wheel."""
    return [
        "weightbank/" + path.relative_to(ROOT).as_posix()
        for folder in SOURCE_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    ]


@pytest.mark.slow
def test_wheel_installs_one_package_with_schemas(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("weightbank-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"weightbank"}
    assert "weightbank/schemas/bank.schema.json" in names
    assert not any(n.startswith("weightbank/tests") for n in names)
    missing = sorted(set(_source_modules()) - set(names))
    assert not missing, f"source modules left out of the wheel: {missing}"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "weightbank = weightbank.cli.main:main" in entry_points and "wb = weightbank.cli.main:main" in entry_points

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=600,
    )
    probe = (
        "import weightbank.registry, weightbank.schemas, weightbank.registry.remotes, sys;"
        "print(weightbank.registry.__file__);"
        "print(weightbank.schemas.load('bank')['title']);"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    ).stdout.splitlines()
    assert out[0].startswith(str(target)), out
    assert out[1] == "MES v1 bank manifest"
    assert out[2] == "False", "importing the registry must not import torch"
    shutil.rmtree(target)


def test_console_scripts_are_installed() -> None:
    bin_dir = Path(sys.executable).parent
    for script in ("weightbank", "wb"):
        result = subprocess.run([str(bin_dir / script), "--help"], capture_output=True, text=True, check=True)
        assert "Content-addressed registry of model weight banks" in result.stdout
