"""Reading users' YAML: YAML 1.2 numbers, repeated keys, encodings and control characters, the README's examples."""

import re
from pathlib import Path

import pytest

import autonorm
from autonorm.comparison import load_protocol
from autonorm.yamlfile import parse_yaml
from tests.conftest import run_cli, write

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize(("text", "value"), [("5e-4", 5e-4), ("1E+3", 1e3), ("-2e-2", -0.02), ("1.0e-3", 1e-3)])
def test_exponent_only_numbers_are_floats(text, value):
    data, _ = parse_yaml(f"lr: {text}\nname: 1e3x\n")
    assert data == {"lr": value, "name": "1e3x"} and isinstance(data["lr"], float)


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
