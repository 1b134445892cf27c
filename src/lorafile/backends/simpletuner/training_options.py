"""The recipe's loss, noise and timestep options <-> SimpleTuner's arguments, both directions.

SimpleTuner's names (checked against reference/simpletuner_options.json): `loss_type`,
`huber_schedule`, `huber_c` (its formulas are kohya's), `input_perturbation` (kohya's
`ip_noise_gamma`), `noise_offset_probability`, `timestep_bias_strategy` /
`_multiplier` / `_portion` / `_begin` / `_end`. It has no debiased estimation, no
multi-resolution noise and no hard timestep range (its `range` bias only reweights): T581.
Mapping table: docs/backends/simpletuner.md.
"""

from __future__ import annotations

from lorafile.spec.models import BIAS_STRATEGIES, LOSS_KINDS, NUM_TIMESTEPS, Recipe

CONSUMED = frozenset(
    {
        "loss_type",
        "huber_schedule",
        "huber_c",
        "input_perturbation",
        "noise_offset_probability",
        "timestep_bias_strategy",
        "timestep_bias_multiplier",
        "timestep_bias_portion",
        "timestep_bias_begin",
        "timestep_bias_end",
    }
)


def normalize(recipe: Recipe, report) -> dict:
    """Train-field changes making the recipe what SimpleTuner runs; each loss is a T581."""
    t = recipe.train
    update: dict = {}
    if not t.noise_offset:
        update["noise_offset_probability"] = 1.0  # no offset: its probability means nothing
    if t.debiased_estimation:
        _lost(report, "debiased estimation (`debiased_estimation on`)")
        update["debiased_estimation"] = False
    if t.multires_noise_iterations is not None or t.multires_noise_discount != 0.3:
        if t.multires_noise_iterations is not None:
            _lost(report, "multi-resolution noise (`multires_noise_iterations`)")
        update.update(multires_noise_iterations=None, multires_noise_discount=0.3)
    if (t.min_timestep, t.max_timestep) != (0, NUM_TIMESTEPS):
        _lost(
            report,
            f"a timestep range (`timesteps {t.min_timestep}..{t.max_timestep}`; its `range` "
            "timestep bias reweights timesteps but never excludes any)",
        )
        update.update(min_timestep=0, max_timestep=NUM_TIMESTEPS)
    return update


def _lost(report, what: str) -> None:
    report(
        "T581",
        f"SimpleTuner has no {what}; it is not written.",
        "remove it from the train block, or train with kohya or natively",
        True,
    )


def write_args(recipe: Recipe) -> dict:
    """SimpleTuner arguments of the options (only those that differ from its defaults)."""
    t = recipe.train
    out: dict = {}
    if t.loss != "l2":
        out["loss_type"] = t.loss
    if t.huber_schedule != "snr":
        out["huber_schedule"] = t.huber_schedule
    if t.huber_c != 0.1:
        out["huber_c"] = t.huber_c
    if t.ip_noise_gamma is not None:
        out["input_perturbation"] = t.ip_noise_gamma
    bias = t.timestep_bias
    if bias is not None:
        out.update(timestep_bias_strategy=bias.strategy, timestep_bias_multiplier=bias.multiplier)
        if bias.strategy == "range":
            out.update(timestep_bias_begin=bias.begin, timestep_bias_end=bias.end)
        else:
            out["timestep_bias_portion"] = bias.portion
    return out


def read_args(config: dict) -> dict:
    """Train fields from a SimpleTuner config (values it cannot hold are left to validation)."""
    out: dict = {}
    if config.get("loss_type") in LOSS_KINDS:
        out["loss"] = config["loss_type"]
    for key in ("huber_schedule", "huber_c"):
        if config.get(key) is not None:
            out[key] = config[key]
    if config.get("input_perturbation"):
        out["ip_noise_gamma"] = float(config["input_perturbation"])
    strategy = config.get("timestep_bias_strategy")
    if strategy in BIAS_STRATEGIES:
        bias: dict = {
            "strategy": strategy,
            "multiplier": float(config.get("timestep_bias_multiplier", 1.0)),
        }
        if strategy == "range":
            bias.update(
                begin=int(config.get("timestep_bias_begin", 0)),
                end=int(config.get("timestep_bias_end", NUM_TIMESTEPS)),
            )
        else:
            bias["portion"] = float(config.get("timestep_bias_portion", 0.25))
        out["timestep_bias"] = bias
    return out
