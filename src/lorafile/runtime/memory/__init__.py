"""The exact memory model: the traced step simulated on the meta device (the analytic one is compiler/vram.py)."""
