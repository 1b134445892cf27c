"""Defaults that the command line and the trainer share, kept apart so that reading them
imports nothing else (the CLI builds its parsers on the compile path)."""

# Steps between two reads of the loss from the device: each read is a host-device sync.
DEFAULT_LOG_EVERY = 10
