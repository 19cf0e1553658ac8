"""A static check for the unsafe calls docs/reliability.md promises the source never makes.

Why an allow-list and not a deny-list: a check for ``yaml.load`` misses ``yaml.load_all``,
``from yaml import load``, ``import yaml as y; y.load`` and ``getattr(yaml, "load")``.
Here every use of the ``yaml`` module, under any alias, must be one of the safe names
(``yaml.safe_load`` …); anything else — another attribute, a bare reference, a
``from yaml import`` of an unsafe name, importing it by string — is a finding. The same
closure applies to ``eval``/``exec`` (as names, attributes or ``getattr`` strings), to
Keras' ``safe_mode`` (only the literal ``True`` may be passed) and to NumPy's
``allow_pickle`` (only the literal ``False``).
"""
from __future__ import annotations

import ast
from pathlib import Path

YAML_ALLOWED = {"safe_load", "safe_load_all", "safe_dump", "safe_dump_all", "YAMLError", "SafeLoader", "SafeDumper"}
FORBIDDEN_NAMES = {"eval", "exec"}
LITERAL_ONLY = {"safe_mode": True, "allow_pickle": False}  # keyword -> the only value allowed


def _is_yaml(module: str | None) -> bool:
    return module is not None and (module == "yaml" or module.startswith("yaml."))


def findings(source: str, where: str = "<string>") -> list[str]:
    """Every unsafe construct in ``source``, as ``where:line: what``."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    yaml_aliases: set[str] = set()
    out: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        out.append(f"{where}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_yaml(a.name):
                    yaml_aliases.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and _is_yaml(node.module):
            for a in node.names:
                if a.name not in YAML_ALLOWED:
                    flag(node, f"from {node.module} import {a.name} (only {sorted(YAML_ALLOWED)})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in yaml_aliases:
            parent = parents.get(node)
            if not (isinstance(parent, ast.Attribute) and parent.value is node and parent.attr in YAML_ALLOWED):
                what = f"yaml.{parent.attr}" if isinstance(parent, ast.Attribute) and parent.value is node else "the yaml module used directly"
                flag(node, f"{what} (use yaml.safe_load)")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            flag(node, f"{node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            flag(node, f".{node.attr}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if name == "getattr" and any(s in FORBIDDEN_NAMES for s in strings):
                flag(node, f"getattr(..., {strings[-1]!r})")
            if name in ("__import__", "import_module") and any(_is_yaml(s) for s in strings):
                flag(node, f"{name}({strings[0]!r}) (import yaml and use yaml.safe_load)")
            for kw in node.keywords:
                if kw.arg is None and isinstance(kw.value, ast.Dict):
                    keys = [k.value for k in kw.value.keys if isinstance(k, ast.Constant)]
                    for k in keys:
                        if k in LITERAL_ONLY:
                            flag(node, f"{k} passed through **{{...}}")
                elif kw.arg in LITERAL_ONLY:
                    allowed = LITERAL_ONLY[kw.arg]
                    if not (isinstance(kw.value, ast.Constant) and kw.value.value is allowed):
                        flag(node, f"{kw.arg}={ast.unparse(kw.value)} (only {kw.arg}={allowed})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in LITERAL_ONLY:
            parent = parents.get(node)
            if not (isinstance(parent, ast.Dict) and isinstance(parents.get(parent), ast.keyword)):
                flag(node, f"the string {node.value!r} (pass {node.value}= as a literal keyword)")
    return out


def scan_tree(root: Path, folders: tuple[str, ...]) -> list[str]:
    """Findings over every ``*.py`` file under ``root/<folder>``."""
    out = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            out += findings(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
    return out
