"""The table of bad inputs that tests/test_bad_inputs.py feeds to the CLIs, the API and the envs.

Each :class:`Bad` is one input a user could give by mistake. CLI cases (``train``, ``evaluate``,
``phantom``) are argument lists in which ``@NAME`` stands for a path of the test's fixture
(``@ROOT``, ``@CACHE`` the phantom files, ``@LM_RUN`` / ``@RIGID_RUN`` two tiny trained runs,
``@USER`` a folder of the user's files, ``@IN`` prepared bad input files); the expected result
is exit status 2 with one line on stderr that contains ``phrase`` (the named field or file).
API and env cases call ``call(ctx)`` and expect ``error`` with a one-line message containing
``phrase``. Every case also checks that nothing under ``@ROOT`` changed.

``owner`` marks a case whose behaviour another part of the code base owns (readers: G; run
folders and checkpoints: I); it runs as a non-strict xfail until that part lands.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.dqn import AgentConfig
from agents.experiments import EnvConfig, PhantomDataConfig, TrainConfig
from agents.search import SearchConfig
from envs.data import AugmentConfig

ROOT = Path(__file__).resolve().parent.parent
LANDMARK_CONFIG = str(ROOT / "configs" / "landmark_phantom.yaml")
RIGID_CONFIG = str(ROOT / "configs" / "rigid_phantom.yaml")


@dataclass(frozen=True)
class Bad:
    """One bad input and what must happen to it."""

    id: str
    kind: str  # train | evaluate | phantom | api | env
    phrase: str
    argv: tuple[str, ...] = ()
    call: Callable[[dict[str, Any]], Any] | None = None
    error: type[BaseException] = ValueError
    owner: str | None = None


# ---------------------------------------------------------------------- train.py: config values
TINY = (
    "data.phantoms.n_train=2",
    "data.phantoms.n_val=1",
    "data.phantoms.n_test=1",
    "data.phantoms.cache_dir=@CACHE",
    "train.total_timesteps=100",
    "train.eval_every_steps=100",
    "train.checkpoint_every_steps=100",
    "train.progress_bar=false",
    "agent.learning_starts=50",
    "agent.buffer_size=500",
    "agent.channels=[4, 8]",
    "agent.kernel_sizes=[5, 3]",
    "agent.strides=[2, 2]",
    "agent.features_dim=16",
    "agent.net_arch=[16]",
    "augment.variants_per_case=1",
    "env.patch_size=15",
    "env.n_envs=1",
)


NO_PHANTOMS = tuple(o for o in TINY if not o.startswith("data.phantoms."))


def sets(*overrides: str) -> tuple[str, ...]:
    return tuple(item for override in overrides for item in ("--set", override))


def train_args(*extra: str, run_dir: str = "@ROOT/runs/new") -> tuple[str, ...]:
    """The tiny landmark config with ``extra`` overrides, into a run folder that must not appear."""
    return (LANDMARK_CONFIG, *sets(*TINY, *extra), "--run-dir", run_dir)


_BAD_VALUES = {
    int: (("abc", "expected an integer"), ("1.5", "expected an integer"), ("[1]", "expected an integer")),
    float: (("abc", "expected a number"), ("[1]", "expected a number"), (".nan", "expected a finite number")),
    bool: (("maybe", "expected true or false"), ("3", "expected true or false")),
    str: (("[1, 2]", "expected text"),),
}


def _type_cases() -> list[Bad]:
    """A value of the wrong type for every scalar field of the landmark experiment's sections."""
    cases = []
    sections = {
        "agent": AgentConfig,
        "augment": AugmentConfig,
        "search": SearchConfig,
        "train": TrainConfig,
        "env": EnvConfig,
        "data.phantoms": PhantomDataConfig,
    }
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            tp = hints[field.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            base = (
                args[0]
                if typing.get_origin(tp) in (typing.Union, type(int | None)) and len(args) == 1
                else tp
            )
            key = f"{section}.{field.name}"
            for value, phrase in _BAD_VALUES.get(base, ()):
                cases.append(
                    Bad(f"type-{key}={value}", "train", f"{key}: {phrase}", train_args(f"{key}={value}"))
                )
            if typing.get_origin(base) is tuple:
                cases.append(Bad(f"type-{key}=scalar", "train", key, train_args(f"{key}=abc")))
            if typing.get_origin(base) is typing.Literal:
                cases.append(Bad(f"type-{key}=choice", "train", key, train_args(f"{key}=nope")))
    return cases


_RANGE = (
    ("train.total_timesteps=0", "train.total_timesteps"),
    ("train.eval_every_steps=0", "train.eval_every_steps"),
    ("train.patience=0", "train.patience"),
    ("train.checkpoint_every_steps=-5", "train.checkpoint_every_steps"),
    ("train.max_minutes=0", "train.max_minutes"),
    ("train.max_minutes=-1e3", "train.max_minutes"),
    ("train.eval_cases=0", "train.eval_cases"),
    ("env.patch_size=4", "env.patch_size"),
    ("env.patch_size=24", "env.patch_size"),
    ("env.patch_size=-25", "env.patch_size"),
    ("env.patch_size=2001", "memory"),
    ("env.patch_size=999", "memory"),
    ("env.frames=0", "env.frames"),
    ("env.frames=17", "env.frames"),
    ("env.levels_mm=[]", "env.levels_mm"),
    ("env.levels_mm=[2.0, 4.0]", "env.levels_mm"),
    ("env.levels_mm=[8.0, 8.0]", "env.levels_mm"),
    ("env.levels_mm=[4.0, -2.0]", "env.levels_mm"),
    ("env.levels_mm=[0]", "env.levels_mm"),
    ("env.max_episode_steps=0", "env.max_episode_steps"),
    ("env.n_envs=0", "env.n_envs"),
    ("data.cache_gib=0", "data.cache_gib"),
    ("data.cache_gib=-1", "data.cache_gib"),
    ("data.phantoms=null", "data.manifest"),
    ("data.manifest=@IN/x.csv", "data.phantoms: null"),
    ("task=segmentation", "task"),
    ("task=rigid", "unknown key"),
    ("augment.gamma=[1.0]", "augment.gamma"),
    ("augment.gamma=[1.0, 2.0, 3.0]", "augment.gamma"),
    ("agent.channels=[a]", "agent.channels[0]"),
    ("agent.net_arch=[1.5]", "agent.net_arch[0]"),
    ("env.levels_mm=[a, b]", "env.levels_mm[0]"),
    ("env.landmarks=carina", "env.landmarks"),
    ("env.landmarks=[nose_tip]", "nose_tip"),
    ("seed=abc", "config seed"),
    ("seed=[1]", "config seed"),
    ("name=[1]", "config name"),
    ("data=5", "config data"),
    ("env=[1, 2]", "config env"),
    ("train=abc", "config train"),
)

_UNKNOWN = (
    "env.patchsize=25",
    "env.patch=25",
    "agent.lr=1e-4",
    "agent.learningrate=1e-4",
    "train.steps=10",
    "train.timesteps=10",
    "augment.rotation=5",
    "search.start=2",
    "data.phantom.n_train=2",
    "data.phantoms.ntrain=2",
    "data.cache=1",
    "nme=x",
    "seeds=1",
    "sdm.k=3",
    "enviroment.patch_size=25",
)

_SYNTAX = (
    ("env.patch_size", "expected key=value"),
    ("=25", "expected key=value"),
    ("agent.learning_rate=[1", "not valid YAML"),
    ("agent.learning_rate={", "not valid YAML"),
    ("env.levels_mm=[8.0, 4.0", "not valid YAML"),
    ("name='unclosed", "not valid YAML"),
    ('name="unclosed', "not valid YAML"),
    ("env.patch_size: 25", "expected key=value"),
    ("env.patch_size.x=1", "not a section"),
    ("train.total_timesteps.deep.er=1", "not a section"),
    ("agent.net_arch=[32]]", "not valid YAML"),
    ("env.landmarks=[a, [b]", "not valid YAML"),
)


def _train_cases() -> list[Bad]:
    cases = _type_cases()
    cases += [Bad(f"range-{o}", "train", p, train_args(o)) for o, p in _RANGE]
    cases += [Bad(f"unknown-{o}", "train", "unknown key", train_args(o)) for o in _UNKNOWN]
    cases += [Bad(f"syntax-{o}", "train", p, train_args(o)) for o, p in _SYNTAX]
    files = (
        ("config-missing", ("@IN/missing.yaml",), "missing.yaml"),
        ("config-folder", ("@IN",), "file not found"),
        ("config-yaml-syntax", ("@IN/broken.yaml",), "not valid YAML"),
        ("config-list", ("@IN/list.yaml",), "expected a mapping"),
        ("config-binary", ("@IN/binary.yaml",), "binary.yaml"),
        ("config-sci-notation-type", ("@IN/wrong_type.yaml",), "agent.learning_rate"),
        ("config-both-sources", ("@IN/both_sources.yaml",), "exactly one of data.manifest"),
        ("no-config", (), "give a config file"),
        ("resume-with-config", ("--resume", "@LM_RUN", LANDMARK_CONFIG), "drop CONFIG, --set"),
        ("resume-with-set", ("--resume", "@LM_RUN", "--set", "seed=1"), "drop CONFIG, --set"),
        ("resume-missing", ("--resume", "@ROOT/runs/nothing"), "nothing"),
        ("resume-a-file", ("--resume", "@USER/notes.txt"), "notes.txt"),
        ("resume-not-a-run", ("--resume", "@USER"), "not a medgym run"),
        ("unknown-flag", (LANDMARK_CONFIG, "--frobnicate"), "unrecognized arguments"),
        ("set-without-value", (LANDMARK_CONFIG, "--set"), "--set"),
        ("two-configs", (LANDMARK_CONFIG, LANDMARK_CONFIG), "unrecognized arguments"),
    )
    cases += [Bad(f"train-{name}", "train", p, argv) for name, argv, p in files]
    run_dirs = (
        ("run-dir-a-file", "@USER/notes.txt", "notes.txt"),
        ("run-dir-under-a-file", "@USER/notes.txt/run", "notes.txt"),
        ("run-dir-unwritable", "/sys/medgym_run", "/sys"),
    )
    cases += [Bad(f"train-{n}", "train", p, train_args(run_dir=d)) for n, d, p in run_dirs]
    cases.append(Bad("train-run-dir-user-folder", "train", "@USER", train_args(run_dir="@USER")))
    data = (
        ("manifest-second-val-constant", "@IN/bad_val.csv", "zero.nii.gz"),
        ("manifest-test-case-tiny", "@IN/bad_test.csv", "tiny.nii.gz"),
        ("manifest-missing-image", "@IN/missing_image.csv", "gone.nii.gz"),
        ("manifest-garbage-volume", "@IN/garbage_case.csv", "garbage.nii.gz"),
        ("manifest-not-csv", "@IN/binary.yaml", "binary.yaml"),
        ("manifest-empty", "@IN/empty.csv", "empty.csv"),
        ("manifest-missing", "@IN/missing.csv", "missing.csv"),
        ("manifest-is-a-folder", "@IN/a", "@IN/a"),
    )
    cases += [
        Bad(
            f"train-{n}",
            "train",
            p,
            (LANDMARK_CONFIG, *sets(*NO_PHANTOMS, f"data.manifest={m}"), "--run-dir", "@ROOT/runs/new"),
        )
        for n, m, p in data
    ]
    rigid = (
        ("rigid-obs-size-huge", "env.obs_size=1001", "memory"),
        ("rigid-obs-size-small", "env.obs_size=3", "env.obs_size"),
        ("rigid-steps-per-level", "env.translation_steps_mm=[1.0]", "env.translation_steps_mm"),
        ("rigid-rotation-steps", "env.rotation_steps_deg=[0, 0, 0]", "env.rotation_steps_deg"),
        ("rigid-contrast", "env.contrast=rainbow", "env.contrast"),
        ("rigid-pairing", "env.pairing=random", "env.pairing"),
        ("rigid-partial-fov", "env.partial_fov=1.5", "env.partial_fov"),
        ("rigid-variants", "env.variants_per_case=0", "env.variants_per_case"),
        ("rigid-motion", "env.variant_motion=[1, 2, 3]", "env.variant_motion"),
        ("rigid-unknown", "env.patch_size=25", "unknown key env.patch_size"),
        ("rigid-sdm-key", "sdm.k=3", "unknown key sdm"),
        ("rigid-search-refine-type", "search.refine=[1]", "search.refine"),
        ("rigid-lr-text", "agent.learning_rate=fast", "agent.learning_rate"),
    )
    cases += [
        Bad(f"train-{n}", "train", p, (RIGID_CONFIG, *sets(o), "--run-dir", "@ROOT/runs/new"))
        for n, o, p in rigid
    ]
    return cases


# ---------------------------------------------------------------------- evaluate.py
def _evaluate_cases() -> list[Bad]:
    lm, rg = "@LM_RUN", "@RIGID_RUN"
    table: list[tuple[str, tuple[str, ...], str] | tuple[str, tuple[str, ...], str, str]] = [
        # flags that do not apply to the run's task
        ("landmark-register", (lm, "--register", "@IN/zero.nii.gz"), "--register"),
        ("landmark-misalignments", (lm, "--misalignments", "10"), "--misalignments"),
        ("landmark-trials", (lm, "--trials", "3"), "--trials"),
        ("landmark-conditions", (lm, "--conditions", "mono"), "--conditions"),
        ("landmark-png", (lm, "--png", "1"), "--png"),
        ("landmark-refine", (lm, "--refine"), "--refine"),
        ("landmark-baseline-sitk", (lm, "--baseline", "sitk"), "'atlas' only"),
        ("landmark-baseline-elastix", (lm, "--baseline", "elastix"), "'atlas' only"),
        ("rigid-predict", (rg, "--predict", "@IN/phantom.nii.gz"), "--predict"),
        ("rigid-gif", (rg, "--gif"), "--gif"),
        ("rigid-atlases", (rg, "--atlases", "2"), "--atlases"),
        ("rigid-baseline-atlas", (rg, "--baseline", "atlas"), "--baseline atlas"),
        ("mixed-tasks", (lm, rg), "mix tasks"),
        ("two-rigid-runs", (rg, rg), "one at a time"),
        # modes that read only the given files
        ("predict-with-data", (lm, "--predict", "@IN/phantom.nii.gz", "--data", "@IN/x.csv"), "--data"),
        ("predict-with-split", (lm, "--predict", "@IN/phantom.nii.gz", "--split", "val"), "--split"),
        (
            "predict-with-baseline",
            (lm, "--predict", "@IN/phantom.nii.gz", "--baseline", "atlas"),
            "--baseline",
        ),
        ("predict-with-gif", (lm, "--predict", "@IN/phantom.nii.gz", "--gif"), "--gif"),
        ("predict-with-atlases", (lm, "--predict", "@IN/phantom.nii.gz", "--atlases", "2"), "--atlases"),
        ("register-with-trials", (rg, "--register", "@IN/a", "@IN/b", "--trials", "2"), "--trials"),
        ("register-with-split", (rg, "--register", "@IN/a", "@IN/b", "--split", "val"), "--split"),
        ("register-with-baseline", (rg, "--register", "@IN/a", "@IN/b", "--baseline", "sitk"), "--baseline"),
        ("register-with-png", (rg, "--register", "@IN/a", "@IN/b", "--png", "2"), "--png"),
        ("predict-two-runs", (lm, lm, "--predict", "@IN/phantom.nii.gz"), "exactly one run"),
        # numbers out of range
        ("rigid-trials-0", (rg, "--trials", "0"), "--trials"),
        ("rigid-trials-negative", (rg, "--trials", "-3"), "--trials"),
        ("rigid-png-negative", (rg, "--png", "-1"), "--png"),
        ("rigid-misalignment-200", (rg, "--misalignments", "200"), "--misalignments"),
        ("rigid-misalignment-negative", (rg, "--misalignments", "-5"), "--misalignments"),
        ("landmark-atlases-0", (lm, "--baseline", "atlas", "--atlases", "0"), "--atlases"),
        ("trials-text", (rg, "--trials", "abc"), "--trials"),
        # argparse
        ("split-choice", (lm, "--split", "holdout"), "--split"),
        ("conditions-choice", (rg, "--conditions", "sunny"), "--conditions"),
        ("baseline-choice", (lm, "--baseline", "magic"), "--baseline"),
        ("png-text", (rg, "--png", "many"), "--png"),
        ("atlases-text", (lm, "--atlases", "x"), "--atlases"),
        ("misalignments-text", (rg, "--misalignments", "far"), "--misalignments"),
        ("unknown-flag", (lm, "--fast"), "unrecognized arguments"),
        ("no-run", (), "runs"),
        ("predict-no-volume", (lm, "--predict"), "--predict"),
        # run folders
        ("run-missing", ("@ROOT/runs/nothing",), "nothing"),
        ("run-is-user-folder", ("@USER",), "not a medgym run"),
        ("run-is-a-file", ("@USER/notes.txt",), "notes.txt"),
        ("run-truncated-checkpoints", ("@IN/broken_run",), "best.pt"),
        # output folders, checked before the work
        ("landmark-out-a-file", (lm, "--out", "@USER/notes.txt"), "notes.txt"),
        ("landmark-out-under-a-file", (lm, "--out", "@USER/notes.txt/eval"), "notes.txt"),
        ("landmark-out-unwritable", (lm, "--out", "/sys/medgym_eval"), "/sys"),
        ("rigid-out-a-file", (rg, "--out", "@USER/notes.txt"), "notes.txt"),
        ("rigid-out-under-a-file", (rg, "--out", "@USER/notes.txt/eval"), "notes.txt"),
        ("rigid-out-unwritable", (rg, "--out", "/sys/medgym_eval"), "/sys"),
        (
            "predict-out-a-file",
            (lm, "--predict", "@IN/phantom.nii.gz", "--out", "@USER/notes.txt"),
            "notes.txt",
        ),
        ("predict-out-unwritable", (lm, "--predict", "@IN/phantom.nii.gz", "--out", "/sys/medgym_p"), "/sys"),
        (
            "predict-out-under-a-file",
            (lm, "--predict", "@IN/phantom.nii.gz", "--out", "@USER/notes.txt/p"),
            "notes.txt",
        ),
        (
            "register-out-a-file",
            (rg, "--register", "@IN/phantom4.nii.gz", "@IN/phantom4.nii.gz", "--out", "@USER/notes.txt"),
            "notes.txt",
        ),
        (
            "register-out-unwritable",
            (rg, "--register", "@IN/phantom4.nii.gz", "@IN/phantom4.nii.gz", "--out", "/sys/medgym_r"),
            "/sys",
        ),
        (
            "register-out-holds-results",
            (rg, "--register", "@IN/phantom4.nii.gz", "@IN/phantom4.nii.gz", "--out", "@USER/registered"),
            "transform.tfm",
        ),
        # --predict inputs
        ("predict-missing", (lm, "--predict", "@IN/missing.nii.gz", "--out", "@ROOT/out"), "missing.nii.gz"),
        ("predict-zero-volume", (lm, "--predict", "@IN/zero.nii.gz", "--out", "@ROOT/out"), "constant"),
        ("predict-tiny-volume", (lm, "--predict", "@IN/tiny.nii.gz", "--out", "@ROOT/out"), "too small"),
        (
            "predict-same-twice",
            (lm, "--predict", "@IN/phantom.nii.gz", "@IN/phantom.nii.gz", "--out", "@ROOT/out"),
            "given twice",
        ),
        ("predict-would-overwrite", (lm, "--predict", "@IN/a/ct.nii.gz", "--out", "@USER"), "ct.fcsv"),
        ("predict-garbage", (lm, "--predict", "@IN/garbage.nii.gz", "--out", "@ROOT/out"), "garbage.nii.gz"),
        (
            "predict-folder-without-scans",
            (lm, "--predict", "@USER/registered", "--out", "@ROOT/out"),
            "no volume file",
        ),
        ("predict-workers-zero", (lm, "--predict", "@IN/phantom.nii.gz", "--workers", "0"), "--workers"),
        ("workers-without-predict", (lm, "--workers", "2"), "--predict only"),
        ("predict-text-file", (lm, "--predict", "@USER/notes.txt", "--out", "@ROOT/out"), "notes.txt"),
        (
            "predict-second-bad",
            (lm, "--predict", "@IN/phantom.nii.gz", "@IN/zero.nii.gz", "--out", "@ROOT/out"),
            "zero.nii.gz",
        ),
        # --register inputs
        ("register-one-file", (rg, "--register", "@IN/phantom4.nii.gz"), "expected FIXED MOVING"),
        (
            "register-three-files",
            (rg, "--register", "@IN/phantom4.nii.gz", "@IN/phantom4.nii.gz", "@IN/phantom4.nii.gz"),
            "expected FIXED MOVING",
        ),
        (
            "register-zero-fixed",
            (rg, "--register", "@IN/zero.nii.gz", "@IN/phantom4.nii.gz", "--out", "@ROOT/out"),
            "constant",
        ),
        (
            "register-zero-moving",
            (rg, "--register", "@IN/phantom4.nii.gz", "@IN/zero.nii.gz", "--out", "@ROOT/out"),
            "zero.nii.gz",
        ),
        (
            "register-tiny-fixed",
            (rg, "--register", "@IN/tiny.nii.gz", "@IN/phantom4.nii.gz", "--out", "@ROOT/out"),
            "too small",
        ),
        (
            "register-tiny-moving",
            (rg, "--register", "@IN/phantom4.nii.gz", "@IN/tiny.nii.gz", "--out", "@ROOT/out"),
            "tiny.nii.gz",
        ),
        (
            "register-missing",
            (rg, "--register", "@IN/phantom4.nii.gz", "@IN/missing.nii.gz", "--out", "@ROOT/out"),
            "missing.nii.gz",
        ),
        (
            "register-garbage",
            (rg, "--register", "@IN/garbage.nii.gz", "@IN/phantom4.nii.gz", "--out", "@ROOT/out"),
            "garbage.nii.gz",
        ),
        # evaluation data
        ("landmark-data-missing", (lm, "--data", "@IN/missing.csv", "--out", "@ROOT/out"), "missing.csv"),
        (
            "landmark-data-empty-split",
            (lm, "--data", "@IN/train_only.csv", "--out", "@ROOT/out"),
            "split 'test'",
        ),
        ("rigid-data-missing", (rg, "--data", "@IN/missing.csv", "--out", "@ROOT/out"), "missing.csv"),
    ]
    cases = []
    for row in table:
        name, argv, phrase, *owner = row
        cases.append(Bad(f"evaluate-{name}", "evaluate", phrase, argv, owner=owner[0] if owner else None))
    return cases


# ---------------------------------------------------------------------- python -m envs.phantom
def _phantom_cases() -> list[Bad]:
    out = ("--out", "@ROOT/phantoms_new")
    table = (
        ("n-zero", (*out, "--n", "0"), "--n"),
        ("n-negative", (*out, "--n", "-4"), "--n"),
        ("n-text", (*out, "--n", "many"), "--n"),
        ("n-float", (*out, "--n", "2.5"), "--n"),
        ("n-missing", out, "--n"),
        ("out-missing", ("--n", "2"), "--out"),
        ("seed-negative", (*out, "--n", "1", "--seed", "-1"), "--seed"),
        ("seed-text", (*out, "--n", "1", "--seed", "x"), "--seed"),
        ("spacing-zero", (*out, "--n", "1", "--spacing", "0"), "--spacing"),
        ("spacing-negative", (*out, "--n", "1", "--spacing", "-2"), "--spacing"),
        ("spacing-text", (*out, "--n", "1", "--spacing", "fine"), "--spacing"),
        ("val-fraction-big", (*out, "--n", "4", "--val-fraction", "1.5"), "--val-fraction"),
        ("test-fraction-negative", (*out, "--n", "4", "--test-fraction", "-0.1"), "--test-fraction"),
        ("fractions-sum", (*out, "--n", "4", "--val-fraction", "0.5", "--test-fraction", "0.5"), "sum"),
        ("out-a-file", ("--out", "@USER/notes.txt", "--n", "1"), "notes.txt"),
        ("out-under-a-file", ("--out", "@USER/notes.txt/ph", "--n", "1"), "notes.txt"),
        ("out-unwritable", ("--out", "/sys/medgym_phantoms", "--n", "1"), "/sys"),
        ("unknown-flag", (*out, "--n", "1", "--colour"), "unrecognized arguments"),
    )
    return [Bad(f"phantom-{n}", "phantom", p, argv) for n, argv, p in table]


# ---------------------------------------------------------------------- API and envs
def _api_cases() -> list[Bad]:
    from agents.experiments import ConfigError, load_experiment, prediction_stems
    from envs import io
    from envs.core import Volume, build_pyramid, check_image
    from envs.tasks import StatisticalDeformationModel

    def vol(shape: tuple[int, int, int], value: float | None = None, spacing: float = 2.0) -> Any:
        import numpy as np

        voxels = (
            np.full(shape, value, np.float32)
            if value is not None
            else np.random.default_rng(0).normal(size=shape)
        )
        return Volume(voxels.astype(np.float32), spacing_xyz_mm=(spacing,) * 3)

    def load(path: str) -> Callable[[dict[str, Any]], Any]:
        return lambda ctx: StatisticalDeformationModel.load(ctx["IN"] / path)

    def read(path: str) -> Callable[[dict[str, Any]], Any]:
        return lambda ctx: io.read_volume(ctx["IN"] / path)

    def read_points(path: str) -> Callable[[dict[str, Any]], Any]:
        return lambda ctx: io.read_landmarks(ctx["IN"] / path)

    cases = [
        Bad("sdm-missing", "api", "nothing.npz", call=load("nothing.npz"), error=FileNotFoundError),
        Bad("sdm-empty", "api", "empty.npz", call=load("empty.npz")),
        Bad("sdm-garbage", "api", "garbage.npz", call=load("garbage.npz")),
        Bad("sdm-truncated", "api", "truncated.npz", call=load("truncated.npz")),
        Bad("sdm-no-header", "api", "noheader.npz", call=load("noheader.npz")),
        Bad("sdm-wrong-format", "api", "wrongformat.npz", call=load("wrongformat.npz")),
        Bad("sdm-bad-shapes", "api", "badshapes.npz", call=load("badshapes.npz")),
        Bad("sdm-nan", "api", "nan.npz", call=load("nan.npz")),
        Bad("sdm-text", "api", "notes.npz", call=load("notes.npz")),
        Bad(
            "image-constant",
            "api",
            "constant",
            call=lambda ctx: check_image(vol((20, 20, 20), 0.0), "x", (8.0, 4.0)),
        ),
        Bad(
            "image-constant-air",
            "api",
            "-1000",
            call=lambda ctx: check_image(vol((20, 20, 20), -1000.0), "x", (4.0,)),
        ),
        Bad(
            "image-6-cubed",
            "api",
            "too small",
            call=lambda ctx: check_image(vol((6, 6, 6)), "x", (8.0, 4.0), 25),
        ),
        Bad(
            "image-flat-slab",
            "api",
            "too small",
            call=lambda ctx: check_image(vol((1, 64, 64)), "x", (8.0, 4.0)),
        ),
        Bad(
            "image-thin-for-patch",
            "api",
            "cube",
            call=lambda ctx: check_image(vol((8, 64, 64), spacing=1.0), "x", (4.0, 2.0), 25),
        ),
        Bad(
            "pyramid-levels-up",
            "api",
            "coarse to fine",
            call=lambda ctx: build_pyramid(vol((20, 20, 20)), (2.0, 4.0)),
        ),
        Bad(
            "pyramid-levels-zero",
            "api",
            "positive",
            call=lambda ctx: build_pyramid(vol((20, 20, 20)), (0.0,)),
        ),
        Bad(
            "register-constant-fixed",
            "api",
            "constant",
            call=lambda ctx: ctx["register"](vol((40, 40, 40), 0.0, 4.0), None),
        ),
        Bad(
            "register-6-cubed-fixed",
            "api",
            "too small",
            call=lambda ctx: ctx["register"](vol((6, 6, 6), None, 2.0), None),
        ),
        Bad(
            "register-constant-moving",
            "api",
            "the moving volume",
            call=lambda ctx: ctx["register"](None, vol((40, 40, 40), 5.0, 4.0)),
        ),
        Bad(
            "register-6-cubed-moving",
            "api",
            "the moving volume",
            call=lambda ctx: ctx["register"](None, vol((6, 6, 6), None, 4.0)),
        ),
        Bad("register-2d-image", "api", "3-D", call=lambda ctx: ctx["register_2d"]()),
        Bad(
            "predict-names-twice",
            "api",
            "given twice",
            call=lambda ctx: prediction_stems([Path("a/ct.nii.gz"), Path("a/../a/ct.nii.gz")]),
        ),
        Bad(
            "config-number-text",
            "api",
            "agent.learning_rate",
            error=ConfigError,
            call=lambda ctx: load_experiment(LANDMARK_CONFIG, ["agent.learning_rate=three"]),
        ),
        Bad(
            "config-yaml-error",
            "api",
            "not valid YAML",
            error=ConfigError,
            call=lambda ctx: load_experiment(LANDMARK_CONFIG, ["env.levels_mm=[1"]),
        ),
        Bad(
            "config-infinite",
            "api",
            "finite",
            error=ConfigError,
            call=lambda ctx: load_experiment(LANDMARK_CONFIG, ["train.max_minutes=.inf"]),
        ),
        Bad(
            "config-memory",
            "api",
            "memory",
            error=ConfigError,
            call=lambda ctx: load_experiment(LANDMARK_CONFIG, ["env.patch_size=1501"]),
        ),
        Bad(
            "config-missing-file",
            "api",
            "nope.yaml",
            error=FileNotFoundError,
            call=lambda ctx: load_experiment(ctx["IN"] / "nope.yaml"),
        ),
        Bad("read-missing", "api", "missing.nii.gz", call=read("missing.nii.gz"), error=FileNotFoundError),
        Bad("read-garbage-nifti", "api", "garbage.nii.gz", call=read("garbage.nii.gz")),
        Bad("read-empty-nifti", "api", "empty.nii.gz", call=read("empty.nii.gz")),
        Bad(
            "read-truncated-nifti",
            "api",
            "truncated.nii.gz",
            call=read("truncated.nii.gz"),
        ),
        Bad("read-nan-nifti", "api", "nan.nii.gz", call=read("nan.nii.gz")),
        Bad("read-text-nrrd", "api", "text.nrrd", call=read("text.nrrd")),
        Bad(
            "read-unknown-suffix",
            "api",
            "notes.txt",
            call=lambda ctx: io.read_volume(ctx["USER"] / "notes.txt"),
        ),
        Bad("landmarks-empty-fcsv", "api", "empty.fcsv", call=read_points("empty.fcsv")),
        Bad(
            "landmarks-garbage-json",
            "api",
            "garbage.mrk.json",
            call=read_points("garbage.mrk.json"),
        ),
        Bad(
            "landmarks-missing",
            "api",
            "missing.fcsv",
            call=read_points("missing.fcsv"),
            error=FileNotFoundError,
        ),
        Bad("volume-2d", "api", "3-D", call=lambda ctx: Volume(__import__("numpy").zeros((4, 4)))),
        Bad(
            "volume-zero-spacing",
            "api",
            "spacing",
            call=lambda ctx: Volume(__import__("numpy").zeros((4, 4, 4)), spacing_xyz_mm=(0, 1, 1)),
        ),
        Bad(
            "volume-nan-spacing",
            "api",
            "spacing",
            call=lambda ctx: Volume(
                __import__("numpy").zeros((4, 4, 4)), spacing_xyz_mm=(float("nan"), 1, 1)
            ),
        ),
    ]
    return cases


def _env_cases() -> list[Bad]:
    import numpy as np

    def step(env: str, action: Any) -> Callable[[dict[str, Any]], Any]:
        return lambda ctx: ctx[env]().step(action)

    cases = []
    bad_actions = (
        ("minus-1", -1),
        ("six", 6),
        ("float-2.7", 2.7),
        ("text", "a"),
        ("none", None),
        ("list", [1]),
        ("array-2", np.array([1, 2])),
        ("big", 10**9),
        ("nan", float("nan")),
        ("numpy-minus-1", np.int64(-1)),
    )
    for name, action in bad_actions:
        cases.append(
            Bad(
                f"env-landmark-step-{name}",
                "env",
                "integer action in 0..5",
                call=step("landmark_env", action),
            )
        )
    rigid_actions = (bad_actions[0], *bad_actions[2:6], ("twelve", 12), ("numpy-float", np.float64(3.5)))
    for name, action in rigid_actions:
        cases.append(
            Bad(f"env-rigid-step-{name}", "env", "integer action in 0..11", call=step("rigid_env", action))
        )
    kwargs = (
        ("patch-size-even", {"patch_size": 24}, "patch_size"),
        ("patch-size-text", {"patch_size": "25"}, "patch_size"),
        ("levels-up", {"levels_mm": (2.0, 4.0)}, "levels_mm"),
        ("levels-empty", {"levels_mm": ()}, "levels_mm"),
        ("preset", {"preset": "xray"}, "preset"),
        ("render-mode", {"render_mode": "depth"}, "render_mode"),
        ("schedule", {"schedule": "fast"}, "schedule"),
        ("landmark-unknown", {"landmarks": ["nose_tip"]}, "nose_tip"),
        ("split-unknown", {"split": "holdout"}, "holdout"),
        ("frames-zero", {"frames": 0}, "frames"),
    )
    for name, extra, phrase in kwargs:
        cases.append(
            Bad(
                f"env-landmark-make-{name}",
                "env",
                phrase,
                call=lambda ctx, e=extra: ctx["make_landmark"](**e),
            )
        )
    cases.append(
        Bad(
            "env-landmark-step-before-reset",
            "env",
            "before reset",
            error=RuntimeError,
            call=lambda ctx: ctx["fresh_landmark"]().unwrapped.step(0),
        )
    )
    cases.append(
        Bad(
            "env-landmark-reset-option",
            "env",
            "colour",
            call=lambda ctx: ctx["landmark_env"]().reset(options={"colour": 1}),
        )
    )
    return cases


CASES: list[Bad] = [*_train_cases(), *_evaluate_cases(), *_phantom_cases(), *_api_cases(), *_env_cases()]
