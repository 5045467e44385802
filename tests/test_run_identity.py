"""Run identity and store hygiene: a corpus enters the run id by its content, the experiment's name
survives in every status, files are readable by others, and a mistake leaves no empty store behind."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from scalescope import config as C
from scalescope.cli import main
from scalescope.store import Store, load


def _text_cfg(path: Path) -> C.RunConfig:
    return C.from_dict({"data": {"kind": "text", "path": str(path)}})


def test_an_edited_corpus_gets_a_new_run_id_and_a_moved_one_keeps_it(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one two three\n")
    before = C.run_id(_text_cfg(corpus))
    moved = tmp_path / "elsewhere"
    shutil.copytree(corpus, moved)
    assert C.run_id(_text_cfg(moved)) == before  # same text, same run
    (corpus / "a.txt").write_text("one two four\n")
    os.utime(corpus / "a.txt", ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert C.run_id(_text_cfg(corpus)) != before
    (corpus / "b.txt").write_text("more\n")  # a new file is new content too
    assert len({before, C.run_id(_text_cfg(corpus)), C.run_id(_text_cfg(moved))}) == 2


def test_a_stored_config_keeps_the_fingerprint_it_was_trained_on(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("abc\n")
    cfg = _text_cfg(f)
    stored = C.to_dict(cfg)
    f.write_text("abd\n")
    assert C.run_id(C.from_dict(stored)) == C.run_id(cfg)


def test_experiment_name_survives_and_files_are_readable_by_others(tiny_toml, tmp_path: Path) -> None:
    store = tmp_path / "s"
    assert main(["run", str(tiny_toml(name="named.toml")), "--store", str(store), "--quiet", "--workers", "1"]) == 0
    runs = load(store).runs
    assert list(runs["experiment"]) == ["tiny"]  # the experiment file's name field
    for p in store.rglob("*"):
        if p.is_file() and "cache" not in p.parts:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o044 == 0o044, f"{p} is {oct(mode)}: not readable by group and others"


def test_a_config_mistake_leaves_no_store_behind(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    exp = tmp_path / "bad.toml"
    for data in (f'path = "{tmp_path / "missing"}"', f'path = "{empty}"'):
        exp.write_text(f'name = "bad"\n[data]\nkind = "text"\n{data}\n')
        assert main(["run", str(exp), "--store", str(tmp_path / "s"), "--quiet"]) == 2
        assert not (tmp_path / "s").exists()
    # An existing store is left as it was.
    Store(tmp_path / "kept").ensure_writable()
    assert main(["run", str(exp), "--store", str(tmp_path / "kept"), "--quiet"]) == 2
    assert (tmp_path / "kept" / "runs").is_dir()
