"""Write the README's settings tables from the settings themselves (pipeline/config.py): every setting with its
default, the options that read it, what it changes and its help text, and every option of a config group with
what its conf/ file sets.

    python scripts/settings_table.py            # rewrite the part of README.md between the two markers
    python scripts/settings_table.py --check    # exit 1 if README.md is not what this would write (tests run it)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline import config
from pipeline.config import Section, Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN = (
    "<!-- settings-table: begin (written by scripts/settings_table.py from pipeline/config.py; edit the help texts "
    "there) -->"
)
END = "<!-- settings-table: end -->"


def shown(value: Any) -> str:
    """A value as one writes it in an override: null, true, [0, 1], [train, score], text."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return value if isinstance(value, str) else json.dumps(value)


def cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and <name> too (a renderer would take it for an HTML tag)."""
    return re.sub(r"<(?=\w)", "&lt;", text.replace("|", "\\|"))


def first_sentence(path: Path) -> str:
    """The first sentence of the comment that opens a conf/ file, without its full stop."""
    comment = " ".join(line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#"))
    return re.split(r"(?<=\.)\s+(?=[A-Z])", comment, maxsplit=1)[0].removesuffix(".")


def option_lines(section: str, group: config.Group, default: str) -> list[str]:
    """`<section>=`: every option, what its conf/ file sets beyond the defaults, and its description."""
    lines = [f"**`{section}=`**", ""]
    for option in group.options:
        path = ROOT / "conf" / section / f"{option}.yaml"
        values = OmegaConf.to_container(OmegaConf.load(path)) or {}
        sets = ", ".join(f"`{section}.{k}={shown(v)}`" for k, v in values.items())
        marks = ", ".join(m for m in ("default" if option == default else "", sets) if m)
        lines.append(f"- `{option}`{f' ({marks})' if marks else ''}: {first_sentence(path)}")
    return lines


def changes(cls: type, name: str) -> str:
    return ", ".join(a for a in config.ARTIFACTS if name in config.changed_by(cls, a))


def section_table(name: str, cls: type, group: config.Group | None) -> list[str]:
    """One row per setting of section `name`: default, the options that read it, what it changes, its help."""
    readers = (
        {f.name: [o for o, reads in group.options.items() if f.name in reads] for f in fields(cls)} if group else {}
    )
    lines = ["| setting | default | read by | changes | what it sets |", "| --- | --- | --- | --- | --- |"]
    for f in fields(cls):
        if group and f.name == group.selector:  # its values are the options above
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        chosen = readers.get(f.name, [])
        read_by = "" if not group or len(chosen) == len(group.options) else ", ".join(chosen)
        row = [f"`{name}.{f.name}`", f"`{shown(default)}`", read_by, changes(cls, f.name), cell(f.metadata["help"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines if len(lines) > 2 else []


def tables() -> str:
    """The markdown between the markers."""
    groups, out = config.groups(), [BEGIN, ""]
    out += [
        "Each section lists its settings: the default, the options that read it (blank: every option; a setting the",
        "chosen option does not read is refused), the recorded results it changes (`data`, `trajectory`: the training;",
        "`scores`, `features`, `queries`: the method's results; in an `output.dir` that holds them, another value is",
        "refused unless `output.overwrite=true`; `results`: only in the run's config hash) and what it sets.",
        "",
    ]
    for f in fields(Settings):
        cls = f.default_factory
        if not (isinstance(cls, type) and issubclass(cls, Section)):
            continue
        group = groups.get(f.name)
        out += option_lines(f.name, group, getattr(cls(), group.selector)) if group else [f"**`{f.name}`**"]
        if "__doc__" in vars(cls) and not cls.__doc__.startswith(f"{cls.__name__}("):  # its own, not dataclass's
            out += ["", " ".join(cls.__doc__.split())]
        table = section_table(f.name, cls, group)
        out += ["", *table, *([""] if table else [])]
    stages = next(f for f in fields(Settings) if f.name == "stages")
    out += [f"**`stages`** = `{shown(stages.default)}`: {stages.metadata['help']}", "", END]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date, write nothing")
    args = parser.parse_args()
    text = README.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        print(f"{README}: needs the two markers once each:\n{BEGIN}\n{END}", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    new = head + tables() + tail
    if args.check:
        if new != text:
            print(
                f"{README}: the settings tables are out of date; run python scripts/settings_table.py", file=sys.stderr
            )
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
