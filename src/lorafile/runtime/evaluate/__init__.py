"""Evaluation: the test grid across checkpoints and strengths, its scores and its report."""
