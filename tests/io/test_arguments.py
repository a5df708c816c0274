"""io.arguments: what a trajectory or a method's scores were computed from, and the check that refuses to mix
results computed with other settings in one output.dir (pure Python, no TF or Ray)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pipeline.config import (
    FEATURES,
    QUERIES,
    SCORES,
    TRAJECTORY,
    ClusterSettings,
    InfluenceSettings,
    ModelSettings,
    OptimizerSettings,
    OutputSettings,
    Settings,
    TaskSettings,
    TrainSettings,
    VerifySettings,
    changed_by,
)
from pipeline.errors import ConfigError
from pipeline.io.arguments import (
    FEATURE_SETTINGS,
    QUERY_SETTINGS,
    claim,
    features_key,
    first_difference,
    key_of,
    score_arguments,
    trajectory_arguments,
)
from pipeline.io.files import read_json, write_json
from pipeline.methods import REGISTRY

FINGERPRINT = "d4t4f1ngerpr1nt0"


def _settings(**sections) -> Settings:
    """Settings with the task's default objective filled in (as settings_from_config gives them)."""
    influence = sections.pop("influence", InfluenceSettings(objective="cross_entropy"))
    train = sections.pop("train", TrainSettings(loss="cross_entropy"))
    return Settings(influence=influence, train=train, **sections)


def _with(settings: Settings, section: str, **changes) -> Settings:
    return dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **changes)})


# ----------------------------------------------------------------------------------------------- key_of


def test_key_of_is_16_hex_digits_and_deterministic():
    key = key_of({"a": 1, "b": [1, 2]})
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert key_of({"b": [1, 2], "a": 1}) == key  # key order does not matter
    assert key_of({"a": 1, "b": (1, 2)}) == key  # tuples are lists in JSON
    assert key_of({"a": 1, "b": [2, 1]}) != key
    assert key_of({"a": 2, "b": [1, 2]}) != key
    assert key_of({"a": {"x": 1}}) != key_of({"a": {"x": 2}})


# ----------------------------------------------------------------------------------- trajectory arguments


def test_trajectory_arguments_contents():
    settings = _settings(train=TrainSettings(loss="cross_entropy", seeds=(0, 1, 2), checkpoint_every=5))
    arguments = trajectory_arguments(settings, FINGERPRINT)
    assert set(arguments) == {"data_fingerprint", "task", "model", "optimizer", "train"}
    assert arguments["data_fingerprint"] == FINGERPRINT
    assert arguments["task"] == {"name": "classification"}

    # settings added with the recipes (keyed_at_default=False) are left out while at their defaults
    def keyed(section: object) -> set[str]:
        return {f.name for f in dataclasses.fields(section) if f.metadata["keyed_at_default"]}  # type: ignore[arg-type]

    assert keyed(ModelSettings) == {f.name for f in dataclasses.fields(ModelSettings)} - {"augment", "freeze"}
    assert arguments["model"] == {
        k: v for k, v in dataclasses.asdict(settings.model).items() if k in keyed(ModelSettings)
    }
    assert arguments["optimizer"] == {
        k: v for k, v in dataclasses.asdict(settings.optimizer).items() if k in keyed(OptimizerSettings)
    }
    assert "seeds" not in arguments["train"]
    assert arguments["train"]["checkpoint_every"] == 5
    assert set(arguments["train"]) == {f.name for f in dataclasses.fields(TrainSettings)} - {
        "seeds",
        "label_smoothing",
        "class_weight",
    }


def test_recipe_settings_enter_the_trajectory_key_only_when_set():
    """Settings added with the recipes (keyed_at_default=False) leave the key of a run that does not use them as it
    was, and change it when set."""
    plain = trajectory_arguments(_settings(), FINGERPRINT)
    assert "weight_decay" not in plain["optimizer"] and "label_smoothing" not in plain["train"]
    decayed = _settings(optimizer=OptimizerSettings(weight_decay=0.01), train=TrainSettings(label_smoothing=0.1))
    arguments = trajectory_arguments(decayed, FINGERPRINT)
    assert arguments["optimizer"]["weight_decay"] == 0.01 and arguments["train"]["label_smoothing"] == 0.1
    assert key_of(arguments) != key_of(plain)


