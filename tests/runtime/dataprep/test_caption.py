"""`lorafile caption` on a tiny random BLIP model built and saved here (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prep_planted import picture, tree_digest

from lorafile.cli import main
from lorafile.runtime.dataprep.caption import (
    Captioner,
    CaptionOptions,
    caption_folder,
    clean_caption,
)

WORDS = [
    "a",
    "the",
    "red",
    "blue",
    "house",
    "boat",
    "sea",
    "sky",
    "tree",
    "dog",
    "cat",
    "on",
    "in",
    "with",
    "small",
    "big",
    "old",
    "new",
]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A random BLIP captioner small enough to run in a second, with a word-level vocabulary."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny_blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(
        vision_config=dict(small, image_size=32, patch_size=8),
        text_config=dict(small, vocab_size=len(tokenizer), max_position_embeddings=64, **ids),
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_florence(tmp_path_factory) -> Path:
    """A random Florence-2 (transformers' own classes): DaViT vision tower, one-layer BART,
    a byte-level tokenizer, 64-pixel images (1 + 2 x 2 image tokens)."""
    import torch
    from transformers import (
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    from lorafile.runtime.models.tokenizers import byte_level_vocab

    folder = tmp_path_factory.mktemp("tiny_florence")
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<image>"])}
    for token in byte_level_vocab():
        if not token.endswith("</w>") and not token.startswith("<|"):
            vocab.setdefault(token, len(vocab))
    tokenizer = BartTokenizer(
        vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"}
    )
    images = CLIPImageProcessor(
        size={"height": 64, "width": 64}, do_center_crop=False, image_seq_length=5
    )
    text = dict(
        model_type="bart", vocab_size=len(tokenizer), d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    vision = dict(
        depths=[1, 1, 1, 1], embed_dim=[8, 8, 16, 16], num_heads=[1, 1, 2, 2],
        num_groups=[1, 1, 2, 2], window_size=2, projection_dim=32, max_position_embeddings=8,
        max_temporal_embeddings=4, drop_path_rate=0.0,
    )  # fmt: skip
    config = Florence2Config(
        vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    model.generation_config.min_new_tokens = 4  # a random model would stop at once
    model.save_pretrained(folder)
    Florence2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i}.png"
        picture(600 + i, (96, 80)).save(path)
        paths.append(path)
    return paths


def test_writes_exactly_the_missing_captions_trigger_first_and_is_idempotent(tmp_path, tiny_blip):
    images = make_images(tmp_path / "data", 5)
    images[1].with_suffix(".txt").write_text("my own caption\n")
    options = CaptionOptions(model=str(tiny_blip), trigger="zqx", batch=2, remove=("house",))
    result = caption_folder(tmp_path / "data", options, progress=False)
    assert sorted(result.written) == sorted(images[:1] + images[2:])
    assert result.kept == [images[1]] and not result.failed
    assert images[1].with_suffix(".txt").read_text() == "my own caption\n"
    for image in result.written:
        text = image.with_suffix(".txt").read_text()
        assert text.startswith("zqx") and text.endswith("\n") and text.count("\n") == 1
        assert "house" not in text.split()
        assert set(text.strip().removeprefix("zqx").strip(", ").split()) <= set(WORDS)
    before = tree_digest(tmp_path / "data")

    def no_model(_name):
        raise AssertionError("a run with nothing to do must not load the model")

    again = caption_folder(tmp_path / "data", options, progress=False, load=no_model)
    assert again.written == [] and len(again.kept) == 5
    assert tree_digest(tmp_path / "data") == before


def test_overwrite_replaces_existing_captions(tmp_path, tiny_blip):
    images = make_images(tmp_path, 2)
    images[0].with_suffix(".txt").write_text("my own caption\n")
    options = CaptionOptions(model=str(tiny_blip), overwrite=True, extension="caption")
    result = caption_folder(tmp_path, options, progress=False)
    assert sorted(result.written) == images
    assert images[0].with_suffix(".txt").read_text() == "my own caption\n"  # other extension
    assert all(p.with_suffix(".caption").is_file() for p in images)


class Flaky(Captioner):
    """Answers `good` batches, then fails as a crash would."""

    def __init__(self, good: int = 1):
        self.calls, self.good = 0, good

    def describe(self, images, prompt, max_new_tokens):
        self.calls += 1
        if self.calls > self.good:
            raise RuntimeError("out of memory")
        return ["a boat on the sea"] * len(images)


def test_an_interrupted_run_keeps_finished_batches_and_resumes(tmp_path):
    images = make_images(tmp_path, 5)
    options = CaptionOptions(model="unused", batch=2)
    with pytest.raises(RuntimeError):
        caption_folder(tmp_path, options, progress=False, load=lambda _n: Flaky())
    done = sorted(p for p in images if p.with_suffix(".txt").exists())
    assert done == images[:2]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes
    result = caption_folder(tmp_path, options, progress=False, load=lambda _n: Flaky(good=9))
    assert sorted(result.written) == images[2:] and sorted(result.kept) == images[:2]


def test_clean_caption_removes_words_and_prepends_the_trigger_once():
    assert clean_caption("A Watercolor painting of a boat.", ("watercolor",), "zqx") == (
        "zqx, A painting of a boat."
    )
    assert clean_caption("zqx, a boat", (), "zqx") == "zqx, a boat"
    assert clean_caption("a boat, in watercolor style, at dusk", ("watercolor style",), None) == (
        "a boat, in, at dusk"
    )
    assert clean_caption("  ", (), None) == ""


def test_cli_captions_and_reports(tmp_path, tiny_blip, capsys):
    make_images(tmp_path, 3)
    argv = ["caption", str(tmp_path), "--model", str(tiny_blip), "--trigger", "zqx"]
    assert main([*argv, "--remove", "house,boat", "--batch", "3"]) == 0
    assert "wrote 3 caption file(s), kept 0 existing" in capsys.readouterr().out
    assert main(argv) == 0
    assert "wrote 0 caption file(s), kept 3 existing" in capsys.readouterr().out


def test_cli_missing_model_folder_is_a_diagnostic(tmp_path, capsys):
    make_images(tmp_path, 1)
    assert main(["caption", str(tmp_path), "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "error[D833]" in err and "Traceback" not in err


def test_florence2_loads_with_transformers_own_class_and_captions(tmp_path, tiny_florence):
    from lorafile.runtime.dataprep.caption import load_captioner

    captioner = load_captioner(str(tiny_florence))
    assert type(captioner.model).__name__ == "Florence2ForConditionalGeneration"
    assert captioner.style == "florence"
    images = make_images(tmp_path, 3)
    options = CaptionOptions(model=str(tiny_florence), trigger="zqx", batch=2, max_new_tokens=8)
    result = caption_folder(tmp_path, options, progress=False, load=lambda _n: captioner)
    assert sorted(result.written) == images
    texts = [p.with_suffix(".txt").read_text() for p in images]
    assert all(t.startswith("zqx, ") and len(t.strip()) > len("zqx, ") for t in texts)


@pytest.mark.gpu
def test_captions_on_the_gpu_in_bf16(tmp_path, tiny_blip):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from lorafile.runtime.dataprep.caption import load_captioner

    captioner = load_captioner(str(tiny_blip))
    assert captioner.model.device.type == "cuda"
    assert captioner.model.dtype == (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    )
    images = make_images(tmp_path, 3)
    options = CaptionOptions(model=str(tiny_blip), trigger="zqx", batch=2)
    result = caption_folder(tmp_path, options, progress=False, load=lambda _n: captioner)
    assert sorted(result.written) == images


def test_recipe_captions_setting_decides_the_extension(tmp_path, tiny_blip, capsys):
    recipe = tmp_path / "r.recipe"
    body = (
        'recipe "r"\nbase sdxl "/models/base.safetensors"\n'
        'dataset "data" {{\n    captions {captions}\n}}\ntrigger "zqx"\n'
        'train {{\n    steps 10\n}}\noutput "/out"\n'
    )
    images = make_images(tmp_path / "data", 2)
    recipe.write_text(body.format(captions="caption"))
    argv = ["caption", str(tmp_path / "data"), "--model", str(tiny_blip), "--recipe", str(recipe)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "prepended by the trainer" in captured.err
    texts = [p.with_suffix(".caption").read_text() for p in images]
    assert all(not t.startswith("zqx") for t in texts)  # the trainer prepends the recipe's trigger
    assert not any(p.with_suffix(".txt").exists() for p in images)
    recipe.write_text(body.format(captions="filename"))
    assert main(argv) == 1
    assert "error[D834]" in capsys.readouterr().err
