"""LoRA files: key maps, export, convert, inspect, kohya metadata; merge, combine, resize, and the model card and ComfyUI workflow that go with a finished file."""
