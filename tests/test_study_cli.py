"""python -m fastalex.reproduce's command line: its flags and the one-line errors."""

import pytest

from fastalex.training.study import claims, cli


def test_unknown_claim_lists_the_valid_ones(capsys, tmp_path):
    assert cli.main(["--claims", "lrn,relu", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m fastalex.reproduce: error: --claims: unknown claim 'relu' "
                   f"(valid: {', '.join(claims.NAMES)})"]
    assert not any(tmp_path.iterdir())  # refused before any work


def test_seeds_must_be_positive(capsys, tmp_path):
    assert cli.main(["--seeds", "0", "--output-dir", str(tmp_path)]) == 2
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err


def test_help_names_every_claim_and_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in (*claims.NAMES, "--claims", "--seeds", "--quick", "--output-dir", "--data",
                 "--device", "runs/reproduce"):
        assert word in text, word
