"""Check that every runtime dependency resolves to binary wheels for the edge targets we cannot run here.

Windows hosts (win_amd64) and ARM edge boxes (manylinux aarch64) are first-class users: `pip install edgevid`
must never need a compiler there. The dependency list is read from pyproject.toml, so it cannot drift.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

TARGETS = {
    "win_amd64": ["win_amd64"],
    "linux_aarch64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
}
PYTHONS = ["3.10", "3.11", "3.12"]


def main() -> int:
    deps = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    failed = []
    for target, platforms in TARGETS.items():
        for py in PYTHONS:
            with tempfile.TemporaryDirectory() as dest:
                cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                       "--implementation", "cp", "--python-version", py, "-d", dest]
                for plat in platforms:
                    cmd += ["--platform", plat]
                proc = subprocess.run(cmd + deps, capture_output=True, text=True)
                wheels = sorted(p.name for p in Path(dest).glob("*.whl"))
                ok = proc.returncode == 0
                print(f"{'ok  ' if ok else 'FAIL'} {target} cp{py.replace('.', '')}: {len(wheels)} wheels")
                if not ok:
                    failed.append(f"{target}/{py}")
                    print("\n".join(l for l in proc.stderr.splitlines() if "WARNING" not in l), file=sys.stderr)
    if failed:
        print(f"runtime dependencies without binary wheels for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
