"""The package build: the noble bundle is built by setup.py from the pinned lock file
when Node.js and npm are there, and its absence is said, not fatal, when they are not.
Wheels are built from a copy of the tracked sources, without build isolation (no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

from htagweb.host import ADDITIONS

JS = ROOT / "htagweb" / "js"


def sources(dest: Path) -> Path:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def wheel(src: Path, out: Path, path: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    command = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    built = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert built.returncode == 0, built.stdout + built.stderr
    with zipfile.ZipFile(next(out.glob("htagweb-*.whl"))) as archive:
        return built, set(archive.namelist())


def test_without_node_the_package_still_builds_and_says_why(tmp_path):
    src = sources(tmp_path / "src")
    built, names = wheel(src, tmp_path / "dist", path=str(Path(sys.executable).parent))  # no node, no npm
    assert "Node.js and npm not found" in built.stdout + built.stderr
    assert "refuse visitors on plain HTTP" in built.stdout + built.stderr
    assert "htagweb/js/parano.js" in names and "htagweb/js/noble.min.js" not in names


def test_the_wheel_carries_the_bundle_built_from_the_lock_file(tmp_path):
    assert (JS / "node_modules").is_dir(), "pip install -e . with Node.js and npm first (.ci/run does)"
    src = sources(tmp_path / "src")
    # the packages installed from the lock file, as a second build finds them: no registry needed here
    shutil.copytree(JS / "node_modules", src / "htagweb" / "js" / "node_modules", symlinks=True)
    built, names = wheel(src, tmp_path / "dist", path=os.environ["PATH"])
    assert "htagweb/js/noble.min.js" in names, built.stderr
    with zipfile.ZipFile(next((tmp_path / "dist").glob("htagweb-*.whl"))) as archive:
        bundle = archive.read("htagweb/js/noble.min.js")
    assert bundle == (JS / "noble.min.js").read_bytes()  # the same pinned inputs, the same bytes (and SRI hash)
    assert b"htagwebNoble" in bundle and len(bundle) < 80_000
    shipped = {f"htagweb/js/{name}" for name in ("parano.js", "noble.min.js", *ADDITIONS)}  # ADDITIONS: to htag's client
    assert {name for name in names if name.startswith("htagweb/js/")} == shipped
