"""Recipe text: the YAML inside a recipe file (plain, Markdown front matter or a fenced block), read with
`!Modifier` tags and with aliases of variables turned into references, and written back out."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

FRONT_MATTER = re.compile(r"^---[ \t]*\n(?P<body>.*?)\n(?:---|\.\.\.)[ \t]*$", re.DOTALL | re.MULTILINE)
FENCED_YAML = re.compile(r"^```[ \t]*(?:yaml|yml)[ \t]*\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class ModifierSpec:
    """One `!Name` entry of a recipe: the tag and its (raw or evaluated) arguments."""

    type: str
    args: dict[str, Any]


class _TaggedForDump:
    def __init__(self, tag: str, args: dict[str, Any]):
        self.tag, self.args = tag, args


class _RecipeDumper(yaml.SafeDumper):
    pass


_RecipeDumper.add_representer(_TaggedForDump, lambda d, obj: d.represent_mapping(f"!{obj.tag}", obj.args))


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML plus `!AnyName` tags on mappings, which become ModifierSpecs; keeps the document's anchors."""

    def compose_document(self) -> yaml.Node:
        # PyYAML's own, except that the anchors are kept (it forgets them) for `aliases_to_references`.
        self.get_event()
        node = self.compose_node(None, None)
        self.get_event()
        self.anchor_nodes, self.anchors = dict(self.anchors), {}
        return node


def aliases_to_references(root: yaml.Node, anchors: Mapping[str, yaml.Node]) -> None:
    """Make every alias of a top-level variable (`num_epochs: &n 10` ... `end_epoch: *n`) an `eval(num_epochs)`
    reference, so `--recipe_args` overrides reach it (with a plain YAML alias the old value would stay)."""
    if not isinstance(root, yaml.MappingNode):
        return
    anchored = {id(node) for node in anchors.values()}
    variables = {id(v): str(k.value) for k, v in root.value
                 if isinstance(k, yaml.ScalarNode) and "modifiers" not in str(k.value) and id(v) in anchored}
    seen: set[int] = set()

    def reference(node: yaml.Node, *, definition: bool) -> yaml.Node:
        if id(node) in variables and not definition:
            return yaml.ScalarNode("tag:yaml.org,2002:str", f"eval({variables[id(node)]})")
        if id(node) in seen:
            return node
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            node.value = [(k, reference(v, definition=node is root and variables.get(id(v)) == str(k.value)))
                          for k, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            node.value = [reference(v, definition=False) for v in node.value]
        return node

    reference(root, definition=True)


def load_yaml(body: str) -> Any:
    """The recipe YAML as data, with aliases of variables turned into references."""
    loader = _RecipeLoader(body)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        aliases_to_references(node, loader.anchor_nodes)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _construct_modifier(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> ModifierSpec:
    if isinstance(node, yaml.ScalarNode) and not node.value:
        return ModifierSpec(tag_suffix, {})
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, f"!{tag_suffix} must be followed by a mapping of "
                                                "arguments", node.start_mark)
    return ModifierSpec(tag_suffix, loader.construct_mapping(node, deep=True))


_RecipeLoader.add_multi_constructor("!", _construct_modifier)
# PyYAML (YAML 1.1) reads `1e-4` as a string; recipes mean a number.
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def extract_yaml(text: str, *, source: str) -> str:
    """The YAML of a recipe file: the whole text, Markdown front matter, or a ```yaml block with modifiers."""
    stripped = text.lstrip("\ufeff")
    front = FRONT_MATTER.search(stripped)
    # Front matter must come first (an HTML licence comment may precede it, as in SparseML's recipe.md files).
    if front and not re.sub(r"<!--.*?-->", "", stripped[:front.start()], flags=re.DOTALL).strip():
        return front.group("body")
    blocks = [m.group("body") for m in FENCED_YAML.finditer(stripped)]
    with_modifiers = [b for b in blocks if re.search(r"^\s*-?\s*!\w+", b, re.MULTILINE)]
    if with_modifiers:
        return with_modifiers[0]
    if front is None and blocks and source.endswith(".md"):
        return blocks[0]
    return stripped


def load_scalar(text: str) -> Any:
    """One YAML scalar, as a recipe would read it (e.g. `1e-4` is a number)."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def dump_recipe(variables: Mapping[str, Any], groups: Mapping[str, list[ModifierSpec]]) -> str:
    """Variables and modifier groups as recipe YAML with `!Name` tags."""
    data: dict[str, Any] = dict(variables)
    data.update({g: [_TaggedForDump(s.type, s.args) for s in specs] for g, specs in groups.items()})
    return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False)
