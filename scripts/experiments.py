"""Train each named config and write a results table (docs/results.md).

    python scripts/experiments.py                       # the built-in synthetic corpus
    python scripts/experiments.py --data_root=/data/CAL500exp --out=docs/results_cal500exp.md

The test split holds few tracks (6 of the synthetic corpus's 60), so one split cannot separate
configs: the --seeded experiments run once per --split_seeds (data.split_seed, a new random
train/validation/test split each) and are reported as mean +- std. Runs go to
--runs/<name>/split<seed> and resume if present (delete them to retrain). The table is produced
from each run's test metrics, never written by hand.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags, logging  # noqa: E402

EXPERIMENTS = {  # name -> config module in configs/
    "paper_cnn": "cnn",
    "paper_cnn_lstm": "cnn_lstm",
    "logmel_cnn_lstm": "logmel_cnn_lstm",
    "resnet_lstm": "resnet_lstm",
    "resnet_attention": "resnet_attention",
    "resnet_bilstm": "resnet_bilstm",
    "resnet_attention_all_tags": "resnet_attention_all_tags",   # 67 tags, reported per category
    "musicnn_lstm": "musicnn_lstm",                             # pretrained musicnn trunk, frozen
    "musicnn_lstm_finetune": "musicnn_lstm_finetune",           # ... fine-tuned
}
# The paper's CNN+LSTM, the best config without pretraining, and the pretrained ones.
# The paper's cnn_lstm, the two best configs without pretraining on the first split, the musicnn ones.
SEEDED = ("paper_cnn_lstm", "resnet_lstm", "resnet_attention", "musicnn_lstm", "musicnn_lstm_finetune")

_NAMES = flags.DEFINE_list("names", [n for n in EXPERIMENTS if n != "resnet_bilstm"],
                           f"Experiments to run, from {list(EXPERIMENTS)}.")
_SEEDED = flags.DEFINE_list("seeded", list(SEEDED), "Experiments run once per split seed.")
_SPLIT_SEEDS = flags.DEFINE_list("split_seeds", ["0", "1", "2"], "data.split_seed of the seeded experiments.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", "CAL500exp directory; empty: the synthetic corpus.")
_RUNS = flags.DEFINE_string("runs", os.path.join("runs", "experiments"), "Where the runs go.")
_OUT = flags.DEFINE_string("out", os.path.join("docs", "results.md"), "The results table.")
_EPOCHS = flags.DEFINE_integer("num_epochs", None, "Override every config's train.num_epochs.")


def run_once(name: str, split_seed: int) -> dict:
    """Train and evaluate one experiment on one split; its record (kept beside the run)."""
    from jaxtag.training.loop import train_and_evaluate
    config = importlib.import_module(f"configs.{EXPERIMENTS[name]}").get_config()
    config.data.root = _DATA_ROOT.value
    config.data.split_seed = split_seed
    if _EPOCHS.value:
        config.train.num_epochs = _EPOCHS.value
    workdir = os.path.join(_RUNS.value, name, f"split{split_seed}")
    record_path = os.path.join(workdir, "experiment.json")
    record = json.load(open(record_path)) if os.path.exists(record_path) else {"train_and_eval_seconds": 0.0}
    start = time.time()
    metrics = train_and_evaluate(config, workdir)
    if record.get("metrics") is None or record.get("epochs") != config.train.num_epochs:
        record["train_and_eval_seconds"] += time.time() - start   # not a finished run evaluated again
    record.update(config=EXPERIMENTS[name], model=config.model.name, epochs=config.train.num_epochs,
                  split_seed=split_seed, metrics=metrics)
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)
    return record


def run_experiment(name: str) -> dict:
    """Every split of an experiment: the first split's record, with all splits' metrics in "runs"."""
    seeds = [int(s) for s in _SPLIT_SEEDS.value] if name in _SEEDED.value else [0]
    records = [run_once(name, seed) for seed in seeds]
    return {**records[0], "runs": [r["metrics"] for r in records], "split_seeds": seeds,
            "train_and_eval_seconds": sum(r["train_and_eval_seconds"] for r in records)}


def main(argv):
    del argv
    from jaxtag.evaluation.report import results_table
    from jaxtag.logs import setup_cli_logging
    setup_cli_logging()
    unknown = [n for n in _NAMES.value if n not in EXPERIMENTS]
    if unknown:
        raise app.UsageError(f"unknown experiments {unknown}; known: {list(EXPERIMENTS)}")
    records = {}
    for name in _NAMES.value:
        logging.info("=== experiment %s ===", name)
        records[name] = run_experiment(name)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        f.write(results_table(records, _DATA_ROOT.value))
    print(open(_OUT.value).read())


if __name__ == "__main__":
    app.run(main)
