"""A task's code version, derived from what it imports: no hand-written module lists.

A cached result is only valid for the code that produced it. Lists of "the modules this
task calls" go stale the day someone adds an import, and then an edit returns cached
results of the old code. So the version of a task is the hash of

* the source file of the task's own module, and
* every ``kexue`` module the task function uses — through the module-level imports whose
  names its body (or a helper it calls in the same module) refers to, or through imports
  inside its body — followed transitively through every import statement of those modules
  (module-level or inside functions), together with the packages' ``__init__`` files.

Modules are found with ``importlib.util.find_spec`` and read with ``ast``: nothing is
imported, so versioning the JoSE or GAN task never starts TensorFlow.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
from pathlib import Path
from typing import Callable

from kexue.core.artifacts import sha256_file, sha256_text

LIBRARY = "kexue"


@functools.lru_cache(maxsize=None)
def source_path(module: str) -> Path | None:
    """The source file of ``module`` (None for a name that is not a module, e.g. a function)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent is not a package: ``kexue.x.function``
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _is_library(module: str) -> bool:
    return module == LIBRARY or module.startswith(LIBRARY + ".")


def _resolve(module: str | None, level: int, name: str, package: str) -> str:
    """The absolute module named by ``from <level dots><module> import <name>``."""
    if level:
        base = package.rsplit(".", level - 1)[0] if level > 1 else package
        module = f"{base}.{module}" if module else base
    candidate = f"{module}.{name}"
    return candidate if source_path(candidate) else module  # ``from pkg import submodule``


def _bindings(tree: ast.AST, package: str) -> dict[str, str]:
    """Name bound by each import statement in ``tree`` -> the module it comes from."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                out[a.asname or a.name] = _resolve(node.module, node.level, a.name, package)
    return out


def _imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Every module named by an import statement anywhere in ``tree``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(node.module, node.level, a.name, package) for a in node.names)
    return found


@functools.lru_cache(maxsize=None)
def _parsed(module: str) -> tuple[ast.Module, str]:
    path = source_path(module)
    if path is None:
        raise ModuleNotFoundError(f"code version: no source file for module {module!r}")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return ast.parse(path.read_text(encoding="utf-8"), str(path)), package


@functools.lru_cache(maxsize=None)
def module_imports(module: str) -> frozenset[str]:
    """Every module that ``module``'s import statements name (any scope)."""
    tree, package = _parsed(module)
    return frozenset(_imported_modules(tree, package))


def library_imports(module: str) -> frozenset[str]:
    """The ``kexue`` modules that ``module``'s import statements name (any scope)."""
    return frozenset(m for m in module_imports(module) if _is_library(m))


def _with_packages(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' ``__init__``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(roots: set[str]) -> list[str]:
    """``roots`` and every ``kexue`` module they import, directly or transitively, sorted."""
    seen: set[str] = set()
    todo = [p for r in roots for p in _with_packages(r)]
    while todo:
        m = todo.pop()
        if m in seen or not _is_library(m) or source_path(m) is None:
            continue
        seen.add(m)
        todo.extend(p for i in library_imports(m) for p in _with_packages(i))
    return sorted(seen)


def function_roots(fn: Callable) -> set[str]:
    """The ``kexue`` modules a function uses directly: imported in its body, or through the
    module-level names that it — or a function of the same module it calls — refers to."""
    fn = inspect.unwrap(fn)
    tree, package = _parsed(fn.__module__)
    bindings = _bindings(tree, package)
    local_functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    roots: set[str] = set()
    seen: set[str] = set()
    todo = [fn.__name__]
    while todo:
        name = todo.pop()
        if name in seen or name not in local_functions:
            continue
        seen.add(name)
        body = local_functions[name]
        roots.update(m for m in _imported_modules(body, package) if _is_library(m))
        for node in ast.walk(body):
            if isinstance(node, ast.Name):
                if node.id in local_functions:
                    todo.append(node.id)
                elif _is_library(bindings.get(node.id, "")):
                    roots.add(bindings[node.id])
    return roots


def task_modules(fn: Callable) -> list[str]:
    """Every module whose source is part of ``fn``'s code version (its own module first)."""
    fn = inspect.unwrap(fn)
    return [fn.__module__, *closure(function_roots(fn))]


@functools.lru_cache(maxsize=None)
def _versions(modules: tuple[str, ...]) -> str:
    return sha256_text(*(f"{m}:{sha256_file(source_path(m))}" for m in modules))


def code_version(fn: Callable) -> str:
    """Hash of the source of ``fn``'s module and of every ``kexue`` module it depends on."""
    return _versions(tuple(task_modules(fn)))


def load_time_imports(module: str) -> set[str]:
    """Top-level packages imported when ``module`` is imported: its module-level import
    statements, followed through ``kexue``, ``tasks`` and ``flows`` modules."""
    own = ("kexue", "tasks", "flows")
    found: set[str] = set()
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        tree, package = _parsed(m)
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for name in _imported_modules(ast.Module(body=top, type_ignores=[]), package):
            found.add(name.split(".")[0])
            if name.split(".")[0] in own and source_path(name):
                todo.extend(_with_packages(name))
    return found
