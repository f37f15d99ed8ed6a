"""Docs stay in step with the code: every config field is documented."""
import dataclasses
from pathlib import Path

from lstmkit.las.config import LASDataConfig, LASOptimConfig, LASTrainConfig
from lstmkit.las.model import LASConfig
from lstmkit.las.toy import ToyConfig
from lstmkit.lm.config import DataConfig, OptimConfig, TrainConfig
from lstmkit.lm.model import AWDLSTMConfig

DOC = (Path(__file__).parents[1] / "docs" / "configs.md").read_text()


def test_every_config_field_is_in_docs_configs_md():
    for cls, prefix in [(AWDLSTMConfig, ""), (DataConfig, ""), (OptimConfig, ""), (TrainConfig, ""), (LASConfig, ""),
                        (LASDataConfig, ""), (LASOptimConfig, ""), (LASTrainConfig, ""), (ToyConfig, "toy.")]:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name == "toy":
                continue
            assert f"`{prefix}{f.name}`" in DOC or f"{prefix}{f.name}`" in DOC, f"{cls.__name__}.{f.name}"
