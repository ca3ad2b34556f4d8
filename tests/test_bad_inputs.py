"""Bad input through train.py, evaluate.py, python -m envs.phantom, the Python API and the envs.

The table is tests/bad_inputs_cases.py. Every case asserts the exit status (2) or the exception
type, that the message is ONE line naming the field or file, and that nothing under the test's
root folder (phantom files, two trained runs, the user's folder, the input files, the working
directory) changed. One tiny landmark run and one tiny rigid run are trained once per module.
"""

from __future__ import annotations

import contextlib
import io as text_io
import json
import os
import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bad_inputs_cases import CASES, RIGID_CONFIG, Bad, sets, train_args

ROOT = Path(__file__).resolve().parent.parent
RIGID_TINY = (
    "data.phantoms.n_train=2",
    "data.phantoms.n_val=1",
    "data.phantoms.n_test=1",
    "data.phantoms.spacing_mm=4.0",
    "data.phantoms.cache_dir=@CACHE",
    "env.levels_mm=[8.0, 4.0]",
    "env.obs_size=13",
    "env.translation_steps_mm=[6.0, 1.0]",
    "env.rotation_steps_deg=[6.0, 1.0]",
    "env.variants_per_case=1",
    "env.n_envs=1",
    "agent.channels=[4, 8]",
    "agent.kernel_sizes=[5, 3]",
    "agent.strides=[2, 2]",
    "agent.features_dim=16",
    "agent.net_arch=[16]",
    "agent.batch_size=16",
    "agent.buffer_size=200",
    "agent.learning_starts=50",
    "train.progress_bar=false",
    "train.eval_cases=1",
    "train.total_timesteps=64",
    "train.eval_every_steps=64",
    "train.checkpoint_every_steps=64",
)


def run_script(target: str, argv: list[str]) -> tuple[int, str, str]:
    """Run a script (a path) or a module (``-m name``) in-process; returns status, stdout, stderr."""
    saved = sys.argv
    out, err = text_io.StringIO(), text_io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if target.startswith("-m "):
                from envs.phantom.cli import main as phantom_main

                code = phantom_main(argv)
            else:
                sys.argv = [target, *argv]
                try:
                    runpy.run_path(str(ROOT / target), run_name="__main__")
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else 1
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def _expand(text: str, ctx: dict[str, Any]) -> str:
    for name in ("LM_RUN", "RIGID_RUN", "CACHE", "USER", "IN", "ROOT"):
        text = text.replace(f"@{name}", str(ctx[name]))
    return text


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: (size, mtime in ns); folders size -1."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(folder))] = (-1 if path.is_dir() else info.st_size, info.st_mtime_ns)
    return found


