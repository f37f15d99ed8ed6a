from pathlib import Path

import pytest

from lstmkit.config import dumps_toml, from_dict, load_toml, to_dict
from lstmkit.errors import InputError
from lstmkit.lm import LMConfig


@pytest.mark.parametrize("data,match", [
    ({"model": {"dropout_p": 1.5}}, "field 'model.dropout_p': found 1.5"),
    ({"model": {"dropouti_p": -0.1}}, "model.dropouti_p"),
    ({"optim": {"lr": -1.0}}, "optim.lr"),
    ({"data": {"bptt": 0}}, "data.bptt"),
    ({"modle": {}}, "unknown key 'modle'"),
    ({"model": {"hidden": 3}}, "unknown key 'model.hidden'"),
    ({"model": {"num_layers": "three"}}, "an integer"),
    ({"optim": {"optimizer": "rmsprop"}}, "one of 'ntasgd'"),
])
def test_bad_config_values(tmp_path, data, match):
    with pytest.raises(InputError, match=match):
        from_dict(LMConfig, data, "cfg.toml")


def test_toml_roundtrip(tmp_path):
    cfg = from_dict(LMConfig, {"model": {"hidden_size": 17}, "train": {"max_minutes": 2.5}})
    p = tmp_path / "c.toml"
    p.write_text(dumps_toml(to_dict(cfg)))
    assert load_toml(LMConfig, p) == cfg


def test_shipped_configs_load():
    from lstmkit.las import LASRunConfig
    shipped = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert len(shipped) >= 8
    for path in shipped:                      # every shipped config parses and passes validation
        load_toml(LASRunConfig if path.name.startswith("las-") else LMConfig, path)


def test_bad_toml_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model\n")
    with pytest.raises(InputError, match="bad.toml: not valid TOML"):
        load_toml(LMConfig, p)


@pytest.mark.parametrize("literal", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize("family,table,key", [("lm", "optim", "lr"), ("lm", "optim", "clip"),
                                              ("lm", "train", "max_minutes"), ("lm", "model", "dropout_p"),
                                              ("las", "optim", "lr"), ("las", "train", "max_minutes")])
def test_toml_nan_and_inf_literals_are_refused_naming_file_and_field(tmp_path, literal, family, table, key):
    # TOML has nan/inf literals, and nan passes every "< min" / "> max" test: each float setting
    # refuses them by itself (none means "no limit": that is a missing key)
    from lstmkit.las import LASRunConfig
    p = tmp_path / "c.toml"
    p.write_text(f"[{table}]\n{key} = {literal}\n")
    with pytest.raises(InputError, match=rf"c\.toml: field '{table}\.{key}': found .*; expected a finite number"):
        load_toml(LASRunConfig if family == "las" else LMConfig, p)
