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


def test_cli_reference_in_docs_is_generated_from_the_parser_and_every_flag_has_help():
    import argparse
    from lstmkit.cli import build_parser
    from lstmkit.cli_parser import commands, reference
    parser = build_parser()
    cli_md = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert reference(parser) in cli_md, "docs/cli.md is out of date: regenerate its Reference section"
    for name, sub in commands(parser):
        for a in sub._actions:
            if not isinstance(a, argparse._HelpAction):
                assert a.help, f"lstmkit {name} {a.option_strings or a.dest}: no help text"
    top = parser.format_help()
    assert "``" not in top and all(c in top for c in ("finetune", "prepare", "transcribe", "configs"))
