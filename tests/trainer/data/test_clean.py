"""[data.clean]: each filter on its own, its defaults keep ordinary text, and the counts per reason."""

from __future__ import annotations

from pathlib import Path

from trainer.data.clean import CleanConfig, clean, repetitive, symbol_heavy
from trainer.data.corpus import generate_corpus

PROSE = (
    "The committee met on Tuesday to review the budget for the coming year. Several members "
    "asked whether the new library could open before winter, and the treasurer explained that "
    "the builders needed another month.\nAfter a short break they voted to approve the plan."
)


def test_nfc_and_control_characters() -> None:
    decomposed = "Cafe\u0301 cre\u0300me"  # e + combining accents
    text, reason = clean(f"\x07{decomposed}\x1b[0m\r", CleanConfig())
    assert reason is None and text == "Café crème[0m"
    assert text.encode() == "Café crème[0m".encode()  # the composed (NFC) bytes
    assert clean("tab\tand\nnewline stay", CleanConfig())[0] == "tab\tand\nnewline stay"


def test_empty_short_and_long() -> None:
    cfg = CleanConfig(min_chars=10, max_chars=100)
    assert clean("\x01\x02  ", cfg)[1] == "empty"
    assert clean("too short", cfg)[1] == "too_short"
    assert clean("x" * 101, cfg)[1] == "too_long"
    assert clean("just the right length", cfg)[1] is None


def test_defaults_keep_the_tiny_corpus_and_prose() -> None:
    cfg = CleanConfig()
    assert not cfg.gopher_repetition and not cfg.gopher_symbol_ratio
    lines = [ln for ln in generate_corpus(20_000).splitlines() if ln]
    assert all(clean(ln, cfg)[1] is None for ln in lines)
    on = CleanConfig(gopher_repetition=True, gopher_symbol_ratio=True)
    assert clean(PROSE, on)[1] is None  # ordinary prose passes the Gopher filters too


def test_gopher_repetition() -> None:
    assert repetitive("buy now\n" * 5 + "other line")  # duplicate lines > 30 %
    assert repetitive("click here to win " * 20)  # duplicated 5-grams cover the text
    assert not repetitive(PROSE)
    cfg = CleanConfig(gopher_repetition=True)
    assert clean("spam spam spam spam spam spam spam spam spam eggs", cfg)[1] == "repetition"


def test_gopher_symbol_ratio() -> None:
    assert symbol_heavy("#tag #tag2 #tag3 some words here")  # '#' per word > 0.1
    assert symbol_heavy("- one\n- two\n- three")  # every line a bullet
    assert symbol_heavy("wait...\nand...\nmore...\nfine")  # ellipsis lines > 30 %
    assert symbol_heavy("12 34 56 78 90 x")  # < 80 % of words hold a letter
    assert not symbol_heavy(PROSE)
    cfg = CleanConfig(gopher_symbol_ratio=True, max_symbol_word_ratio=0.5)
    assert clean("#a #b c d e f g h i j", cfg)[1] is None  # 2 symbols / 10 words under 0.5
    assert clean("#a #b #c #d #e #f g", cfg)[1] == "symbol_ratio"


def test_counts_per_reason_reach_the_report(tmp_path: Path) -> None:
    """Each reason counted once per dropped document, in the committed report and the marker sums."""
    import json

    from artifacts.store import open_store
    from trainer.config import config_from_dict
    from trainer.data.prepare import prepare
    from trainer.data.report import REPORT_NAME
    from trainer.data.shards import CACHE_PREFIX

    body = generate_corpus(30_000, seed=2)
    extra = ["\x01\x02", "tiny", "y" * 3000, "ha ha ha ha ha ha ha ha ha ha ha ha", "#a #b #c #d e f"]
    src = tmp_path / "c.txt"
    src.write_text(body + "\n".join(extra) + "\n")
    clean_cfg = {"min_chars": 5, "max_chars": 2000, "gopher_repetition": True, "gopher_symbol_ratio": True}
    cfg = config_from_dict(
        {"data": {"train_files": [str(src)], "vocab_size": 300, "block_size": 32, "val_fraction": 0.1,
                  "tokenizer_sample_bytes": 20_000, "clean": clean_cfg}},
        source="test.toml",
    )  # fmt: skip
    res = prepare(cfg, str(tmp_path / "r"), tmp_path / "w", workers=1, bar=False)
    report = json.loads(open_store(str(tmp_path / "r")).child(CACHE_PREFIX).get_bytes(REPORT_NAME))
    from collections import Counter

    expected = Counter(clean(ln, cfg.data.clean)[1] for ln in body.splitlines() if ln)
    expected.update(["empty", "too_short", "too_long", "repetition", "symbol_ratio"])
    n_dropped = sum(v for k, v in expected.items() if k)
    assert expected["repetition"] > 1  # the grammar is repetitive enough for Gopher's filter
    dropped = {k: v["documents"] for k, v in report["dropped"].items() if v["documents"]}
    assert dropped == {k: v for k, v in expected.items() if k}
    assert report["documents_out"] == res.metadata["docs"] == report["documents_in"] - n_dropped


def test_docs_name_every_data_and_clean_key() -> None:
    """docs/trainer.md is where a user looks a key up: every [data] and [data.clean] key is there."""
    import dataclasses

    from trainer.data.config import DataConfig

    doc = (Path(__file__).resolve().parents[3] / "docs" / "trainer.md").read_text()
    missing = [f.name for f in dataclasses.fields(DataConfig) if f"`{f.name}`" not in doc and f"data.{f.name}" not in doc]
    missing += [f"clean.{f.name}" for f in dataclasses.fields(CleanConfig) if f"data.clean.{f.name}" not in doc]
    assert not missing
