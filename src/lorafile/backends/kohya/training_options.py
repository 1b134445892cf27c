"""The recipe's loss, noise and timestep options <-> sd-scripts' arguments, both directions.

sd-scripts' names (train_util.add_training_arguments; checked against
reference/kohya_sdxl_train_network_options.json): `loss_type`, `huber_schedule`, `huber_c`,
`debiased_estimation_loss`, `multires_noise_iterations`, `multires_noise_discount`,
`ip_noise_gamma`, `min_timestep`, `max_timestep`. It has no noise-offset probability
(`noise_offset_random_strength` scales the offset instead) and no timestep bias: T580.
Mapping table: docs/backends/kohya.md.
"""

from __future__ import annotations

from lorafile.spec.models import NUM_TIMESTEPS, Recipe

OWNED = {
    "loss_type",
    "huber_schedule",
    "huber_c",
    "debiased_estimation_loss",
    "multires_noise_iterations",
    "multires_noise_discount",
    "ip_noise_gamma",
    "min_timestep",
    "max_timestep",
}
"""Flat keys the reader maps into recipe fields exactly."""


def write_args(recipe: Recipe) -> dict:
    """The sd-scripts arguments of the recipe's options (None: not written)."""
    t = recipe.train
    multires = t.multires_noise_iterations is not None or t.multires_noise_discount != 0.3
    return {
        "loss_type": t.loss if t.loss != "l2" else None,
        "huber_schedule": t.huber_schedule if t.huber_schedule != "snr" else None,
        "huber_c": float(t.huber_c) if t.huber_c != 0.1 else None,
        "debiased_estimation_loss": True if t.debiased_estimation else None,
        "multires_noise_iterations": t.multires_noise_iterations,
        "multires_noise_discount": float(t.multires_noise_discount) if multires else None,
        "ip_noise_gamma": None if t.ip_noise_gamma is None else float(t.ip_noise_gamma),
        "min_timestep": t.min_timestep or None,
        "max_timestep": t.max_timestep if t.max_timestep != NUM_TIMESTEPS else None,
    }


def read_args(args: dict) -> dict:
    """Train fields from sd-scripts' effective arguments (`l1` has no recipe spelling: the
    reader's validation reports it as a value outside the recipe's range, I614)."""
    discount = args.get("multires_noise_discount")
    return {
        "loss": args.get("loss_type") or "l2",
        "huber_schedule": args.get("huber_schedule") or "snr",
        "huber_c": 0.1 if args.get("huber_c") is None else float(args["huber_c"]),
        "debiased_estimation": bool(args.get("debiased_estimation_loss")),
        "multires_noise_iterations": args.get("multires_noise_iterations") or None,
        "multires_noise_discount": 0.3 if discount is None else float(discount),
        "ip_noise_gamma": args.get("ip_noise_gamma") or None,
        "min_timestep": args.get("min_timestep") or 0,
        "max_timestep": args.get("max_timestep") or NUM_TIMESTEPS,
    }


def project(data: dict, reasons, reason_type) -> None:
    """What sd-scripts cannot say, on the recipe's dump: canonical changes, then T580."""
    t = data["train"]
    if not t["noise_offset"]:
        t["noise_offset_probability"] = 1.0  # no offset: its probability means nothing
    if t["noise_offset_probability"] != 1.0 and reasons.add(
        reason_type(
            "T580",
            "sd-scripts applies the noise offset on every step; `noise_offset_probability "
            f"{t['noise_offset_probability']:.0%}` cannot be written.",
            "remove noise_offset_probability, or lower noise_offset instead",
        )
    ):
        t["noise_offset_probability"] = 1.0
    if t["timestep_bias"] is not None and reasons.add(
        reason_type(
            "T580",
            "sd-scripts has no timestep bias; timesteps are drawn uniformly "
            f"from {t['min_timestep']}..{t['max_timestep']}.",
            "use `timesteps MIN..MAX` to limit the range, or remove timestep_bias",
        )
    ):
        t["timestep_bias"] = None
