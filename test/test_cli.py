"""The umbrella command: every verb is reachable and `--help` works without importing torch."""

import subprocess
import sys

import pytest

from nmr.cli.main import VERBS, main


def test_no_verb_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert 'VERB' in capsys.readouterr().out


def test_unknown_verb_is_rejected() -> None:
    with pytest.raises(SystemExit) as exc:
        main(['frobnicate'])
    assert exc.value.code == 2


def test_top_level_help_does_not_import_torch() -> None:
    code = 'import sys; from nmr.cli.main import build_parser; build_parser(); print("torch" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == 'False'


@pytest.mark.parametrize('verb', sorted(VERBS))
def test_verb_modules_leave_torch_rclpy_and_onnxruntime_to_run(verb: str) -> None:
    """`nmr VERB --help` imports the verb's module: the heavy runtimes load only when the verb runs."""
    heavy = ('torch', 'rclpy', 'onnxruntime')
    code = f'import sys, {VERBS[verb][0]}; print([m for m in {heavy!r} if m in sys.modules])'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


@pytest.mark.parametrize('verb', sorted(VERBS))
def test_every_verb_has_help(verb: str) -> None:
    proc = subprocess.run([sys.executable, '-m', 'nmr.cli.main', verb, '--help'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f'nmr {verb}' in proc.stdout
