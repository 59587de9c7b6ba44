"""The runtime stays torch-free and free of POSIX-only calls (Windows hosts are first-class users)."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import edgevid

RUNTIME = Path(edgevid.__file__).parent
POSIX_ONLY_MODULES = {"fcntl", "resource", "pwd", "grp", "termios", "tty", "pty", "posix", "crypt"}
POSIX_ONLY_ATTRS = {
    ("os", "fork"), ("os", "forkpty"), ("os", "setsid"), ("os", "getuid"), ("os", "geteuid"),
    ("os", "getpgid"), ("os", "killpg"), ("os", "mkfifo"), ("os", "chown"), ("os", "uname"),
    ("signal", "SIGKILL"), ("signal", "SIGALRM"), ("signal", "alarm"), ("signal", "SIGHUP"),
    ("signal", "SIGUSR1"), ("signal", "SIGPIPE"),
}
FORBIDDEN_IMPORTS = {"torch", "transformers", "optimum", "edgevid_export"}


def _runtime_sources():
    return sorted(RUNTIME.rglob("*.py"))


def test_runtime_has_no_posix_only_calls_or_torch_imports():
    problems = []
    for path in _runtime_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            for name in names:
                if name in POSIX_ONLY_MODULES | FORBIDDEN_IMPORTS:
                    problems.append(f"{path.relative_to(RUNTIME.parent)}:{node.lineno} imports {name}")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in POSIX_ONLY_ATTRS:
                    problems.append(f"{path.relative_to(RUNTIME.parent)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)


def test_every_runtime_module_imports_with_torch_and_transformers_blocked():
    modules = [m.name for m in pkgutil.walk_packages([str(RUNTIME)], prefix="edgevid.")]
    assert len(modules) >= 3
    code = (
        "import sys\n"
        "for blocked in ('torch', 'transformers', 'edgevid_export'):\n"
        "    sys.modules[blocked] = None\n"
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_every_package_folder_is_shipped_by_pyproject():
    """A folder missing from pyproject's package list works in an editable install and vanishes from a wheel."""
    import tomllib

    root = RUNTIME.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"edgevid." + ".".join(p.parent.relative_to(RUNTIME).parts) if p.parent != RUNTIME else "edgevid"
             for p in RUNTIME.rglob("__init__.py")}
    found |= {"edgevid_export." + ".".join(p.parent.relative_to(root / "export").parts)
              if p.parent != root / "export" else "edgevid_export" for p in (root / "export").rglob("__init__.py")}
    assert found <= listed, f"not shipped: {sorted(found - listed)}"


def test_media_modules_have_no_import_cycle():
    """Every ``from .x import`` in edgevid/media (module level or inside functions) points down a DAG."""
    import ast

    media = RUNTIME / "media"
    graph = {}
    for path in media.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {alias.name if node.module is None else node.module.split(".")[0]
                            for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
                            for alias in node.names}
    done, active = set(), []

    def visit(name):
        assert name not in active, f"import cycle: {' -> '.join(active + [name])}"
        if name in done or name not in graph:
            return
        active.append(name)
        for target in graph[name]:
            visit(target)
        active.pop()
        done.add(name)

    for name in graph:
        visit(name)
