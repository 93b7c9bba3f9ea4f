"""The embedded model's folder loads only what its manifest vouches for; its shipped files carry no machine paths."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from safetensors.torch import load_file, save_file

import diffattn
from diffattn.pipelines.tiny_shapes import pipeline as tm

PACKAGE = Path(diffattn.__file__).resolve().parent


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _copy_weights(tmp_path: Path) -> Path:
    dest = tmp_path / "w"
    shutil.copytree(tm.WEIGHTS_DIR, dest)
    return dest


def test_unlisted_index_and_shard_are_refused(tmp_path):
    """An added index file pointing at an unverified shard (diffusers would load it in place of the listed
    weights), and an added pickle: both refused before anything is read, nothing executed."""
    dest = _copy_weights(tmp_path)
    transformer = dest / "transformer"
    state = load_file(str(transformer / "diffusion_pytorch_model.safetensors"))
    shard = "diffusion_pytorch_model-00001-of-00001.safetensors"
    save_file({k: v.zero_() for k, v in state.items()}, str(transformer / shard))
    index = {"metadata": {"total_size": 0}, "weight_map": dict.fromkeys(state, shard)}
    (transformer / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(tm.WeightsCheckError, match=r"holds 2 file\(s\) its manifest does not list \(transformer/"
                       r"diffusion_pytorch_model-00001-of-00001\.safetensors, transformer/diffusion_pytorch_model"
                       r"\.safetensors\.index\.json\): refused") as e:  # fmt: skip
        tm.tiny_model(dest)
    assert "\n" not in str(e.value)
    for f in (transformer / shard, transformer / "diffusion_pytorch_model.safetensors.index.json"):
        f.unlink()
    marker = tmp_path / "marker"
    (transformer / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(tm.WeightsCheckError, match=r"\(transformer/diffusion_pytorch_model\.bin\): refused"):
        tm.tiny_model(dest)
    assert not marker.exists()
    (transformer / "diffusion_pytorch_model.bin").unlink()
    assert tm.tiny_model(dest) is not None  # the listed files alone load


def test_corrupted_file_is_one_line_at_the_cli(tmp_path, capsys, monkeypatch):
    from diffattn.cli import main

    dest = _copy_weights(tmp_path)
    f = dest / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    monkeypatch.setattr(tm, "WEIGHTS_DIR", dest)
    out = tmp_path / "out"
    assert main(["generate", "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("diffattn: error: tiny model file corrupted (sha256 mismatch): ")
    assert "diffusion_pytorch_model.safetensors" in err[0] and not out.exists()


def _strings(value: object):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _absolute(text: str) -> bool:
    return PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive != ""


def test_no_packaged_file_holds_an_absolute_path():
    """Every package-data file (JSON configs, tokenizer files, safetensors headers): no string is an absolute path
    (the shipped configs once carried the training machine's ``_name_or_path``)."""
    data_files = sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc", ".cpp"))
    assert any(p.suffix == ".json" for p in data_files) and any(p.suffix == ".safetensors" for p in data_files)
    found = []
    for p in data_files:
        if p.suffix == ".json":
            strings = list(_strings(json.loads(p.read_text(encoding="utf-8"))))
        elif p.suffix == ".safetensors":
            raw = p.read_bytes()
            (n,) = struct.unpack("<Q", raw[:8])
            strings = list(_strings(json.loads(raw[8 : 8 + n])))
        else:
            pytest.fail(f"unexpected package data file {p.relative_to(PACKAGE)}: teach this test to read it")
        found += [(p.relative_to(PACKAGE).as_posix(), s) for s in strings if _absolute(s)]
        assert b"/work/" not in p.read_bytes() and b"/home/" not in p.read_bytes(), p
    assert found == []


def test_write_manifest_strips_machine_paths(tmp_path):
    dest = _copy_weights(tmp_path)
    for rel in ("model_index.json", "transformer/config.json"):
        f = dest / rel
        config = json.loads(f.read_text())
        config["_name_or_path"] = str(tmp_path / "runs" / "last")
        f.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tm.write_manifest(dest)
    for rel in ("model_index.json", "transformer/config.json"):
        assert "_name_or_path" not in json.loads((dest / rel).read_text())
        assert (dest / rel).read_bytes() == (tm.WEIGHTS_DIR / rel).read_bytes()  # the shipped files are this form
    assert (dest / "manifest.json").read_bytes() == (tm.WEIGHTS_DIR / "manifest.json").read_bytes()
    assert tm.tiny_model(dest) is not None
