"""The L3xx lint rules, one or two cases each (a firing case and a quiet case)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from lorafile.compiler import clip_bpe, lint_rules
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.compiler.lint_rules import LintContext
from lorafile.spec import models as m
from vram_helpers import recipe


def write_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height (the rules only read headers)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
    path.write_bytes(data + struct.pack(">I", zlib.crc32(chunk)))


def make_dataset(folder: Path, sizes, captions=None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        write_png(folder / f"img{i:03}.png", w, h)
        if captions is not None:
            (folder / f"img{i:03}.txt").write_text(captions[i % len(captions)])
    return str(folder)


def run(r: m.Recipe, trainer="native", source="recipe", **kw) -> list:
    bag = DiagnosticBag()
    ctx = LintContext(r, bag, trainer=trainer, source=source, **kw)
    for rule in lint_rules.RULES:
        rule(ctx)
    return bag.items


def codes(r: m.Recipe, **kw) -> list[str]:
    return [d.code for d in run(r, **kw)]


def severity(r: m.Recipe, code: str, **kw) -> str:
    return next(str(d.severity) for d in run(r, **kw) if d.code == code)


def test_image_headers(tmp_path):
    write_png(tmp_path / "a.png", 640, 480)
    assert lint_rules.image_size(tmp_path / "a.png") == (640, 480)
    # baseline JPEG: SOI, an APP0 segment, then SOF0 with height 300, width 200
    jpeg = (
        b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 300, 200)
    )
    (tmp_path / "b.jpg").write_bytes(jpeg + b"\x00" * 16)
    assert lint_rules.image_size(tmp_path / "b.jpg") == (200, 300)
    (tmp_path / "c.png").write_bytes(b"not an image")
    assert lint_rules.image_size(tmp_path / "c.png") is None


def test_l318_base_named_sdxl_2():
    def with_base(path: str) -> m.Recipe:
        return recipe().model_copy(update={"base": m.Base(path=path)})

    for wrong in ("/models/sdxl-2.0-base.safetensors", "stabilityai/stable-diffusion-xl-base-2.0"):
        assert "L318" in codes(with_base(wrong))
    for right in ("/models/sd_xl_base_1.0.safetensors", "/m/sdxl_20k_steps.safetensors"):
        assert "L318" not in codes(with_base(right))


def test_l301_fp16():
    assert "L301" in codes(recipe(train={"precision": "fp16"}))
    assert "L301" not in codes(recipe(train={"precision": "bf16"}))


def test_l302_learning_rate():
    assert "L302" in codes(recipe(train={"lr": 1e-3}))
    assert "L302" not in codes(recipe(train={"lr": 1e-4}))
    character = [{"kind": "character"}]
    assert "L302" not in codes(recipe(train={"lr": 5e-5}, datasets=character))
    assert "L302" in codes(recipe(train={"lr": 1e-6}, datasets=character))
    # Prodigy wants lr around 1.0; 1e-4 is the classic mistake.
    assert "L302" in codes(recipe(train={"lr": 1e-4, "optimizer": "prodigy"}))
    assert "L302" not in codes(recipe(train={"lr": 1.0, "optimizer": "prodigy"}))


def test_l303_steps_and_l304_size(tmp_path):
    path = make_dataset(tmp_path / "style", [(1024, 1024)] * 30)
    ds = [{"path": path, "repeats": 10}]
    # 30 images x 10 repeats x 10 epochs / batch 1 = 3000 steps (the watercolor recipe)
    assert not {"L303", "L304"} & set(codes(recipe(train={"steps": 3000}, datasets=ds)))
    assert "L303" in codes(recipe(train={"steps": 30000}, datasets=ds))
    assert "L303" in codes(recipe(train={"steps": 300}, datasets=ds))
    few = make_dataset(tmp_path / "few", [(1024, 1024)] * 5)
    assert "L304" in codes(recipe(datasets=[{"path": few}]))
    # Without the folder the rules stay quiet (nothing to count).
    assert not {"L303", "L304"} & set(codes(recipe(train={"steps": 30000})))


def test_l305_rank_alpha():
    assert "L305" in codes(recipe(adapter={"rank": 16, "alpha": 64}))
    assert "L305" in codes(recipe(adapter={"rank": 128, "alpha": 1}))
    assert "L305" not in codes(recipe(adapter={"rank": 16, "alpha": 8}))


def test_l306_l307_trigger_tokens():
    assert "L306" in codes(recipe(trigger="dog"))
    assert "L307" in codes(recipe(trigger="wtrclr"))  # w tr cl r
    found = codes(recipe(trigger="ohwx"))  # one rare token
    assert "L306" not in found and "L307" not in found


def test_l308_vocab_missing(monkeypatch):
    monkeypatch.setattr(clip_bpe, "load", lambda: None)
    diags = run(recipe(trigger="ohwx"))
    skipped = [d for d in diags if d.code == "L308"]
    assert skipped and str(skipped[0].severity) == "info"
    assert "--no-deps open-clip-torch" in skipped[0].help


def test_l309_trigger_prepended_twice(tmp_path):
    mixed = make_dataset(tmp_path / "mixed", [(1024, 1024)] * 4, ["ohwx woman", "a woman"])
    none = make_dataset(tmp_path / "none", [(1024, 1024)] * 4, ["a woman"])
    diag = next(
        d for d in run(recipe(trigger="ohwx", datasets=[{"path": mixed}])) if d.code == "L309"
    )
    assert "2 of 4" in diag.message and "twice" in diag.message
    assert "L309" not in codes(recipe(trigger="ohwx", datasets=[{"path": none}]))


def test_l309_kohya_folder_tokens_missing(tmp_path):
    root = tmp_path / "img"
    make_dataset(root / "10_ohwx woman", [(1024, 1024)] * 3, ["a woman in a park"])
    make_dataset(root / "5_inkst", [(1024, 1024)] * 2, ["inkst, a cat"])
    diags = [d for d in run(recipe(datasets=[{"path": str(root)}])) if d.code == "L309"]
    assert len(diags) == 1 and "`ohwx woman`" in diags[0].message


def test_l310_regularization_ratio():
    reg = (m.Regularization(path="/reg", class_prompt="woman", ratio=4.0),)
    assert "L310" in codes(recipe(datasets=[{"kind": "character"}], regularization=reg))
    assert "L310" not in codes(recipe(datasets=[{"kind": "style"}], regularization=reg))


def test_l311_constant_with_warmup():
    r = recipe(train={"scheduler": "constant", "warmup": m.Warmup(value=100)})
    assert severity(r, "L311", trainer="kohya") == "error"
    assert severity(r, "L311") == "warning"
    assert "L311" not in codes(recipe(train={"scheduler": "constant_with_warmup",
                                             "warmup": m.Warmup(value=100)}))  # fmt: skip


def test_l312_text_cache_conflicts():
    cache = m.Cache(text=True)
    assert "L312" in codes(recipe(adapter={"text_encoder": True}, train={"cache": cache}))
    assert "L312" in codes(recipe(train={"cache": cache}, datasets=[{"shuffle_captions": True}]))
    assert "L312" not in codes(recipe(train={"cache": cache}))


def test_l313_sample_size():
    small = m.Sample(
        every=m.Interval(every=100), prompts=("a",), size=m.Resolution(width=512, height=512)
    )
    diag = next(d for d in run(recipe(sample=small), source="kohya") if d.code == "L313")
    assert "--w/--h" in diag.message
    big = small.model_copy(update={"size": m.Resolution(width=1024, height=1024)})
    assert "L313" not in codes(recipe(sample=big))


def test_l314_bucket_step():
    ds = [{"buckets": m.Buckets(step=40)}]
    assert severity(recipe(datasets=ds), "L314", trainer="kohya") == "error"
    assert severity(recipe(datasets=ds), "L314") == "warning"
    assert "L314" not in codes(recipe(datasets=[{"buckets": m.Buckets(step=64)}]))


def test_l315_small_aspect_buckets(tmp_path):
    sizes = [(1024, 1024)] * 8 + [(832, 1216)] * 2 + [(1216, 832)]
    path = make_dataset(tmp_path / "st", sizes)
    r = recipe(train={"batch": 4}, datasets=[{"path": path}])
    diag = next(d for d in run(r, trainer="simpletuner") if d.code == "L315")
    assert "2 aspect bucket" in diag.message
    assert "L315" not in codes(r)  # kohya/native fill batches across buckets
    assert "L315" not in codes(recipe(train={"batch": 1}, datasets=[{"path": path}]),
                               trainer="simpletuner")  # fmt: skip


def test_l316_lycoris_alpha_int():
    half = recipe(adapter={"algo": "locon", "rank": 8, "alpha": 0.5, "conv_alpha": 4})
    assert severity(half, "L316", trainer="simpletuner") == "error"
    odd = recipe(adapter={"algo": "locon", "rank": 8, "alpha": 2.5, "conv_alpha": 4})
    assert severity(odd, "L316", trainer="simpletuner") == "warning"
    assert "L316" not in codes(half)
    assert "L316" not in codes(recipe(adapter={"alpha": 0.5, "rank": 4}), trainer="simpletuner")


def test_l317_minimum_image_size(tmp_path):
    path = make_dataset(tmp_path / "small", [(512, 512)] * 3)
    st = {"simpletuner": {"minimum_image_size": 1024}}
    r = recipe(datasets=[{"path": path}], passthrough=st)
    assert severity(r, "L317", trainer="simpletuner") == "error"
    ok = recipe(datasets=[{"path": path}], passthrough={"simpletuner": {"minimum_image_size": 256}})
    assert "L317" not in codes(ok, trainer="simpletuner")


def test_rules_use_source_positions():
    from lorafile.compiler.diagnostics import Span

    class Map(dict):
        def find(self, path):
            return self.get(tuple(path))

    smap = Map({("train", "precision"): Span(7, 5)})
    diag = next(d for d in run(recipe(train={"precision": "fp16"}), smap=smap) if d.code == "L301")
    assert diag.span == Span(7, 5)


def test_l312_caption_dropout_is_fine_for_simpletuner():
    r = recipe(train={"cache": m.Cache(text=True)}, datasets=[{"caption_dropout": 0.1}])
    assert "L312" in codes(r, trainer="kohya")
    assert "L312" not in codes(r, trainer="simpletuner", source="simpletuner")


def test_l313_kohya_prompt_file_unread():
    r = recipe(
        passthrough={"kohya": {"sample_prompts": "/x/prompts.txt", "sample_every_n_steps": 500}}
    )
    diag = next(d for d in run(r, trainer="kohya", source="kohya") if d.code == "L313")
    assert "--w" in diag.help
    assert "L313" not in codes(r)  # a recipe without a sample block does not sample


def test_image_rules_read_a_relative_dataset_next_to_the_recipe(tmp_path, monkeypatch, capsys):
    """A relative dataset path is relative to the recipe's folder (as for the trainer and the
    one-line dataset summary), not to the folder `lint` runs in."""
    from PIL import Image as PILImage

    from lorafile.cli import main

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for k in range(3):
        PILImage.new("RGB", (64, 64), (k, 0, 0)).save(project / "data" / f"{k}.png")
    (project / "r.recipe").write_text(
        'recipe "r"\nbase sdxl "/m.safetensors"\ndataset "data" {\n    kind style\n}\n'
        'train {\n    steps 100\n}\noutput "out"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    main(["lint", str(project / "r.recipe")])
    captured = capsys.readouterr()
    assert "L304" in captured.out + captured.err  # 3 images for a style: fewer than usual
