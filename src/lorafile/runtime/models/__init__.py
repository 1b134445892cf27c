"""SDXL models: loading single files and diffusers folders, the tiny test model, key layouts."""
