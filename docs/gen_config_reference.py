"""Writes docs/configuration.md, the configuration reference: every key of conf/, with its default and
its comment, read from the YAML files themselves (so the comments written beside a key are its
documentation). Run it after changing conf/:

    .venv/bin/python docs/gen_config_reference.py

tests/test_docs.py renders the page again and fails while the committed one differs, or while a key of
conf/ is missing from it.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
PAGE = ROOT / "docs" / "configuration.md"

KEY = re.compile(r"^(?P<indent>\s*)(?P<item>- )?(?P<key>[\w.+/@-]+):(?:\s+(?P<rest>.*))?$")
ITEM = re.compile(r"^(?P<indent>\s*)- (?P<rest>.*)$")

INTRO = """# Configuration reference

Every key of `conf/`, with its default and the comment written beside it in the YAML: this page is
generated from those files by `docs/gen_config_reference.py` (run it after changing `conf/`;
`tests/test_docs.py` fails while this page is out of date or misses a key). Any key can be set on the
command line as `key=value` (`train.epochs=10`), a group's option chosen as `group=option`
(`model=cnn2`), and a preset added with `+experiment=activations`; [Running experiments](running.md)
shows them at work. A value `${...}` is an interpolation: it takes another key's value when the
config is composed.
"""


def package(path: Path, text: str) -> str:
    """The dotted prefix a file's keys get in the composed config: its group's (conf/model/cnn2.yaml:
    `model.`), none for conf/config.yaml and for a file that declares `# @package _global_`."""
    group = path.parent.relative_to(CONF)
    if "@package _global_" in text or group == Path("."):
        return ""
    return ".".join(group.parts) + "."


def split_comment(rest: str) -> tuple[str, str]:
    """A line's value and its comment (after ` #`; conf/ has no `#` inside a value)."""
    value, _, comment = rest.partition(" #") if not rest.startswith("#") else ("", "", rest[1:])
    return value.strip(), comment.strip()


def rows(path: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """A file's leading comment, and (key, default, comment) for each of its keys and list items, in
    file order. A comment line aligned under the one before continues it; other comment lines go
    with the key below them."""
    text = path.read_text()
    prefix = package(path, text)
    header, found, stack, pending, column = [], [], [], [], None
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):  # the file's own description
        line = lines.pop(0)
        if not line.startswith("# @package"):
            header.append(line[1:].strip())
    for line in lines:
        stripped = line.strip()
        if not stripped:
            column = None
            continue
        if stripped.startswith("#"):
            if column is not None and line.index("#") == column and found:  # continues the row above
                key, value, comment = found[-1]
                found[-1] = (key, value, f"{comment} {stripped[1:].strip()}")
            else:
                pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        indent = len(line) - len(line.lstrip())
        if match and not match["item"]:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            key = ".".join([s[1] for s in stack] + [match["key"]])
            value, comment = split_comment(match["rest"] or "")
            if not value:
                stack.append((indent, match["key"]))
            found.append((prefix + key, value, " ".join([*pending, comment]).strip()))
        else:  # a list item: `- model: mlp` of a defaults list, or a value of a block list
            item = ITEM.match(line)
            value, comment = split_comment(item["rest"] if item else stripped)
            while stack and stack[-1][0] > indent:
                stack.pop()
            parent = ".".join(s[1] for s in stack)
            found.append((f"{prefix}{parent}[]", value, " ".join([*pending, comment]).strip()))
        pending = []
        column = line.index(" #") + 1 if " #" in line else None
    return " ".join(header), found


def cell(text: str) -> str:
    """Text safe in a Markdown table cell: no `|` to split it, no `<...>` taken for HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def render() -> str:
    """The whole page: conf/config.yaml first, then each group's files, by group and name."""
    files = [CONF / "config.yaml", *sorted(p for p in CONF.rglob("*.yaml") if p != CONF / "config.yaml")]
    out, group = [INTRO], None
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        here = path.parent.relative_to(CONF).as_posix()
        if path == CONF / "config.yaml":
            out.append(f"\n## Top level ({relative})\n")
        else:
            if here != group:
                out.append(f"\n## {here}\n")
                group = here
            out.append(f"\n### {here}={path.stem} ({relative})\n")
        header, found = rows(path)
        if header:
            out.append(f"\n{cell(header)}\n")
        out.append("\n| key | default | comment |\n|---|---|---|\n")
        for key, value, comment in found:
            shown = f"`{cell(value)}`" if value else ""
            out.append(f"| `{cell(key)}` | {shown} | {cell(comment)} |\n")
    return "".join(out)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
