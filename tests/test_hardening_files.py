"""Issue 25, files: names from tables never become paths, writes never go through a planted link,
two-file updates have one commit point, reads and locks never hang, and sizes are bounded. Each
test is named after its finding and fails on the code before the fix."""
from __future__ import annotations

import json
import os
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import model_zoo
from robench.errors import BadInput
from robench.results import pack_flags, read_table, to_frame, wilson, write_table

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_cifar import colour_images, write_cifar10  # noqa: E402


def row(model="resnet20", kind="clean", pert="none", eps=None, flags=(1, 1, 1, 0), **kw):
    f = np.asarray(flags, dtype=bool)
    n, c = len(f), int(f.sum())
    lo, hi = wilson(c, n)
    return {"model": model, "scheme": "euler", "lam": 0.0, "dataset": "samples", "n": n, "kind": kind,
            "perturbation": pert, "backend": "art" if kind == "attack" else None, "eps": eps, "severity": None,
            "seed": 0, "correct": c, "accuracy": c / n, "ci_low": lo, "ci_high": hi, "flags": pack_flags(f),
            "data_sha256": "d" * 64, "weights_sha256": "w" * 64, **kw}


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def no_hang(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it does not return."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} hung for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- 25.1 names from a table are never paths ---------------------------------------------------
def test_25_1_perturbation_and_direction_names_never_leave_the_plot_folder(tmp_path):
    from robench.analysis.plots import plot_tables

    evil = "/../../../../" + str(tmp_path / "victim").lstrip("/")
    write_table(to_frame([row(), row(kind="attack", pert=evil, eps=8 / 255, flags=(1, 0, 0, 0))]), tmp_path / "t")
    before = files_under(tmp_path)
    written = plot_tables([tmp_path / "t.parquet"], tmp_path / "plots")
    assert written and all(p.resolve().parent == (tmp_path / "plots").resolve() for p in written)
    assert not (tmp_path / "victim.png").exists()
    assert {p for p in files_under(tmp_path) - before if not p.is_relative_to(tmp_path / "plots")} == set()


# -- 25.2 planted links are never written through ----------------------------------------------
def test_25_2_a_planted_sweep_lock_link_is_refused_and_its_target_untouched(tmp_path):
    from robench.store import DiskStore

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    out = tmp_path / "sweep"
    out.mkdir()
    (out / ".lock").symlink_to(notes)
    store = DiskStore(out=out, fingerprint={}, weights={}, config={}, planned={})
    with pytest.raises(BadInput, match="symbolic link"):
        with store.open():
            pass
    assert notes.read_text() == "my notes"


def test_25_2_train_temporaries_planted_as_links_are_not_written_through(tmp_path):
    from robench.data import Dataset
    from robench.train import train

    x, y = colour_images(16, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)
    run = tmp_path / "run"
    run.mkdir()
    victims = []
    for name in ("state.safetensors.tmp", "metrics.csv.tmp"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious")
        (run / name).symlink_to(victim)
        victims.append(victim)
    train("resnet20", ds, ds, epochs=1, batch_size=8, run_dir=run, resume=True, progress=False, log=lambda m: None)
    assert [v.read_text() for v in victims] == ["precious", "precious"]


# -- 25.8 train state: one commit point --------------------------------------------------------
# 25.8 (a kill between an epoch's checkpoint and its state): the packed trainer's run folder has one
# commit point an epoch; tests/test_packed.py::test_a_kill_between_the_epoch_files_never_trains_an_epoch_twice
# kills it at every point between the files and the commit.


# -- 25.9 silent overwrite, no lock -----------------------------------------------------------
def sweep_with_cells(root: Path, *records: dict) -> Path:
    """A sweep folder holding the given cell records (as ``robench sweep`` stores them)."""
    out = root / "sw"
    (out / "cells").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"robench_sweep": 1, "config": {"models": ["resnet20"]}}))
    for i, r in enumerate(records):
        cell_id = f"{i:016x}"
        (out / "cells" / f"{cell_id}.json").write_text(json.dumps({"cell_id": cell_id, "record": r}))
    return out


def test_25_9_results_merge_refuses_to_replace_a_table_without_force(tmp_path, capsys):
    from robench.cli import main

    write_table(to_frame([row()]), tmp_path / "table")
    before = (tmp_path / "table.csv").read_bytes()
    sweep = sweep_with_cells(tmp_path, row(flags=(1, 0, 0, 0)))
    with pytest.raises(SystemExit) as e:
        main(["results", "merge", str(sweep), "-o", str(tmp_path / "table")])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    assert (tmp_path / "table.csv").read_bytes() == before


