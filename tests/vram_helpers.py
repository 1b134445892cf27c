"""Recipe builders shared by the VRAM and lint tests."""

from __future__ import annotations

from lorafile.spec import models as m


def recipe(adapter=None, train=None, datasets=None, **kw) -> m.Recipe:
    """A minimal recipe; `adapter`/`train` are dicts of overrides, `datasets` a list of dicts."""
    t = {
        "steps": 1000,
        "batch": 1,
        "optimizer": "adamw",
        "precision": "bf16",
        "checkpointing": True,
        "cache": m.Cache(latents=False, text=False),  # explicit: these tests price each term
    }
    t.update(train or {})
    ds = tuple(
        m.Dataset(**({"path": "/nonexistent/lorafile-data"} | d)) for d in (datasets or [{}])
    )
    return m.Recipe(
        name="t",
        base=m.Base(path="/models/sdxl.safetensors"),
        datasets=ds,
        adapter=m.Adapter(**(adapter or {})),
        train=m.Train(**t),
        output=m.Output(path="/out"),
        **kw,
    )


def cached(**train) -> dict:
    return {"cache": m.Cache(latents=True, text=True), **train}