@pytest.mark.parametrize(
    "section,changes",
    [
        ("task", {"name": "regression"}),
        ("model", {"hidden": (32,)}),
        ("model", {"activation": "relu"}),
        ("optimizer", {"lr": 0.05}),
        ("optimizer", {"name": "adam"}),
        ("train", {"epochs": 3}),
        ("train", {"batch_size": 16}),
        ("train", {"checkpoint_every": 7}),
        ("train", {"shuffle": False}),
        ("train", {"dtype": "float64"}),
    ],
)
def test_trajectory_key_changes_with_training_settings(section, changes):
    base = _settings()
    changed = _with(base, section, **changes)
    assert key_of(trajectory_arguments(changed, FINGERPRINT)) != key_of(trajectory_arguments(base, FINGERPRINT))


def test_trajectory_key_changes_with_data():
    settings = _settings()
    assert key_of(trajectory_arguments(settings, FINGERPRINT)) != key_of(trajectory_arguments(settings, "0" * 16))


@pytest.mark.parametrize(
    "section,changes",
    [
        ("train", {"seeds": (0, 1, 2)}),
        ("influence", {"method": "tracin"}),
        ("influence", {"steps": 4}),
        ("influence", {"objective": "mse"}),
        ("influence", {"shard_size": 7}),
        ("verify", {"n_loo": 3}),
        ("cluster", {"num_cpus": 2}),
        ("output", {"dir": "elsewhere", "overwrite": True}),
    ],
)
def test_trajectory_key_ignores_seeds_and_everything_after_training(section, changes):
    base = _settings()
    changed = _with(base, section, **changes)
    assert key_of(trajectory_arguments(changed, FINGERPRINT)) == key_of(trajectory_arguments(base, FINGERPRINT))


def test_trajectory_key_ignores_stages():
    base = _settings()
    assert key_of(trajectory_arguments(dataclasses.replace(base, stages=("score",)), FINGERPRINT)) == key_of(
        trajectory_arguments(base, FINGERPRINT)
    )


# ---------------------------------------------------------------------------------------- score arguments


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_score_arguments_hold_only_the_methods_own_settings(method):
    settings = _settings(
        influence=InfluenceSettings(method=method, objective="cross_entropy", output_weights=(1.0, 2.0))
    )
    arguments = score_arguments(settings, "traj0000traj0000")
    assert arguments["trajectory_key"] == "traj0000traj0000"
    assert arguments["method"] == method
    assert set(arguments["influence"]) == set(REGISTRY[method].settings)
    for name in REGISTRY[method].settings:
        assert arguments["influence"][name] == getattr(settings.influence, name)
    assert "batch_size" not in arguments["influence"] and "shard_size" not in arguments["influence"]


def _score_key(method: str, trajectory_key: str = "traj0000traj0000", **influence) -> str:
    base = {"objective": "cross_entropy", **influence}
    return key_of(score_arguments(_settings(influence=InfluenceSettings(method=method, **base)), trajectory_key))


@pytest.mark.parametrize(
    "changes,changed_methods",
    [
        ({"steps": 3}, {"lookahead"}),
        ({"objective": "mse"}, {"trajectory", "truncated", "lookahead", "tracin", "trak"}),
        ({"proj_dim": 64}, {"trak"}),
        ({"damping": 0.1}, {"trak"}),
        ({"checkpoints": 3}, {"trak"}),
        ({"horizon": 5}, {"truncated"}),
        ({"output_weights": (0.5, 1.0)}, {"sensitivity"}),
        ({"batch_size": 7}, set()),
        ({"shard_size": 5}, set()),
        ({"batch_size": 7, "shard_size": 5}, set()),
    ],
)
def test_score_key_changes_only_with_the_methods_own_settings(changes, changed_methods):
    for method in REGISTRY:
        differs = _score_key(method, **changes) != _score_key(method)
        assert differs == (method in changed_methods), method


