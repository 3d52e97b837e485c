"""`llm-server inspect --json` agrees with gguf-py's reader on every tensor and metadata key."""
import json

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from helpers import real_models, run


def gguf_py_scalar(field):
    """A scalar metadata value as gguf-py reads it."""
    value = field.contents()
    if field.types[0] == GGUFValueType.FLOAT32:
        return float(np.float32(value))
    return value


def check_file(path):
    doc = json.loads(run("inspect", "--json", path).stdout)
    ref = GGUFReader(str(path))
    tensors = doc["tensors"]
    assert len(tensors) == len(ref.tensors)
    for ours, theirs in zip(tensors, ref.tensors):
        assert ours["name"] == theirs.name
        assert ours["type"].lower() == theirs.tensor_type.name.lower()
        assert ours["shape"] == [int(d) for d in theirs.shape]
        assert ours["elements"] == int(theirs.n_elements)
        assert ours["bytes"] == int(theirs.n_bytes)
        assert ours["offset"] == int(theirs.data_offset)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(doc["metadata"]) == keys
    for key in keys:
        field = ref.fields[key]
        ours = doc["metadata"][key]
        if field.types[0] == GGUFValueType.ARRAY:
            n = len(field.data)
            assert (ours["len"] if isinstance(ours, dict) else len(ours)) == n, key
        else:
            theirs = gguf_py_scalar(field)
            if isinstance(theirs, float):
                assert np.float32(ours) == np.float32(theirs), key
            else:
                assert ours == theirs, key
    assert doc["totals"]["all"]["bytes"] == sum(int(t.n_bytes) for t in ref.tensors)
    return doc


@pytest.mark.parametrize("index", range(3))
def test_inspect_real_models(index):
    models = real_models()
    if index >= len(models):
        pytest.skip("real models not fetched (scripts/fetch-models.py sets LLM_SERVER_MODELS)")
    doc = check_file(models[index])
    text = run("inspect", models[index]).stdout
    assert "totals by type" in text and "experts vs the rest" in text
    assert doc["architecture"] in ("llama", "gemma3", "qwen2")


def test_inspect_synth_experts_share(tiny_synth):
    doc = check_file(tiny_synth)
    totals = doc["totals"]
    assert doc["architecture"] == "qwen35moe"
    assert totals["routed_experts"]["count"] == 3 * 4  # gate/up/down × 4 layers


def test_inspect_rejects_non_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTGGUF" + bytes(64))
    from helpers import binary
    import subprocess
    proc = subprocess.run([str(binary()), "inspect", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "magic" in proc.stderr.lower()
    assert "panicked" not in proc.stderr
