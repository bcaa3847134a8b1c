"""Every hint in an error message names something the user can do today: a ``replicant``
command and options that exist, pipeline-file keys that are accepted. A guard against hints
that drift ahead of (or behind) the code: it reads every string literal in src/replicant
(docstrings aside) and checks what they name between backticks."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

SRC = Path(__file__).resolve().parents[1] / "src" / "replicant"


def _text(node: ast.AST) -> str:
    """A string literal's text; an f-string's placeholders become ``X``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    assert isinstance(node, ast.JoinedStr)
    return "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)


def hint_strings() -> Iterator[tuple[str, str]]:
    """``(file:line, text)`` of every string literal in src that is not a docstring."""
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    skip.add(id(first.value))
            if isinstance(node, ast.JoinedStr):
                skip.update(id(v) for v in node.values)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                yield f"{path.relative_to(SRC)}:{node.lineno}", _text(node)


def _quoted(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _commands() -> dict[str, Any]:
    """Every command by its words (``run``, ``cdc install``)."""
    from replicant.cli import app

    found: dict[str, Any] = {}

    def walk(cmd: Any, words: str) -> None:  # typer's own click: a group has `commands`
        if words:
            found[words] = cmd
        if isinstance(getattr(cmd, "commands", None), dict):
            for name, sub in cmd.commands.items():
                walk(sub, f"{words} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def _model_keys(model: type) -> set[str]:
    """The keys of a settings model and of the models nested in it (an http stream's
    ``paginate:`` and ``incremental:``)."""
    import typing

    from pydantic import BaseModel

    keys: set[str] = set()
    todo, seen = [model], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, field in m.model_fields.items():
            keys.add(field.alias or name)
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                stack.extend(typing.get_args(t))
    return keys


def _pipeline_keys() -> set[str]:
    from replicant import config, registry

    keys: set[str] = set()
    from replicant.tenants.config import TenantConfig

    for model in (config.PipelineConfig, config.SourceConfig, config.DestinationConfig, config.StreamConfig,
                  config.RetentionConfig, TenantConfig):
        for name, field in model.model_fields.items():
            keys.add(field.alias or name)
    for name in registry.SOURCES:
        cls = registry.source_class(name)
        for model in (getattr(cls, "settings", None), getattr(cls, "stream_settings", None)):
            keys.update(_model_keys(model) if model else ())
    for name in registry.DESTINATIONS:
        settings = getattr(registry.destination_class(name), "settings", None)
        keys.update(settings.model_fields if settings else ())
    return keys


def test_commands_named_in_hints_exist_with_their_options() -> None:
    commands = _commands()
    problems = []
    for where, text in hint_strings():
        for quoted in _quoted(text):
            if not re.match(r"replicant\s", quoted):
                continue
            words = quoted.split()[1:]
            name = next((n for n in sorted(commands, key=len, reverse=True) if words[: len(n.split())] == n.split()), None)
            if name is None:
                problems.append(f"{where}: `{quoted}` names no command (known: {', '.join(sorted(commands))})")
                continue
            options = {o for p in commands[name].params for o in getattr(p, "opts", [])}
            problems += [f"{where}: `{quoted}`: `replicant {name}` has no option {w}"
                         for w in words if w.startswith("--") and w.split("=")[0] not in options]
    assert not problems, "\n".join(problems)


def test_pipeline_keys_named_in_hints_are_accepted() -> None:
    keys = _pipeline_keys()
    problems = [f"{where}: `{q}` is not a pipeline-file key" for where, text in hint_strings() for q in _quoted(text)
                if re.fullmatch(r"[a-z_]+:", q) and q[:-1] not in keys]
    assert not problems, "\n".join(problems)


def test_hints_name_no_keyword_argument_and_no_transform_before_transforms_exist() -> None:
    """A CLI or pipeline-file user cannot ``pass lock_timeout=``; and until the pipeline file
    accepts ``transforms:``, no hint may suggest adding one."""
    from replicant.config import PipelineConfig

    has_transforms = "transforms" in PipelineConfig.model_fields
    problems = []
    for where, text in hint_strings():
        if re.search(r"\bpass \w+=", text):
            problems.append(f"{where}: names a keyword argument: {text!r}")
        if not has_transforms and re.search(r"\b(add|use|write) an? (\w+ )?transform\b", text):
            problems.append(f"{where}: suggests a transform, which the pipeline file does not accept yet: {text!r}")
        if re.search(r"`replicant serve`", text) and "serve" not in _commands():
            problems.append(f"{where}: names `replicant serve`, which does not exist yet: {text!r}")
    assert not problems, "\n".join(problems)


def test_the_guard_sees_f_string_hints() -> None:
    texts = [t for _, t in hint_strings()]
    assert any("`replicant replay PIPELINE.yml --destination X --from-start`" in t for t in texts)
    assert any("`replicant status`" in t for t in texts)
