"""YAML for pipeline files: safe, and a key written twice in one mapping is an error.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word, so a second
``url:`` or ``streams:`` silently replaces the first. :func:`load_yaml` reports every
repeated key at once, with its key path and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml

from replicant.errors import ConfigError

__all__ = ["UniqueKeyLoader", "load_yaml"]


class UniqueKeyLoader(yaml.SafeLoader):
    """A :class:`yaml.SafeLoader` that raises :class:`ConfigError` when a mapping repeats a
    key, naming every repeated key's path and the lines of both occurrences (1-based)."""

    def construct_document(self, node: yaml.Node) -> Any:
        problems: list[tuple[str, str]] = []
        _repeated_keys(node, "", problems, set())
        if problems:
            raise ConfigError("invalid pipeline file", problems)
        return super().construct_document(node)


def _repeated_keys(node: yaml.Node, path: str, problems: list[tuple[str, str]], seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already checked (or a recursive structure)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges are PyYAML's own business; complex keys are not config
            key = key_node.value
            where = f"{path}.{key}" if path else str(key)
            if key in first:
                problems.append((where, f"key {key!r} is repeated: line {first[key].start_mark.line + 1} and "
                                        f"line {key_node.start_mark.line + 1}; keep one"))
            else:
                first[key] = key_node
            _repeated_keys(value_node, where, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _repeated_keys(item, f"{path}[{i}]", problems, seen)


def load_yaml(text: str) -> Any:
    """The document in ``text`` (``yaml.safe_load``'s types).

    Raises:
        ConfigError: a mapping repeats a key (every one, with key path and lines).
        yaml.YAMLError: ``text`` is not YAML.
    """
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: safe
