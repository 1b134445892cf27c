"""lorafile: one recipe for SDXL LoRA training, compiled to any trainer."""

__version__ = "0.1.0"