def test_score_key_changes_with_trajectory_and_method():
    assert _score_key("tracin", "a" * 16) != _score_key("tracin", "b" * 16)
    assert _score_key("loss") != _score_key("saliency")  # both have no own settings


def test_score_arguments_method_argument_overrides_the_configured_one():
    settings = _settings(influence=InfluenceSettings(method="trajectory", objective="cross_entropy", steps=4))
    arguments = score_arguments(settings, "t" * 16, "lookahead")
    assert arguments["method"] == "lookahead" and arguments["influence"] == {"objective": "cross_entropy", "steps": 4}
    assert score_arguments(settings, "t" * 16) == {
        "trajectory_key": "t" * 16,
        "method": "trajectory",
        "influence": {"objective": "cross_entropy"},
    }


# --------------------------------------------------------------------------------------- first_difference


def test_first_difference_names_the_setting_with_both_values():
    stored = {"optimizer": {"lr": 0.1, "name": "sgd"}, "train": {"epochs": 3}}
    current = {"optimizer": {"lr": 0.05, "name": "sgd"}, "train": {"epochs": 3}}
    assert first_difference(stored, current) == "optimizer.lr=0.1 there, 0.05 now"


def test_first_difference_takes_the_first_in_sorted_order():
    stored = {"train": {"epochs": 3}, "model": {"hidden": [64]}, "optimizer": {"lr": 0.1}}
    current = {"train": {"epochs": 4}, "model": {"hidden": [32, 32]}, "optimizer": {"lr": 0.2}}
    assert first_difference(stored, current) == "model.hidden=[64] there, [32, 32] now"


