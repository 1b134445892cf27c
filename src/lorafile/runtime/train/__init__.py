"""The native trainer: plan, data and buckets, caches, the loop, checkpoints, launch."""
