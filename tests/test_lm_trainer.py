import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import in_process, tiny_config
from lstmkit.errors import InputError
from lstmkit.lm import LanguageModelTrainer, TestLanguageModel, load_model


@pytest.mark.slow
def test_tiny_model_learns_small_corpus_and_writes_artifacts(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=3)
    trainer = LanguageModelTrainer.from_config(cfg, run_id="r")
    res = trainer.fit()
    # uniform over 20 words would be ppl 20; the grammar allows about 5 choices per slot
    assert res["val_ppl"] < 6.0 and res["test_ppl"] < 6.0
    run = tmp_path / "runs" / "r"
    for e in (1, 2, 3):
        for name in (f"predictions-{e}.npy", f"predictions-test-{e}.npy", f"generated-{e}.txt", f"generated-{e}-test.txt"):
            assert (run / name).is_file(), name
    assert (run / "loss.png").stat().st_size > 5000
    scores = np.load(run / "predictions-3.npy")
    assert scores.shape == (8, len(trainer.vocab)) and scores.dtype == np.float32
    line = (run / "generated-3.txt").read_text().splitlines()[0]
    assert " | " in line and len(line.split(" | ")[1].split()) == cfg.train.generate_len
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    model = load_model(run)
    assert model.vocab.itos == trainer.vocab.itos and not model.training
    ids = np.asarray([model.vocab.encode("the cat".split())])
    nxt = model.vocab.decode(TestLanguageModel.generation(ids, 1, model)[0])
    assert nxt[0] in {"sees", "likes", "finds", "follows"}


@pytest.mark.slow
def test_resume_continues_the_same_run_exactly(small_corpus, tmp_path):
    full = LanguageModelTrainer.from_config(tiny_config(small_corpus, tmp_path / "a", epochs=2), run_id="r")
    full.fit()
    part = LanguageModelTrainer.from_config(tiny_config(small_corpus, tmp_path / "b", epochs=1), run_id="r")
    part.fit()
    resumed = LanguageModelTrainer.resume(tmp_path / "b" / "r", {"train": {"epochs": 2}})
    resumed.max_epochs = 2
    resumed.fit()
    assert resumed.val_losses == full.val_losses
    a = json.loads((tmp_path / "a" / "r" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "r" / "results.json").read_text())
    assert a["test_loss"] == b["test_loss"]


def test_resume_rejects_non_run_folder(tmp_path):
    with pytest.raises(InputError, match="not a run folder"):
        LanguageModelTrainer.resume(tmp_path)


@pytest.mark.slow
def test_cli_train_eval_generate(small_corpus, tmp_path, capsys):
    """Training through ``python -m lstmkit`` (the entry point), then the other commands in this process."""
    sets = ["--set", f'data.path="{small_corpus}"', "--set", 'data.format="text"', "--set", "model.emb_size=16",
            "--set", "model.hidden_size=32", "--set", "model.num_layers=2", "--set", "data.batch_size=8",
            "--set", "data.bptt=12", "--set", "train.precision=\"fp32\"", "--set", "train.n_predictions=4"]
    r = subprocess.run([sys.executable, "-m", "lstmkit", "lm", "train", "--config", "configs/tiny.toml", "--runs-dir",
                        str(tmp_path), "--run-id", "x", "--epochs", "1"] + sets, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dev NLL" in r.stdout

    def cli(*args):
        return in_process(capsys, args)
    r = cli("lm", "eval", tmp_path / "x", "--n-contexts", "50")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert math.isfinite(out["ppl"]) and out["fixed_context_nll"] > 0
    r = cli("lm", "eval", tmp_path / "x", "--n-contexts", "0", "--cache", "--cache-grid",
            "--grid-thetas", "0.1,0.5", "--grid-lambdas", "0.1", "--window", "50", "--dynamic-eval",
            "--de-method", "sgd", "--de-lr", "0.1", "--de-bptt", "10")
    assert r.returncode == 0, r.stderr
    out2 = json.loads(r.stdout.strip().splitlines()[-1])
    assert out2["ppl"] == pytest.approx(out["ppl"]) and out2["cache_grid_valid"]["n"] == 2
    for key in ("cache", "dynamic_eval", "dynamic_eval_cache"):
        assert math.isfinite(out2[key]["ppl"]), key
    r = cli("lm", "generate", tmp_path / "x", "--prompt", "the cat qqq", "--max-new-tokens", "3")
    assert r.returncode == 0 and len(r.stdout.split()) == 3 and "<unk>" in r.stderr
    # bad input: one clear line, exit status 2, no traceback
    r = cli("lm", "train", "--config", "configs/tiny.toml", "--set", "model.dropout_p=1.5")
    assert r.returncode == 2 and "model.dropout_p" in r.stderr and "Traceback" not in r.stderr
    r = cli("lm", "eval", small_corpus)
    assert r.returncode == 2 and "not a run folder" in r.stderr


@pytest.mark.slow
def test_finetune_starts_from_best_weights_and_averages_from_the_first_step(small_corpus, tmp_path):
    base = LanguageModelTrainer.from_config(tiny_config(small_corpus, tmp_path / "runs", epochs=1), run_id="r")
    res = base.fit()
    ft = LanguageModelTrainer.finetune(tmp_path / "runs" / "r", overrides={"train": {"epochs": 2}})
    assert ft.run.path == tmp_path / "runs" / "r-finetune" and ft.opt.averaging
    out = ft.fit()
    recs = [json.loads(x) for x in (ft.run.path / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["type"] == "finetune" and recs[0]["from_val_loss"] == pytest.approx(res["val_loss"], rel=1e-6)
    assert all(r["averaging"] for r in recs if r["type"] == "valid")
    assert out["val_loss"] < res["val_loss"] + 0.05          # continues from the trained model, not from scratch
    assert (ft.run.path / "results.json").is_file()


@pytest.mark.slow
def test_char_level_model_trains_and_generates_characters(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for name, n in (("train", 400), ("valid", 40), ("test", 40)):
        (corpus / f"{name}.txt").write_text("\n".join(["one two three", "four five"] * (n // 2)) + "\n")
    cfg = tiny_config(corpus, tmp_path / "runs", epochs=3)
    cfg.data.unit = "char"
    cfg.optim.optimizer, cfg.optim.lr, cfg.model.dropout_scale = "adam", 0.01, 0.2
    trainer = LanguageModelTrainer.from_config(cfg, run_id="c")
    res = trainer.fit()
    assert res["val_ppl"] < 4.0                                      # 15 characters; the lines are fixed
    model = load_model(tmp_path / "runs" / "c")
    assert model.vocab.unit == "char" and " " in model.vocab
    r = subprocess.run([sys.executable, "-m", "lstmkit", "lm", "generate", str(tmp_path / "runs" / "c"),
                        "--prompt", "one tw", "--max-new-tokens", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("o three") or r.stdout.startswith("o thre"), r.stdout