def test_first_difference_with_settings_on_one_side_only():
    assert first_difference({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == "a.c=<unset> there, 2 now"
    assert first_difference({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}) == "a.c=2 there, <unset> now"
    assert first_difference({}, {"method": "tracin"}) == "method=<unset> there, tracin now"


def test_first_difference_when_nothing_differs():
    arguments = {"optimizer": {"lr": 0.1}, "x": None}
    assert first_difference(arguments, json.loads(json.dumps(arguments))) == "no setting differs"


# -------------------------------------------------------------------------------------------------- claim


def _arguments(lr: float = 0.1, hidden=(64,)) -> dict:
    return trajectory_arguments(
        _settings(optimizer=OptimizerSettings(lr=lr), model=ModelSettings(hidden=hidden)), FINGERPRINT
    )


@pytest.fixture
def run(tmp_path):
    """A run dir holding a trajectory, a method's scores and a file the claim must not touch."""
    root = tmp_path / "run"
    for rel in (
        "trajectory/seed=0/schedule.parquet",
        "scores/method=tracin/seed=0/part-00000.parquet",
        "ranking.parquet",
        "notes.txt",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    return root


def test_first_claim_records_and_returns_false(run):
    path = run / "trajectory" / "_arguments.json"
    arguments = _arguments()
    assert claim(run, path, arguments, "a trajectory", False, [run / "trajectory"]) is False
    stored = read_json(path)
    assert stored == {"key": key_of(arguments), "arguments": json.loads(json.dumps(arguments))}
    assert (run / "trajectory" / "seed=0" / "schedule.parquet").exists()  # recording removes nothing


def test_claim_records_in_a_folder_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "run" / "scores" / "method=loss" / "_arguments.json"
    assert claim(tmp_path / "run", path, {"method": "loss"}, "loss scores", False, []) is False
    assert read_json(path)["arguments"] == {"method": "loss"}


def test_same_arguments_may_reuse(run):
    path = run / "trajectory" / "_arguments.json"
    claim(run, path, _arguments(), "a trajectory", False, [run / "trajectory"])
    before = path.read_text()
    assert claim(run, path, _arguments(), "a trajectory", False, [run / "trajectory"]) is True
    # with overwrite too: nothing differs, so nothing is removed
    assert claim(run, path, _arguments(), "a trajectory", True, [run / "trajectory"]) is True
    assert path.read_text() == before
    assert (run / "trajectory" / "seed=0" / "schedule.parquet").exists()


def test_tuples_and_lists_are_the_same_arguments(run):
    path = run / "_arguments.json"
    arguments = _arguments(hidden=(64, 32))
    assert isinstance(arguments["model"]["hidden"], tuple)
    claim(run, path, arguments, "a trajectory", False, [])
    as_lists = json.loads(json.dumps(arguments))
    assert isinstance(as_lists["model"]["hidden"], list)
    assert claim(run, path, as_lists, "a trajectory", False, []) is True
    assert claim(run, path, arguments, "a trajectory", False, []) is True


def test_other_arguments_are_refused_naming_the_first_difference(run):
    path = run / "trajectory" / "_arguments.json"
    claim(run, path, _arguments(lr=0.1), "a trajectory", False, [run / "trajectory"])
    before = path.read_text()
    with pytest.raises(ConfigError) as info:
        claim(run, path, _arguments(lr=0.05), "a trajectory", False, [run / "trajectory", run / "ranking.parquet"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"output.dir={run}: holds a trajectory computed with other settings")
    assert "(optimizer.lr=0.1 there, 0.05 now)" in message
    assert "output.overwrite=true" in message
    # nothing changed on disk
    assert path.read_text() == before
    assert (run / "trajectory" / "seed=0" / "schedule.parquet").exists() and (run / "ranking.parquet").exists()


def test_refusal_names_the_method_scores(run):
    path = run / "scores" / "method=lookahead" / "_arguments.json"
    settings = _settings(influence=InfluenceSettings(method="lookahead", objective="cross_entropy", steps=1))
    claim(run, path, score_arguments(settings, "t" * 16), "lookahead scores", False, [])
    changed = _with(settings, "influence", steps=2)
    with pytest.raises(
        ConfigError, match=r"holds lookahead scores computed with other settings \(influence\.steps=1 there, 2 now\)"
    ):
        claim(run, path, score_arguments(changed, "t" * 16), "lookahead scores", False, [])
    # a setting the method does not depend on does not matter
    assert (
        claim(
            run,
            path,
            score_arguments(_with(settings, "influence", batch_size=3, shard_size=9), "t" * 16),
            "lookahead scores",
            False,
            [],
        )
        is True
    )


def test_overwrite_removes_the_listed_paths_and_records_the_new_arguments(run):
    path = run / "trajectory" / "_arguments.json"
    claim(run, path, _arguments(lr=0.1), "a trajectory", False, [])
    removed = [
        run / "trajectory",
        run / "scores",
        run / "ranking.parquet",
        run / "verify",
        run / "_SUCCESS",
    ]  # the last two do not exist
    assert claim(run, path, _arguments(lr=0.05), "a trajectory", True, removed) is False
    assert (
        not (run / "trajectory" / "seed=0").exists()
        and not (run / "scores").exists()
        and not (run / "ranking.parquet").exists()
    )
    assert (run / "notes.txt").read_text() == "x"
    stored = read_json(path)  # recorded again, inside the folder that was removed
    assert stored["key"] == key_of(_arguments(lr=0.05)) and stored["arguments"]["optimizer"]["lr"] == 0.05
    assert claim(run, path, _arguments(lr=0.05), "a trajectory", False, []) is True
    with pytest.raises(ConfigError, match=r"optimizer\.lr=0\.05 there, 0\.1 now"):
        claim(run, path, _arguments(lr=0.1), "a trajectory", False, [])


def test_unreadable_arguments_file_is_refused_unless_overwrite(run):
    path = run / "trajectory" / "_arguments.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"^output\.dir=.*holds a trajectory computed with other settings"):
        claim(run, path, _arguments(), "a trajectory", False, [run / "trajectory"])
    assert (run / "trajectory" / "seed=0" / "schedule.parquet").exists()
    assert claim(run, path, _arguments(), "a trajectory", True, [run / "trajectory"]) is False
    assert not (run / "trajectory" / "seed=0").exists()
    assert read_json(path)["key"] == key_of(_arguments())


def test_claim_compares_keys_not_file_layout(run):
    """A file written by hand with the same arguments (other formatting, key order) still matches."""
    path = run / "_arguments.json"
    arguments = _arguments()
    write_json(path, {"arguments": json.loads(json.dumps(arguments)), "key": key_of(arguments)})
    assert claim(run, path, arguments, "a trajectory", False, []) is True


def test_claim_settings_unrelated_to_the_arguments_do_not_matter(run):
    """Verify, cluster and output settings never reach the arguments, so they never cause a refusal."""
    path = run / "_arguments.json"
    base = _settings()
    claim(run, path, trajectory_arguments(base, FINGERPRINT), "a trajectory", False, [])
    other = dataclasses.replace(
        base,
        verify=VerifySettings(n_loo=1),
        cluster=ClusterSettings(num_cpus=1),
        output=OutputSettings(dir="x", overwrite=True),
        train=dataclasses.replace(base.train, seeds=(3, 4)),
        task=TaskSettings(),
    )
    assert claim(run, path, trajectory_arguments(other, FINGERPRINT), "a trajectory", False, []) is True


# ------------------------------------------------------------------ which settings change which artifact, said once


def test_the_trajectory_key_holds_the_settings_whose_fields_say_they_change_it():
    arguments = trajectory_arguments(_settings(), FINGERPRINT)
    for section in (TaskSettings, ModelSettings, OptimizerSettings, TrainSettings):
        name = section.__name__.removesuffix("Settings").lower()
        quiet = {f.name for f in dataclasses.fields(section) if not f.metadata.get("keyed_at_default", True)}
        assert tuple(arguments[name]) == tuple(k for k in changed_by(section, TRAJECTORY) if k not in quiet)
    assert changed_by(TrainSettings, TRAJECTORY) == tuple(
        f.name for f in dataclasses.fields(TrainSettings) if f.name != "seeds"
    )
    for section in (InfluenceSettings, VerifySettings, ClusterSettings, OutputSettings):
        assert changed_by(section, TRAJECTORY) == ()


def test_a_methods_own_settings_are_settings_that_change_scores():
    scores = set(changed_by(InfluenceSettings, SCORES))
    assert set().union(*(m.settings for m in REGISTRY.values())) == scores  # each listed by some method
    features = [m for m in REGISTRY.values() if m.features]
    assert all(set(FEATURE_SETTINGS) <= set(m.settings) for m in features)  # features change that method's scores
    assert (
        FEATURE_SETTINGS
        == changed_by(InfluenceSettings, FEATURES)
        == ("objective", "proj_dim", "proj_seed", "checkpoints", "feature_dtype")
    )
    assert (
        QUERY_SETTINGS
        == changed_by(InfluenceSettings, QUERIES)
        == ("objective", "queries", "query_ids", "query_input_grad")
    )


def test_a_method_measures_validation_error_exactly_when_its_scores_depend_on_the_objective():
    for method in REGISTRY.values():
        assert (method.measures == "validation") == ("objective" in method.settings), method.name
        assert method.measures in ("validation", "training loss", "output")
    assert [m.name for m in REGISTRY.values() if not m.signed] == ["loss", "saliency"]


def test_the_keys_elsewhere_follow_these_definitions():
    """io.queries and stages.score_trak key the per-query scores and trak's features; their settings are these."""
    import importlib

    from pipeline.io.queries import query_arguments

    settings = _settings(influence=InfluenceSettings(method="trak", objective="cross_entropy"))
    assert tuple(query_arguments(settings, "t" * 16)["influence"]) == QUERY_SETTINGS
    score_trak = importlib.import_module("pipeline.stages.score_trak")
    assert getattr(score_trak, "features_key", features_key)(settings, "t" * 16) == features_key(settings, "t" * 16)
    assert features_key(_with(settings, "influence", damping=0.5), "t" * 16) == features_key(
        settings, "t" * 16
    )  # not damping
    assert features_key(_with(settings, "influence", proj_dim=64), "t" * 16) != features_key(settings, "t" * 16)
