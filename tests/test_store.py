"""The runs table: config columns of runs written before a field existed."""

import json

from scalescope import config as C
from scalescope.store import Store, load


def test_a_field_missing_from_an_old_config_reads_as_its_default(tmp_path):
    store = Store(tmp_path / "s").ensure_writable()
    new = store.add(C.from_dict({"train": {"lr": 1e-3}}))
    old = store.add(C.from_dict({"train": {"lr": 2e-3}}))
    raw = json.loads((old.path / "config.json").read_text())
    del raw["model"]["bias"], raw["train"]["momentum"]  # as if written before these fields existed
    (old.path / "config.json").write_text(json.dumps(raw))
    runs = load(store.path).runs.set_index("id")
    assert runs.loc[old.id, "model.bias"] == runs.loc[new.id, "model.bias"] == C.ModelConfig().bias
    assert runs.loc[old.id, "train.momentum"] == C.TrainConfig().momentum
    # Columns that differ still differ; the stored config itself is left as it was.
    assert runs.loc[old.id, "train.lr"] == 2e-3 and runs.loc[new.id, "train.lr"] == 1e-3
    assert "bias" not in runs.loc[old.id, "config"]["model"]
