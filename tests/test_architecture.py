"""The architecture, checked: the import layers (import-linter) and who owns what.

- the layers and forbidden imports of ``[tool.importlinter]`` in pyproject.toml;
- only ``streams/keys.py`` holds Redis key or channel names;
- only the ``streams/pubsub/`` package touches pub/sub connections (``.pubsub()``,
  ``PubSub``, SUBSCRIBE commands);
- only ``store/repository.py`` builds SQL (SQLAlchemy's statement builders, raw SQL);
- api/ catches no Redis, coredis or OS errors: the adapters raise runstream's own.

Each checker is also run on a snippet that breaks its rule, so it is shown to fail.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

import runstream

PACKAGE = Path(runstream.__file__).parent
PYPROJECT = PACKAGE.parents[1] / "pyproject.toml"

KEY_LITERAL = re.compile(r"runstream:\w|:run:|:hub:|:queue:")
SQL_LITERAL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|PRAGMA|CREATE|DROP|ALTER)\b", re.I)
SQL_BUILDERS = {"select", "insert", "update", "delete", "text", "and_", "or_", "func"}
FOREIGN_ERRORS = {"RedisError", "ConnectionError", "OSError", "CoredisError", "TimeoutError"}

Checker = Callable[[ast.AST], Iterator[str]]


def sources(*, besides: str) -> Iterator[tuple[str, ast.AST]]:
    """Every module of the package but ``besides`` (a path relative to the package, or a
    subpackage's folder ending in ``/``)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative != besides and not (besides.endswith("/") and relative.startswith(besides)):
            yield relative, ast.parse(path.read_text(), filename=relative)


def strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """String constants, f-string pieces included, that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and id(node) not in docstrings:
            yield node.lineno, node.value


def key_literals(tree: ast.AST) -> Iterator[str]:
    for line, value in strings(tree):
        if KEY_LITERAL.search(value):
            yield f"line {line}: Redis key or channel literal {value!r}"


def pubsub_use(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"pubsub", "ssubscribe"}:
            yield f"line {node.lineno}: .{node.attr}"
        elif isinstance(node, ast.ImportFrom) and any(a.name == "PubSub" for a in node.names):
            yield f"line {node.lineno}: imports PubSub"
    for line, value in strings(tree):
        if re.search(r"\b[SP]?SUBSCRIBE\b", value):
            yield f"line {line}: subscribe command {value!r}"


def sql_building(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            if "dialects" in (node.module or ""):
                yield f"line {node.lineno}: imports {node.module}"
            for alias in node.names:
                if alias.name in SQL_BUILDERS:
                    yield f"line {node.lineno}: imports sqlalchemy's {alias.name}"
        elif isinstance(node, ast.Attribute) and node.attr == "exec_driver_sql":
            yield f"line {node.lineno}: .{node.attr}"
    for line, value in strings(tree):
        if SQL_LITERAL.search(value):
            yield f"line {line}: SQL {value!r}"


def foreign_error_handlers(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.type) if isinstance(n, ast.Attribute)}
            if caught := names & FOREIGN_ERRORS:
                yield f"line {node.lineno}: catches {', '.join(sorted(caught))}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in {
            "redis",
            "coredis",
        }:
            yield f"line {node.lineno}: imports {node.module}"


def violations(checker: Checker, *, owner: str, within: str = "") -> list[str]:
    return [
        f"{module} {problem}"
        for module, tree in sources(besides=owner)
        if module.startswith(within)
        for problem in checker(tree)
    ]


def test_import_layers_hold(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert exit_code == 0, capsys.readouterr().out


def test_only_keys_module_names_redis_keys() -> None:
    assert violations(key_literals, owner="streams/keys.py") == []


def test_only_pubsub_module_touches_pubsub() -> None:
    assert violations(pubsub_use, owner="streams/pubsub/") == []


def test_only_repository_builds_sql() -> None:
    assert violations(sql_building, owner="store/repository.py") == []


def test_api_catches_no_foreign_errors() -> None:
    assert violations(foreign_error_handlers, owner="", within="api/") == []


@pytest.mark.parametrize(
    ("checker", "bad"),
    [
        (key_literals, 'name = f"runstream:run:{{{run_id}}}:events"'),
        (pubsub_use, "ps = redis.pubsub()"),
        (pubsub_use, "from redis.asyncio.client import PubSub"),
        (pubsub_use, 'await redis.execute_command("SUBSCRIBE", channel)'),
        (sql_building, "from sqlalchemy import select"),
        (sql_building, 'await connection.exec_driver_sql("PRAGMA journal_mode=WAL")'),
        (foreign_error_handlers, "try:\n    pass\nexcept RedisError:\n    pass"),
        (foreign_error_handlers, "from redis.exceptions import RedisError"),
    ],
)
def test_each_check_catches_what_it_forbids(checker: Checker, bad: str) -> None:
    assert list(checker(ast.parse(bad)))


def test_the_server_commands_load_no_http_client() -> None:
    # `runstream api` and `runstream worker` start from the command line's package; the
    # client's httpx (2.7 MiB of a server's RSS) loads only for the commands that use it.
    code = (
        "import sys, runstream.cli.main, runstream.cli.server, runstream.cli.worker; "
        "print(sorted(m for m in ('httpx', 'httpx_sse', 'runstream.client.client') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
