"""Reading users' YAML: YAML 1.2 numbers, repeated keys, encodings and control characters, the README's examples."""

import os
import re
import subprocess
from pathlib import Path

import pytest

import autonorm
from autonorm.comparison import load_protocol
from autonorm.yamlfile import parse_yaml
from tests.conftest import AUTONORM, run_cli, write

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize(("text", "value"), [("5e-4", 5e-4), ("1E+3", 1e3), ("-2e-2", -0.02), ("1.0e-3", 1e-3)])
def test_exponent_only_numbers_are_floats(text, value):
    data, _ = parse_yaml(f"lr: {text}\nname: 1e3x\n")
    assert data == {"lr": value, "name": "1e3x"} and isinstance(data["lr"], float)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[relu, no, off, on, yes, y, n]", ["relu", "no", "off", "on", "yes", "y", "n"]),  # YAML 1.1 booleans
        ("[true, False, TRUE]", [True, False, True]),
        ("[010, 0o10, 0x1f, -3, +4]", [10, 8, 31, -3, 4]),  # YAML 1.1: 010 is 8
        ("[1:30, 1_000]", ["1:30", "1_000"]),  # YAML 1.1: 90 and 1000
        ("[.5, -2., .inf, 1.0e-05]", [0.5, -2.0, float("inf"), 1e-05]),
    ],
)
def test_plain_scalars_are_read_as_yaml_1_2(text, value):
    data, _ = parse_yaml(f"a: {text}\n")
    assert data["a"] == value and [type(v) for v in data["a"]] == [type(v) for v in value]


def test_a_misread_no_is_now_an_unknown_name(tmp_path):
    """YAML 1.1 read ``no`` as false, and the error spoke of False."""
    proc = run_cli(
        "validate", str(write(tmp_path / "s.yaml", "name: s\nspace: {activation: [relu, no]}\n")), check=False
    )
    assert proc.returncode == 2 and "unknown activation 'no'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("text", ["data: &d {dataset: digits, self: *d}\n", "space: {activation: &a [relu, *a]}\n"])
def test_an_alias_inside_its_own_anchor_is_an_error_not_a_recursion(tmp_path, text):
    proc = run_cli("validate", str(write(tmp_path / "r.yaml", "name: r\n" + text)), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "the anchor on line 2 is used inside its own value" in proc.stderr


def test_an_error_is_one_line_in_a_narrow_terminal_or_a_log(tmp_path):
    path = write(tmp_path / "m.yaml", "name: m\nspace: {normalization: [batchnrom]}\n")
    proc = subprocess.run(
        [AUTONORM, "validate", str(path)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"}
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "unknown normalization 'batchnrom'; did you mean 'batchnorm'?" in proc.stderr


def test_a_key_given_twice_is_an_error_at_its_second_line(tmp_path):
    text = "name: dk\ntrain:\n  epochs: 50\nsearch: {trials: 2}\ntrain:\n  batch_size: 32\n"
    with pytest.raises(autonorm.SpecError) as info:
        autonorm.load_spec(write(tmp_path / "dk.yaml", text))
    assert str(info.value) == (
        f"{tmp_path / 'dk.yaml'}:5:1: key 'train' given twice in one mapping (first on line 2); the first would be "
        "ignored"
    )
    nested = "model: {backbone: small_cnn, width: 8, width: 16}\n"
    with pytest.raises(autonorm.SpecError, match=r":1:40: key .width. given twice"):
        autonorm.load_spec(write(tmp_path / "n.yaml", nested))


def test_merge_keys_and_anchors_still_work(tmp_path):
    text = "base: &b {epochs: 1, lr: 0.1}\ntrain: {<<: *b, batch_size: 16}\n"
    data, _ = parse_yaml(text)
    assert data["train"] == {"epochs": 1, "lr": 0.1, "batch_size": 16}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9); save the file as UTF-8"),
        (b"\x01\x02\n", "invalid YAML: unacceptable character #x0001 at offset 0"),
        (b"name: a\x00b\n", "invalid YAML: unacceptable character #x0000 at offset 7"),
    ],
)
def test_undecodable_or_control_characters_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    for command in ("validate", "search"):
        proc = run_cli(command, str(path), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert " ".join(proc.stderr.split()) == f"error: {path}: {message}"


def test_the_readme_space_and_protocol_examples_are_valid(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    space = next(b for b in blocks if b.startswith("name: quickstart"))
    spec = autonorm.load_spec(write(tmp_path / "tour.yaml", space))
    assert spec.train["weight_decay"].value == 5e-4
    protocol = next(b for b in blocks if b.startswith("name: compare_normalizations"))
    (tmp_path / "my_arrays.npz").touch()  # the protocol names the user's own file: validation only reads its path
    load_protocol(write(tmp_path / "protocol.yaml", protocol), autonorm.get_registry())
