"""LoRA files: key maps, export, convert, inspect, kohya metadata."""
