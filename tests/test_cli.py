"""The leukdx command line: thin wiring, exit codes and messages."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from leukdx.cli import build_parser, main


def test_every_subcommand_has_a_handler():
    parser = build_parser()
    for argv in (["data", "synth", "x"], ["data", "inspect", "x"], ["data", "augment", "x"],
                 ["data", "tfds", "x", "--data-dir", "d"], ["backbones"],
                 ["train", "-c", "c.yaml"], ["evaluate", "-c", "c.yaml"], ["compare", "a", "b"],
                 ["features", "-c", "c.yaml"], ["export", "run"], ["predict", "m", "p"],
                 ["explain", "m", "i", "--out", "o"]):
        args = parser.parse_args(argv)
        assert callable(args.func), argv


def test_synth_then_inspect_as_csv(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "synth", str(out), "--sources", "2", "--per-class", "3",
                 "--image-size", "48"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--format", "csv",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table["source"]) == ["source_1", "source_2"]
    assert list(table["n_healthy"]) == [3, 3] and list(table["n_leukemia"]) == [3, 3]


def test_config_error_is_reported_with_exit_code_2(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  epocs: 3\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.epocs" in err and "Did you mean 'epochs'" in err
    assert not (tmp_path / "run").exists()


def test_empty_source_is_reported_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "coll" / "src" / "healthy").mkdir(parents=True)
    (tmp_path / "coll" / "src" / "leukemia").mkdir(parents=True)
    code = main(["data", "inspect", str(tmp_path / "coll"),
                 "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2 and "src" in err


def test_backbones_lists_the_registry(capsys):
    from leukdx.models import list_backbones

    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name in list_backbones():
        assert name in out
    for strategy in ("sft", "dft", "msft", "mdft"):
        assert strategy in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "leukdx" in capsys.readouterr().out
