"""Layer 9: experiments end to end, from a config to a run folder to metrics.

The map:

- :mod:`~agents.experiments.config`: typed experiment configs (a docstring per field);
  :mod:`~agents.experiments.loading`: YAML and ``--set`` overrides into them, and back.
- :mod:`~agents.experiments.runs`: run folders (config, meta, state, checkpoints) and resuming.
- :mod:`~agents.experiments.data`: datasets and worlds from a config, for every task.
- :mod:`~agents.experiments.validation`: what a validation measures and which score is better;
  :mod:`~agents.experiments.monitor`: the SB3-style training callbacks that run it (best policy,
  early stop, checkpoints, time limit).
- :mod:`~agents.experiments.landmark`, :mod:`~agents.experiments.registration`: train and evaluate
  per task (``train.py`` / ``evaluate.py`` dispatch there); :mod:`~agents.experiments.registration_eval`:
  the registration evaluation.
- :mod:`~agents.experiments.custom_env`: ``task: custom`` (any Gymnasium env, by id or entry point,
  wrapped): its config and env factory; :mod:`~agents.experiments.custom`: its training and evaluation.
- :mod:`~agents.experiments.ensemble`: several runs searched as one agent (``evaluate.py --ensemble``).
- :mod:`~agents.experiments.metrics`: error summaries, success rates, Dice;
  :mod:`~agents.experiments.reports`: CSV / Markdown tables, plots, GIF.
"""

from agents.experiments.config import (
    TASKS,
    AtlasFiles,
    ConfigError,
    DataConfig,
    EnvConfig,
    Experiment,
    LandmarkExperiment,
    PhantomDataConfig,
    RigidEnvConfig,
    RigidExperiment,
    SdmConfig,
    SdmEnvConfig,
    SdmExperiment,
    TrainConfig,
)
from agents.experiments.custom import (
    custom_score,
    episode_metrics,
    evaluate_custom_runs,
    run_episodes,
    train_custom,
)
from agents.experiments.custom_env import (
    CustomEnvConfig,
    CustomExperiment,
    EnvFactory,
    EvaluateConfig,
    WrapperConfig,
    check_spaces,
    load_object,
)
from agents.experiments.data import (
    SdmBundle,
    check_cases,
    evaluation_dataset,
    make_alignment_world,
    make_world,
    prepare_dataset,
    prepare_sdm,
    validation_split,
)
from agents.experiments.dispatch import train_experiment
from agents.experiments.ensemble import ensemble_of, load_policies
from agents.experiments.landmark import evaluate_landmark_runs, train_landmark
from agents.experiments.landmark_eval import evaluate_run
from agents.experiments.loading import (
    apply_overrides,
    experiment_from_mapping,
    from_mapping,
    load_experiment,
    to_mapping,
)
from agents.experiments.metrics import (
    CONFIDENCE_THRESHOLDS,
    MISS_MM,
    SUCCESS_MM,
    WITHIN_MM,
    PairOutcome,
    auroc,
    compute_metrics,
    metrics_from_outcomes,
    metrics_from_rows,
    row_present,
    sdm_dice,
    summarise_errors,
    summarise_runs,
)
from agents.experiments.monitor import (
    CheckpointCallback,
    EarlyStopping,
    SaveBestPolicy,
    StopAfterMinutes,
    ValidationCallback,
    training_callbacks,
    write_summary,
)
from agents.experiments.predict import predict
from agents.experiments.registration import (
    evaluate_registration_run,
    register_files,
    train_registration,
)
from agents.experiments.registration_eval import (
    CONDITIONS,
    RIGID_BASELINES,
    agent_outcome,
    evaluate_rigid,
    evaluate_sdm,
    outcome_of,
    rigid_baseline_outcome,
    rigid_pairs,
)
from agents.experiments.reports import (
    landmark_markdown,
    markdown_table,
    overlay_png,
    plot_errors,
    plot_success,
    plot_trajectories,
    prediction_stems,
    run_output_names,
    volume_stem,
    write_csv,
    write_gif,
)
from agents.experiments.runs import (
    Run,
    check_run_dir,
    create_run,
    json_text,
    new_run_or_nothing,
    open_run,
    package_versions,
    resume_model,
    resume_point,
)
from agents.experiments.validation import (
    alignment_score,
    evaluation_offsets,
    landmark_score,
    rigid_scale,
    validate,
    validate_alignment,
    validation_starts,
)

__all__ = [
    "CONDITIONS",
    "CONFIDENCE_THRESHOLDS",
    "MISS_MM",
    "RIGID_BASELINES",
    "SUCCESS_MM",
    "TASKS",
    "WITHIN_MM",
    "AtlasFiles",
    "CheckpointCallback",
    "ConfigError",
    "CustomEnvConfig",
    "CustomExperiment",
    "DataConfig",
    "EarlyStopping",
    "EnvConfig",
    "EnvFactory",
    "EvaluateConfig",
    "Experiment",
    "LandmarkExperiment",
    "PairOutcome",
    "PhantomDataConfig",
    "RigidEnvConfig",
    "RigidExperiment",
    "Run",
    "SaveBestPolicy",
    "SdmBundle",
    "SdmConfig",
    "SdmEnvConfig",
    "SdmExperiment",
    "StopAfterMinutes",
    "TrainConfig",
    "ValidationCallback",
    "WrapperConfig",
    "agent_outcome",
    "alignment_score",
    "apply_overrides",
    "auroc",
    "check_cases",
    "check_run_dir",
    "check_spaces",
    "compute_metrics",
    "create_run",
    "custom_score",
    "ensemble_of",
    "episode_metrics",
    "evaluate_custom_runs",
    "evaluate_landmark_runs",
    "evaluate_registration_run",
    "evaluate_rigid",
    "evaluate_run",
    "evaluate_sdm",
    "evaluation_dataset",
    "evaluation_offsets",
    "experiment_from_mapping",
    "from_mapping",
    "json_text",
    "landmark_markdown",
    "landmark_score",
    "load_experiment",
    "load_object",
    "load_policies",
    "make_alignment_world",
    "make_world",
    "markdown_table",
    "metrics_from_outcomes",
    "metrics_from_rows",
    "new_run_or_nothing",
    "open_run",
    "outcome_of",
    "overlay_png",
    "package_versions",
    "plot_errors",
    "plot_success",
    "plot_trajectories",
    "predict",
    "prediction_stems",
    "prepare_dataset",
    "prepare_sdm",
    "register_files",
    "resume_model",
    "resume_point",
    "rigid_baseline_outcome",
    "rigid_pairs",
    "rigid_scale",
    "row_present",
    "run_episodes",
    "run_output_names",
    "sdm_dice",
    "summarise_errors",
    "summarise_runs",
    "to_mapping",
    "train_custom",
    "train_experiment",
    "train_landmark",
    "train_registration",
    "training_callbacks",
    "validate",
    "validate_alignment",
    "validation_split",
    "validation_starts",
    "volume_stem",
    "write_csv",
    "write_gif",
    "write_summary",
]
