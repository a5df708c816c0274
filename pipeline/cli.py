"""Hydra's composition errors as one line naming the key and the nearest valid names, exit 2:

    train.epoch=3    error: train.epoch: unknown setting; did you mean train.epochs?
    modle=cnn        error: modle: unknown config group; did you mean model?
    influence=foo    error: influence=foo: unknown option; choose one of lookahead, loss, ...

Hydra is asked to raise its errors (HYDRA_FULL_ERROR=1) rather than print its own report of many lines;
only when one arrives are the command line's overrides checked one by one against the config groups and
the composed keys (Hydra's compose API) to find the one at fault.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException

from pipeline.config import SCHEMA
from pipeline.errors import first_line

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic"
ABSENT = object()  # _at: no such key


def run_hydra(main: Callable[[], None], config_dir: str, config_name: str) -> None:
    """Call the @hydra.main function `main` (the pipeline's and the evaluation's: one set-up for both); a Hydra error
    (composition, override syntax) exits 2 with one line."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them
    # TensorFlow as in the workers (cluster.worker_env), should anything in this process load it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        main()
    except HydraException as exc:
        print(f"error: {explain(exc, config_dir, config_name, sys.argv[1:])}", file=sys.stderr)
        sys.exit(2)


def explain(exc: HydraException, config_dir: str, config_name: str, argv: list[str]) -> str:
    """One line for Hydra's error `exc` about the command line `argv`: the override at fault and the nearest valid
    names, or else the first line of Hydra's own message."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    fallback = first_line(exc) + (f" ({first_line(exc.__cause__)})" if exc.__cause__ is not None else "")
    args = get_args_parser().parse_args(argv)
    if args.config_dir or args.config_path:
        return fallback
    parser = OverridesParser.create()
    overrides = []
    for text in args.overrides:
        try:
            overrides.extend(parser.parse_overrides([text]))
        except HydraException as bad:
            return f"{text}: not a valid override ({first_line(bad)}; see {GRAMMAR})"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        loader = GlobalHydra.instance().config_loader()
        groups = _groups(loader, "")
        picks = [o for o in overrides if o.key_or_group in groups and not o.is_delete() and not o.is_sweep_override()]
        valid = [
            str(o.input_line) for o in picks if o.get_value_element_as_str() in loader.get_group_options(o.key_or_group)
        ]
        for attempt in (valid, []):  # the keys of the chosen options, or else of the defaults
            try:
                cfg = compose(args.config_name or config_name, overrides=attempt, return_hydra_config=True)
                break
            except HydraException:
                continue
        else:
            return fallback
        config = OmegaConf.to_container(cfg, resolve=False)
        assert isinstance(config, dict)  # a composed config is a mapping
        choices = config["hydra"]["runtime"]["choices"]
        for o in overrides:
            problem = _problem(o, config, groups, choices, loader, args.multirun)
            if problem:
                return problem
    return fallback


def _groups(loader: Any, parent: str) -> set[str]:
    """Every config group below `parent` ("" for all), as paths: task, model, hydra/launcher, ... (not the options'
    schemas, config.SCHEMA, which the defaults choose and a user never names)."""
    found = set()
    for name in loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        if path != SCHEMA:
            found |= {path, *_groups(loader, path)}
    return found


def _problem(
    o: Any, config: dict[Any, Any], groups: set[str], choices: dict[str, Any], loader: Any, multirun: bool
) -> str | None:
    """Why override `o` cannot apply to the composed `config` (a plain dict, hydra node included), or None."""
    key, text = o.key_or_group, o.input_line
    if o.package is not None:
        return None
    if o.is_sweep_override() and not multirun:
        return (
            f"{text}: a comma makes several values (a sweep); write a list ({key}=[...]), quote the value, "
            "or add --multirun"
        )
    if key in groups:
        if o.is_delete():
            return None
        valid = loader.get_group_options(key)
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        bad = next((v for v in values if v not in valid and v != "null"), None)
        if bad is not None:
            close = difflib.get_close_matches(bad, valid, n=1)
            listed = ", ".join(valid)
            hint = f"did you mean {close[0]}? (one of {listed})" if close else f"choose one of {listed}"
            return f"{key}={bad}: unknown option; {hint}"
        value = ",".join(values)
        if o.is_add() and key in choices:
            chosen = "null" if choices[key] is None else choices[key]
            return f"{text}: {key} is already in the defaults ({key}={chosen}); write {key}={value} without the +"
        if not (o.is_add() or o.is_force_add()) and key not in choices:
            return f"{text}: {key} is not in the defaults; add it with +{key}={value}"
        return None
    exists = _at(config, key) is not ABSENT
    if o.is_delete():
        return None if exists else f"~{key}: nothing to delete; {_unknown(key, config, groups, choices)}"
    if o.is_add():
        if not exists:
            return None
        return f"{text}: {key} is already set; drop the + ({text[1:]}) or write +{text} to replace it"
    if o.is_force_add() or exists:
        return None
    return f"{key}: {_unknown(key, config, groups, choices)}"


def _at(config: dict[str, Any], key: str) -> Any:
    """The value or section at the dotted `key` of `config`, or ABSENT."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def _unknown(key: str, config: dict[str, Any], groups: set[str], choices: dict[str, Any]) -> str:
    """'unknown setting|config group; did you mean <nearest>?' for a dotted key that `config` does not have (or,
    when nothing is near, the names there are, or the unknown section above it)."""
    parent, _, leaf = key.rpartition(".")
    hydra = key.split(".")[0] == "hydra"
    node = _at(config, parent) if parent else config
    if node is not ABSENT:
        if isinstance(node, dict):
            names = [n for n in node if hydra or parent or n != "hydra"]
            if not parent:
                names += [g for g in groups if "/" not in g and g not in names and (hydra or g != "hydra")]
            where = f" for {parent}={choices[parent]}" if choices.get(parent) else ""
            close = difflib.get_close_matches(leaf, names, n=1)
            if close:
                full = f"{parent}.{close[0]}" if parent else close[0]
                kind = "config group" if full in groups else "setting"
                return f"unknown {kind}{where}; did you mean {full}?"
            kind = "setting" if parent else "setting or config group"
            return f"unknown {kind}{where} (known: {', '.join(sorted(names))})"
        return f"unknown setting ({parent} is a single value, not a section)"
    close = difflib.get_close_matches(key, [k for k in _keys(config) if hydra or not k.startswith("hydra")], n=1)
    if close:
        return f"unknown setting; did you mean {close[0]}?"
    return f"unknown setting ({parent}: {_unknown(parent, config, groups, choices)})"


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested dict, sections included."""
    if not isinstance(node, dict):
        return []
    out = []
    for name, child in node.items():
        full = f"{prefix}.{name}" if prefix else str(name)
        out += [full, *_keys(child, full)]
    return out
