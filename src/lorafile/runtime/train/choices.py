"""What the trainer chooses at start, once it knows its device: `checkpointing auto` (when the
plan left it to the device) and the form of the step (`graphs`, runtime/train/graphs.py)."""

from __future__ import annotations


def choose_checkpointing(trainer) -> None:
    """`checkpointing auto` on the run's device, written into `trainer.plan["memory"]`: never
    on a CPU; on a GPU the plan's choice, or (no budget in the recipe) the VRAM model against
    this GPU's memory. An explicit `checkpointing on|off` is never touched."""
    import torch

    mem = trainer.plan["memory"]
    if not mem.get("checkpointing_auto"):
        return
    if trainer.device.type != "cuda":
        mem["gradient_checkpointing"] = False
        return
    if mem["gradient_checkpointing"] == "auto":
        from lorafile.compiler import vram

        budget = torch.cuda.get_device_properties(trainer.device).total_memory
        train = trainer.recipe.train.model_copy(update={"checkpointing": "auto"})
        recipe = trainer.recipe.model_copy(update={"train": train})
        chosen = vram.choice_for(
            vram.resolve_auto(recipe, budget, "native", "cuda")[1], "checkpointing"
        )
        mem["gradient_checkpointing"] = chosen.value
        earlier = [c for c in mem.get("auto_choices", []) if not c.startswith("checkpointing ")]
        mem["auto_choices"] = [*earlier, chosen.line()]  # the plan's "left to the device" line goes


def choose_step_form(trainer):
    """The StaticStep that runs the micro-batches, or None for the eager step.

    `graphs on` (the default): the static-buffer step, captured per bucket shape on CUDA, with
    `--compile`'s compiled blocks or UNet inside it; `graphs off` (recipe or `--graphs off`), a
    compile mode that records its own CUDA graphs (`reduce-overhead`, `max-autotune`), or a
    step that cannot take the static form (said once, T579): the eager step."""
    from lorafile.runtime.train import graphs
    from lorafile.runtime.train.diffusion import CUDA_GRAPH_MODES

    options = trainer.options
    wanted = trainer.recipe.train.graphs if options.graphs is None else options.graphs
    if not wanted or trainer.compile_mode in CUDA_GRAPH_MODES:
        return None
    why = graphs.ineligible(trainer)
    if why:
        if trainer.writes:
            print(f"info[T579]: the step runs eagerly: {why}", flush=True)
        return None
    blocker = graphs.capture_blocker(trainer)
    if blocker and trainer.device.type == "cuda" and trainer.writes:
        print(f"info[T579]: the step is not captured as a CUDA graph: {blocker}", flush=True)
    return graphs.StaticStep(trainer, capture=blocker is None)