def _write_inputs(folder: Path, phantoms: Path, rigid_phantoms: Path, lm_run: Path) -> None:
    from envs import io
    from envs.core import Volume
    from envs.tasks import StatisticalDeformationModel

    folder.mkdir()
    good = phantoms / "phantom_test_000.nii.gz"
    shutil.copy(good, folder / "phantom.nii.gz")
    shutil.copy(rigid_phantoms / "phantom_test_000.nii.gz", folder / "phantom4.nii.gz")
    for sub in ("a", "b"):
        (folder / sub).mkdir()
        shutil.copy(good, folder / sub / "ct.nii.gz")
    io.write_volume(
        Volume(np.zeros((24, 24, 24), np.int16), spacing_xyz_mm=(4.0,) * 3), folder / "zero.nii.gz"
    )
    rng = np.random.default_rng(0)
    tiny = rng.integers(-1000, 1000, (6, 6, 6)).astype(np.int16)
    io.write_volume(Volume(tiny, spacing_xyz_mm=(2.0,) * 3), folder / "tiny.nii.gz")
    nan = rng.normal(size=(8, 8, 8)).astype(np.float32)
    nan[2, 2, 2] = np.nan
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(nan), str(folder / "nan.nii.gz"))
    (folder / "garbage.nii.gz").write_bytes(rng.integers(0, 255, 3000).astype(np.uint8).tobytes())
    (folder / "empty.nii.gz").write_bytes(b"")
    (folder / "truncated.nii.gz").write_bytes(good.read_bytes()[:500])
    (folder / "text.nrrd").write_text("this is not an nrrd header\n")
    (folder / "empty.fcsv").write_text("")
    (folder / "garbage.mrk.json").write_text("{not json")
    (folder / "broken.yaml").write_text("task: landmark\nenv: {patch_size: 25\n")
    (folder / "list.yaml").write_text("- 1\n- 2\n")
    (folder / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (folder / "wrong_type.yaml").write_text("agent:\n  learning_rate: quick\n")
    (folder / "both_sources.yaml").write_text("data:\n  manifest: x.csv\n  phantoms: {n_train: 2}\n")
    (folder / "empty.csv").write_text("")
    header = "image,landmarks,split\n"

    def row(name: str, split: str, image: Path | None = None) -> str:
        return f"{image or phantoms / (name + '.nii.gz')},{phantoms / (name + '.fcsv')},{split}\n"

    base = (
        row("phantom_train_000", "train") + row("phantom_train_001", "train") + row("phantom_val_000", "val")
    )
    (folder / "bad_val.csv").write_text(
        header + base + row("phantom_test_000", "val", folder / "zero.nii.gz")
    )
    (folder / "bad_test.csv").write_text(
        header + base + row("phantom_test_000", "test", folder / "tiny.nii.gz")
    )
    (folder / "missing_image.csv").write_text(
        header + base + row("phantom_test_000", "test", folder / "gone.nii.gz")
    )
    (folder / "garbage_case.csv").write_text(
        header + base + row("phantom_test_000", "test", folder / "garbage.nii.gz")
    )
    (folder / "train_only.csv").write_text(header + row("phantom_train_000", "train"))
    # SDM files: a real small model, then broken copies
    field = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    model = StatisticalDeformationModel(
        mean=field,
        modes=np.stack([field, field]),
        std_mm=np.ones(2),
        explained_variance_ratio=np.array([0.6, 0.4]),
        origin_lps_mm=np.zeros(3),
        spacing_mm=8.0,
        n_fields=4,
        source="test",
    )
    model.save(folder / "good.npz")
    data = (folder / "good.npz").read_bytes()
    (folder / "empty.npz").write_bytes(b"")
    (folder / "garbage.npz").write_bytes(rng.integers(0, 255, 2000).astype(np.uint8).tobytes())
    (folder / "truncated.npz").write_bytes(data[: len(data) // 2])
    (folder / "notes.npz").write_text("hello")
    arrays = dict(np.load(folder / "good.npz"))
    np.savez(folder / "noheader.npz", **{k: v for k, v in arrays.items() if k != "header"})
    np.savez(folder / "wrongformat.npz", **{**arrays, "header": np.array(json.dumps({"format": "other"}))})
    np.savez(folder / "badshapes.npz", **{**arrays, "modes": np.zeros((2, 3, 3, 3, 3), np.float32)})
    mean = arrays["mean"].copy()
    mean[0, 0, 0, 0] = np.nan
    np.savez(folder / "nan.npz", **{**arrays, "mean": mean})
    # a run whose checkpoints were cut short
    broken = folder / "broken_run"
    shutil.copytree(lm_run, broken)
    for checkpoint in (broken / "checkpoints").glob("*.pt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The test's world: phantoms, two tiny trained runs, a user folder and prepared bad inputs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    context: dict[str, Any] = {
        "ROOT": root,
        "CACHE": root / "phantoms",
        "USER": root / "user",
        "IN": root / "in",
    }
    context["LM_RUN"], context["RIGID_RUN"] = root / "runs" / "landmark", root / "runs" / "rigid"
    lm_args = [_expand(a, context) for a in train_args(run_dir="@LM_RUN")]
    code, _, err = run_script("train.py", lm_args)
    assert code == 0, err
    rigid_args = [RIGID_CONFIG, *sets(*RIGID_TINY), "--run-dir", "@RIGID_RUN"]
    code, _, err = run_script("train.py", [_expand(a, context) for a in rigid_args])
    assert code == 0, err
    user = context["USER"]
    user.mkdir()
    (user / "notes.txt").write_text("the user's notes\n")
    (user / "ct.fcsv").write_text("# the user's landmarks\n")
    (user / "ct.mrk.json").write_text("{}\n")
    (user / "registered").mkdir()
    (user / "registered" / "transform.tfm").write_text("#Insight Transform File V1.0\n")
    phantoms = {p.name.split("_")[-1]: p for p in context["CACHE"].iterdir() if p.is_dir()}
    lm_phantoms = next(p for p in context["CACHE"].iterdir() if "_2mm" in p.name)
    rigid_phantoms = next(p for p in context["CACHE"].iterdir() if "_4mm" in p.name)
    del phantoms
    _write_inputs(context["IN"], lm_phantoms, rigid_phantoms, context["LM_RUN"])
    (root / "cwd").mkdir()
    _api_fixtures(context, lm_phantoms, rigid_phantoms)
    return context


def _api_fixtures(context: dict[str, Any], lm_phantoms: Path, rigid_phantoms: Path) -> None:
    import gymnasium as gym
    import SimpleITK as sitk

    import envs
    from agents.experiments import make_alignment_world, open_run
    from agents.search import register
    from envs import io
    from envs.data import Dataset
    from envs.tasks import RigidRegistrationEnv

    lm_data = Dataset.from_manifest(lm_phantoms / "manifest.csv")
    rigid_data = Dataset.from_manifest(rigid_phantoms / "manifest.csv")
    rigid_run = open_run(context["RIGID_RUN"])
    world = make_alignment_world(rigid_run.experiment, rigid_data, "train", training=False)
    good = io.read_volume(rigid_phantoms / "phantom_test_000.nii.gz")

    def make_landmark(**kwargs: Any) -> Any:
        options = {"dataset": lm_data, "patch_size": 15, "levels_mm": (8.0, 4.0), **kwargs}
        return gym.make(envs.LANDMARK_ENV_ID, **options)

    landmark = make_landmark()
    landmark.reset(seed=0)
    rigid = RigidRegistrationEnv(world)
    rigid.reset(seed=0)

    def policy(*args: Any) -> Any:
        raise AssertionError("the volumes must be refused before the policy runs")

    context.update(
        make_landmark=make_landmark,
        landmark_env=lambda: landmark,
        fresh_landmark=lambda: make_landmark(),
        rigid_env=lambda: rigid,
        register=lambda fixed, moving: register(fixed or good, moving or good, policy, world),
        register_2d=lambda: register(sitk.Image(20, 20, sitk.sitkFloat32), good, policy, world),
    )


def _one_line(text: str) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {lines[:4]}"
    assert "Traceback" not in lines[0]
    return lines[0]


_PREFIX = {
    "train": "train.py: error: ",
    "evaluate": "evaluate.py: error: ",
    "phantom": "python -m envs.phantom: error: ",
}
_TARGET = {"train": "train.py", "evaluate": "evaluate.py", "phantom": "-m envs.phantom"}


def _params() -> list[Any]:
    params = []
    for case in CASES:
        marks = (
            [pytest.mark.xfail(strict=False, reason=f"owned by helper {case.owner}")] if case.owner else []
        )
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def test_the_table_is_long_enough() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 250


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_refused_in_one_line_and_changes_nothing(
    case: Bad, ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ctx["ROOT"] / "cwd")
    before = snapshot(ctx["ROOT"])
    phrase = _expand(case.phrase, ctx)
    if case.kind in _TARGET:
        code, _, err = run_script(_TARGET[case.kind], [_expand(arg, ctx) for arg in case.argv])
        line = _one_line(err)
        assert code == 2, line
        assert line.startswith(_PREFIX[case.kind]), line
        assert phrase in line, line
    else:
        assert case.call is not None
        with pytest.raises(case.error) as caught:
            case.call(ctx)
        message = str(caught.value.args[0]) if isinstance(caught.value, KeyError) else str(caught.value)
        line = _one_line(message)
        assert phrase in line, line
    assert snapshot(ctx["ROOT"]) == before, "a refused input changed files"


# ---------------------------------------------------------------------- the examples, positively
def test_numbers_in_any_yaml_spelling_are_numbers(tmp_path: Path) -> None:
    from agents.experiments import load_experiment

    file = tmp_path / "c.yaml"
    file.write_text("agent:\n  learning_rate: 1e-4\ntrain:\n  total_timesteps: 2e5\n")
    experiment = load_experiment(file, ["agent.gamma=9E-1", "train.max_minutes=1_0"])
    assert experiment.agent.learning_rate == pytest.approx(1e-4)
    assert experiment.train.total_timesteps == 200_000
    assert experiment.agent.gamma == pytest.approx(0.9)
    assert experiment.train.max_minutes == 10.0
    assert load_experiment(None, ["agent.learning_rate=3e-4"]).agent.learning_rate == pytest.approx(3e-4)


def test_a_manifest_override_replaces_the_phantoms_of_a_phantom_config() -> None:
    from agents.experiments import load_experiment

    experiment = load_experiment(
        ROOT / "configs" / "landmark_phantom.yaml", ["data.manifest=my/manifest.csv"]
    )
    assert experiment.data.manifest == "my/manifest.csv"
    assert experiment.data.phantoms is None


def test_predict_keeps_same_named_inputs_apart(ctx: dict[str, Any]) -> None:
    from agents.experiments import prediction_stems

    assert prediction_stems([Path("x/a/ct.nii.gz"), Path("x/b/ct.nii.gz")]) == ["a/ct", "b/ct"]
    assert prediction_stems([Path("x/a/ct.nii.gz"), Path("x/b/lung.nrrd")]) == ["ct", "lung"]
    out = ctx["ROOT"] / "predictions"
    argv = [
        str(ctx["LM_RUN"]),
        "--predict",
        str(ctx["IN"] / "a" / "ct.nii.gz"),
        str(ctx["IN"] / "b" / "ct.nii.gz"),
    ]
    code, printed, err = run_script("evaluate.py", [*argv, "--out", str(out)])
    assert code == 0, err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "predictions.csv" in written  # one row per scan and landmark, found or not
    assert set(written) <= {"a/ct.fcsv", "a/ct.mrk.json", "b/ct.fcsv", "b/ct.mrk.json", "predictions.csv"}
    assert f"wrote {len(written)} " in printed
    shutil.rmtree(out, ignore_errors=True)


def test_step_still_takes_numpy_and_python_integers(ctx: dict[str, Any]) -> None:
    env = ctx["landmark_env"]()
    for action in (0, np.int64(1), np.int32(2), 3):
        observation, reward, *_ = env.step(action)
        assert env.observation_space.contains(observation)
        assert -1.0 <= reward <= 1.0
    rigid = ctx["rigid_env"]()
    for action in (0, np.int64(11), np.array(4)):
        observation, reward, *_ = rigid.step(action)
        assert rigid.observation_space.contains(observation)
        assert np.isfinite(reward)


def test_unwritable_probe_leaves_no_file(tmp_path: Path) -> None:
    from envs.io import check_output_folder

    check_output_folder(tmp_path / "new" / "deeper")
    assert os.listdir(tmp_path) == []
