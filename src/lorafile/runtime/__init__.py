"""Everything that touches tensors or images: models, the trainer, LoRA files, memory tools."""

from lorafile.runtime.environment import stay_offline

# Before any runtime module imports torch, diffusers or bitsandbytes: no lorafile command
# reaches for the network (see runtime/environment.py).
stay_offline()