def test_25_9_a_second_eval_to_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    from engine_helpers import save_fitted

    from robench.cli import main
    from robench.fileio import output_lock

    save_fitted("resnet20")
    out = tmp_path / "t"
    with output_lock(out, busy="held by the test"):  # what a first `robench eval --out t` holds
        with pytest.raises(SystemExit) as e:
            main(["eval", "--model", "resnet20", "--n", "2", "--no-checks", "--out", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: another robench is writing the table"), err
        assert not (tmp_path / "t.parquet").exists()
    assert not list(tmp_path.glob(".*lock"))  # the lock file is gone with its holder


def test_25_9_a_second_train_on_one_run_folder_is_refused(tmp_path):
    from robench.data import Dataset
    from robench.fileio import exclusive_lock
    from robench.train import train

    x, y = colour_images(16, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)
    run = tmp_path / "run"
    run.mkdir()
    with exclusive_lock(run / ".lock", busy="held"):  # a first `robench train --resume` on that folder
        with pytest.raises(BadInput, match="another robench train is using the run folder"):
            train("resnet20", ds, ds, epochs=1, batch_size=8, run_dir=run, resume=True, seed=1, progress=False,
                  log=lambda m: None)
    assert not (run / "state.safetensors").exists()


# -- 25.11 hangs and unbounded sizes -----------------------------------------------------------
def test_25_11_a_fifo_or_dev_zero_as_a_cell_file_is_refused_without_hanging(tmp_path):
    from robench.sweep import merge

    out = sweep_with_cells(tmp_path)
    os.mkfifo(out / "cells" / "abc.json")
    with pytest.raises(BadInput, match="FIFO"):
        no_hang(lambda: merge(out))
    os.unlink(out / "cells" / "abc.json")
    (out / "cells" / "abc.json").symlink_to("/dev/zero")
    with pytest.raises(BadInput, match="special file"):
        no_hang(lambda: merge(out))


def test_25_11_a_fifo_as_sweep_json_or_lock_is_refused_without_hanging(tmp_path):
    from robench.store import DiskStore
    from robench.sweep import merge

    out = tmp_path / "sw"
    out.mkdir()
    os.mkfifo(out / "sweep.json")
    with pytest.raises(BadInput, match="FIFO"):
        no_hang(lambda: merge(out))
    os.unlink(out / "sweep.json")
    os.mkfifo(out / ".lock")
    store = DiskStore(out=out, fingerprint={}, weights={}, config={}, planned={})

    def open_store():
        with store.open():
            pass

    with pytest.raises(BadInput, match="FIFO"):
        no_hang(open_store)


def test_25_11_a_fifo_at_the_old_fetch_lock_path_does_not_hang_the_fetch(tmp_path):
    """The fetch locks its data folder itself (flock), so a FIFO planted where a lock file used to be is
    never opened: the fetch goes on to its checksum (and refuses the archive) instead of hanging."""
    from robench.fetch import fetch

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    os.mkfifo(tmp_path / ".cifar-10-python.tar.gz.lock")
    with pytest.raises(BadInput, match="has MD5 .*not the stated"):
        no_hang(lambda: fetch("cifar10", data_dir=tmp_path, url=str(archive), md5="0" * 32, log=lambda m: None))


@pytest.mark.parametrize("call,match", [
    (lambda: __import__("robench.analysis.landscape", fromlist=["x"]).t_grid(16 / 255, 10 ** 8), "landscape points"),
    (lambda: __import__("robench.analysis.landscape", fromlist=["x"]).landscape(
        models=["resnet20"], grid2d=True, points2d=10 ** 5), "2-D grid"),
    (lambda: __import__("robench.analysis.stability", fromlist=["x"]).stability(models=["resnet20"], iters=10 ** 8),
     "power iterations"),
    (lambda: __import__("robench.machine", fromlist=["x"]).resolve_threads("100000"), "--threads"),
])
def test_25_11_grid_sizes_iterations_and_threads_are_bounded(call, match):
    with pytest.raises(BadInput, match=match):
        call()


# -- 25.12 decompression bombs -----------------------------------------------------------------
def test_25_12_zoo_import_of_a_zip_bomb_is_refused_before_loading(tmp_path, monkeypatch):
    from model_zoo.importer import import_reference

    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", b"\0" * (100 << 20))  # 100 MB of zeros in about 100 kB
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on the bomb"))
    with pytest.raises(BadInput, match="decompression bomb"):
        import_reference(bomb, "resnet20", out=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


def test_25_12_a_tar_bomb_is_refused_before_extracting_anything(tmp_path, monkeypatch):
    import dataclasses
    import tarfile

    import robench.fetch as fetch_mod

    folder = write_cifar10(tmp_path / "src", [colour_images(2, seed=0)] * 5, colour_images(2, seed=1))
    (folder / "padding.bin").write_bytes(b"\0" * 3_000_000)  # compresses to a few kB
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    small = dataclasses.replace(fetch_mod.SOURCES["cifar10"], size=archive.stat().st_size)  # claims its own size
    monkeypatch.setitem(fetch_mod.SOURCES, "cifar10", small)
    md5 = fetch_mod._md5_file(archive)
    with pytest.raises(BadInput, match="decompression bomb"):
        fetch_mod.fetch("cifar10", data_dir=tmp_path / "data", url=str(archive), md5=md5, log=lambda m: None)
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    assert [p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")] == []


def test_25_12_a_local_archive_larger_than_the_free_space_is_refused(tmp_path, monkeypatch):
    import shutil
    import tarfile
    from collections import namedtuple

    import robench.fetch as fetch_mod

    folder = write_cifar10(tmp_path / "src", [colour_images(2, seed=0)] * 5, colour_images(2, seed=1))
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(BadInput, match="GB free"):
        fetch_mod.fetch("cifar10", data_dir=tmp_path / "data", url=str(archive), md5=fetch_mod._md5_file(archive),
                        log=lambda m: None)
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()


# -- 25.14 unwritable outputs are found before the work ---------------------------------------
def test_25_14_train_into_an_unwritable_zoo_fails_before_reading_data(tmp_path, monkeypatch, capsys):
    from robench.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    import robench.data

    monkeypatch.setattr(robench.data, "load_cifar", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet20", "--data-dir", str(tmp_path), "--out", str(blocker / "zoo"),
              "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# -- 25.16 non-finite weights are refused at write time ---------------------------------------
def test_25_16_zoo_import_of_nan_weights_writes_nothing(tmp_path):
    from model_zoo.importer import import_reference

    from test_zoo_import import _reference_state, _robench_model

    state = _reference_state(_robench_model("resnet20"), "inresnet")
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(BadInput, match="non-finite weights"):
        import_reference(tmp_path / "nan.pth", "resnet20", out=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "resnet20.json").exists()
    assert not (tmp_path / "zoo" / "resnet20.safetensors").exists()


# -- 25.17 two-file updates have one commit point ----------------------------------------------
def _interrupt_nth_replace(monkeypatch, n: int) -> None:
    """Stand for a kill: the n-th os.replace of the process raises KeyboardInterrupt instead."""
    real, count = os.replace, [0]

    def replace(src, dst, **kw):
        count[0] += 1
        if count[0] == n:
            raise KeyboardInterrupt
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)


def test_25_17_a_table_write_killed_between_its_renames_reads_as_the_new_table(tmp_path, monkeypatch):
    old, new = to_frame([row()]), to_frame([row(flags=(1, 0, 0, 0))])
    write_table(old, tmp_path / "t")
    with monkeypatch.context() as m:
        _interrupt_nth_replace(m, 2)
        with pytest.raises(KeyboardInterrupt):
            write_table(new, tmp_path / "t")
    assert read_table(tmp_path / "t.csv")["correct"].tolist() == [1]
    assert read_table(tmp_path / "t.parquet")["correct"].tolist() == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # journal and temporaries gone


def test_25_17_zoo_upgrade_killed_between_its_writes_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from model_zoo.checkpoint import upgrade
    from model_zoo.fileio import sha256_file

    model_zoo.save(model_zoo.create_model("resnet20"), tmp_path / "resnet20")
    # an old-format checkpoint: the same tensors without the architecture header
    w, card = tmp_path / "resnet20.safetensors", tmp_path / "resnet20.json"
    from safetensors.torch import load_file

    save_file(load_file(str(w)), str(w), metadata={"format": "pt"})
    raw = json.loads(card.read_text())
    raw["weights_sha256"] = sha256_file(w)
    card.write_text(json.dumps(raw))
    with monkeypatch.context() as m:
        _interrupt_nth_replace(m, 2)
        with pytest.raises(KeyboardInterrupt):
            upgrade(tmp_path / "resnet20")
    entry = model_zoo.load_entry(tmp_path / "resnet20")  # finished by the reader
    assert entry.card.weights_sha256 == sha256_file(w)


# -- 25.21 CSV formula injection ---------------------------------------------------------------
def test_25_21_formulas_in_names_are_neutralised_in_csv_and_read_back_unchanged(tmp_path):
    from robench.leaderboard import leaderboard, write_csv

    evil = '=HYPERLINK("http://x","y")'
    df = to_frame([row(model=evil), row(model="@SUM(A1)", flags=(1, 0, 0, 0))])
    write_table(df, tmp_path / "t")
    text = (tmp_path / "t.csv").read_text()
    assert "\n=HYPERLINK" not in text and "\n@SUM" not in text and "'=HYPERLINK" in text
    assert read_table(tmp_path / "t.csv")["model"].tolist() == [evil, "@SUM(A1)"]
    write_csv(leaderboard(df, cards={}), tmp_path / "lb.csv")
    import csv

    with open(tmp_path / "lb.csv", newline="") as f:
        cells = [r["model"] for r in csv.DictReader(f)]
    assert sorted(cells) == sorted(["'" + evil, "'@SUM(A1)"]), cells


# -- smaller findings --------------------------------------------------------------------------
def test_output_that_equals_an_input_is_refused(tmp_path, capsys):
    from robench.cli import main

    write_table(to_frame([row()]), tmp_path / "t")
    before = (tmp_path / "t.csv").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(tmp_path / "t.csv"), "-o", str(tmp_path / "t.csv"), "--force"])
    assert e.value.code == 2 and "is also an input" in capsys.readouterr().err
    assert (tmp_path / "t.csv").read_bytes() == before


def test_a_planted_cells_link_is_refused(tmp_path):
    from robench.sweep import merge

    out = tmp_path / "sw"
    out.mkdir()
    (out / "sweep.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (out / "cells").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInput, match="symbolic link"):
        merge(out)


def test_a_planted_partial_download_link_is_not_written_through(tmp_path):
    from robench.fetch import FetchError, _open_part, _part_size

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "x.part").symlink_to(victim)
    with pytest.raises(FetchError, match="not a regular file"):
        _part_size(tmp_path / "x.part")
    with pytest.raises(OSError):
        _open_part(tmp_path / "x.part", append=False)
    assert victim.read_text() == "precious"


def test_a_downloaded_archive_refused_for_its_content_is_deleted_and_says_so(tmp_path, monkeypatch):
    import tarfile

    import robench.fetch as fetch_mod

    folder = tmp_path / "src" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "readme").write_text("no batches")
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    part = tmp_path / "data" / "cifar-10-python.tar.gz.part"

    def download(url, dest, *a, **k):
        dest.write_bytes(archive.read_bytes())

    monkeypatch.setattr(fetch_mod, "_download", download)
    with pytest.raises(BadInput, match="the download was deleted"):
        fetch_mod.fetch("cifar10", data_dir=tmp_path / "data", url="http://mirror.invalid/c.tar.gz",
                        md5=fetch_mod._md5_file(archive), log=lambda m: None)
    assert not part.exists()


def test_safetensors_metadata_that_is_not_text_is_one_line(tmp_path):
    import struct

    from model_zoo.checkpoint import read_header_metadata

    header = json.dumps({"__metadata__": {"robench.arch": {"nested": 1}}}).encode()
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(BadInput, match="must map text to text"):
        read_header_metadata(tmp_path / "w.safetensors")


def test_stale_temporaries_of_a_killed_table_write_are_removed(tmp_path):
    write_table(to_frame([row()]), tmp_path / "t")
    stale = tmp_path / ".tmp-t.999999999.abcdefgh"  # a pid that cannot be alive
    stale.mkdir()
    (stale / "t.parquet").write_bytes(b"half")
    write_table(to_frame([row()]), tmp_path / "t")
    assert not stale.exists()


# -- 25.10 a closed stdout does not stop the work ----------------------------------------------
def test_25_10_sweep_piped_into_head_finishes_every_cell(tmp_path):
    import subprocess

    from engine_helpers import save_fitted

    save_fitted("resnet20")
    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["resnet20"]\ndataset = "samples"\nn = 2\nattacks = ["fgsm"]\neps = ["2/255", "8/255"]\n')
    proc = subprocess.Popen([sys.executable, "-c", "from robench.cli import main; main()", "sweep", str(cfg),
                             "--out", str(tmp_path / "sw"), "--no-checks"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err
    assert len(list((tmp_path / "sw" / "cells").glob("*.json"))) == 3  # clean + fgsm at two ε
    assert len(read_table(tmp_path / "sw" / "results.parquet")) == 5  # and two worst cases


def test_25_14_robench_home_that_is_a_file_is_one_line_for_train(tmp_path, monkeypatch, capsys):
    from robench.cli import main

    (tmp_path / "home").write_text("a file")
    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path / "home"))
    write_cifar10(tmp_path / "data", [colour_images(8, seed=0)] * 5, colour_images(8, seed=1))
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet20", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
              "--batch-size", "8"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "is not a folder" in err, err
