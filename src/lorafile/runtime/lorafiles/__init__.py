"""LoRA files after training: merge into a base, combine, resize, model card, ComfyUI workflow."""
