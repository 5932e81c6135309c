"""Comparing runs: per-tag MAA side by side (the paper's Figure 4) and a markdown table of MAA,
the all-negative baseline, ROC-AUC and PR-AUC, from each run's eval/test_metrics.json."""
from __future__ import annotations

import json
import os
import platform

import numpy as np

from jaxtag.data.tags import short_tag


def _fmt(v) -> str:
    """A metric for a table: 3 decimals, "n/a" where undefined (None or NaN)."""
    return "n/a" if v is None or v != v else f"{v:.3f}"


def load_metrics(workdir: str) -> dict:
    path = os.path.join(workdir, "eval", "test_metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no test metrics; train or run --mode=eval first")
    with open(path) as f:
        return json.load(f)


def markdown_table(runs: dict[str, dict]) -> str:
    names = list(runs)
    tags = runs[names[0]]["tags"]
    head = "| tag | " + " | ".join(f"{n} MAA" for n in names) + " | all-negative MAA | " + \
        " | ".join(f"{n} ROC-AUC" for n in names) + " | " + " | ".join(f"{n} PR-AUC" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(names))]

    for key, label in [(t, t) for t in tags] + [(None, "**mean**")]:
        def get(run, metric):
            return runs[run][f"mean_{metric}"] if key is None else runs[run][metric][key]
        cells = [_fmt(get(n, "maa")) for n in names] + [_fmt(get(names[0], "baseline_maa"))]
        cells += [_fmt(get(n, "roc_auc")) for n in names] + [_fmt(get(n, "pr_auc")) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_maa_bars(runs: dict[str, dict], path: str) -> None:
    """Per-tag MAA of one or more runs side by side, with the all-negative baseline (paper Fig. 4)."""
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    names = list(runs)
    tags = runs[names[0]]["tags"]
    x = np.arange(len(tags))
    width = 0.8 / (len(names) + 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(tags)), 4.5))
    for i, name in enumerate(names):
        ax.bar(x + i * width, [runs[name]["maa"][t] for t in tags], width, label=name)
    ax.bar(x + len(names) * width, [runs[names[0]]["baseline_maa"][t] for t in tags], width,
           label="all-negative baseline", color="#cbd5e1")
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels([short_tag(t) for t in tags], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean average accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(workdirs: list[str], out: str) -> tuple[str, str]:
    """The picture at `out` and the table beside it (.md). Runs are named by folder (by path where
    two share a folder name) and must have been evaluated on the same tags."""
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(set(names)) < len(names):  # runs with the same folder name: label them by path
        names = [os.path.normpath(w) for w in workdirs]
    runs = {n: load_metrics(w) for n, w in zip(names, workdirs)}
    tags = [r["tags"] for r in runs.values()]
    if any(t != tags[0] for t in tags):
        raise ValueError("the runs were evaluated on different tag sets")
    plot_maa_bars(runs, out)
    table_path = os.path.splitext(out)[0] + ".md"
    with open(table_path, "w") as f:
        f.write(markdown_table(runs))
    return out, table_path


def _mean_std(values) -> str:
    """mean +- sample std of a metric over runs ("n/a" where undefined); one run: its value."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def results_table(records: dict[str, dict], data_root: str = "") -> str:
    """The markdown of docs/results.md (scripts/experiments.py) from experiment records:
    {name: {"config", "model", "epochs", "train_and_eval_seconds", "metrics": test metrics of the
    first split, "runs": test metrics of every split (optional), "split_seeds"}}. Experiments run
    on several splits show mean +- std over them in the first table; the others show the first."""
    import jax
    corpus = data_root or "the built-in synthetic corpus (configs/default.py: data.synthetic)"
    lines = [
        "# Results", "",
        f"Produced by `python scripts/experiments.py{' --data_root=' + data_root if data_root else ''}` "
        f"on {corpus}; test split, best checkpoint by validation macro ROC-AUC. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, JAX {jax.__version__} on {jax.devices()[0].platform}.",
        "", "Macro means over tags (tags with one class only in the test windows are left out of ROC-AUC).",
        "MAA is the paper's mean average accuracy; the all-negative baseline predicts every tag absent.",
        "Where several split seeds are listed, each metric is the mean ± sample standard deviation over",
        "those random train/validation/test splits (the test split is small: one split cannot rank configs).", "",
        "The validation ROC-AUC is that of the checkpoint evaluated (the best on validation).", "",
        "| experiment | config | model | ROC-AUC | PR-AUC | F1 | MAA | all-negative MAA | validation ROC-AUC | "
        "split seeds | epochs | train+eval time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in records.items():
        runs = r.get("runs") or [r["metrics"]]
        cells = [_mean_std([m[f"mean_{k}"] for m in runs]) for k in ("roc_auc", "pr_auc", "f1", "maa", "baseline_maa")]
        cells.append(_mean_std([m.get("checkpoint", {}).get("validation", {}).get("mean_roc_auc") for m in runs]))
        seeds = ", ".join(str(s) for s in r.get("split_seeds", [0]))
        lines.append(f"| {name} | configs/{r['config']}.py | {r['model']} | " + " | ".join(cells) +
                     f" | {seeds} | {r['epochs']} | {r['train_and_eval_seconds'] / 60:.1f} min |")
    lines += ["", "## Per category (macro means over each category's tags; first split)", "",
              "| experiment | category | tags | ROC-AUC | PR-AUC | F1 | MAA | all-negative MAA |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in records.items():
        for cat, c in r["metrics"].get("categories", {}).items():
            lines.append(f"| {name} | {cat} | {c['num_tags']} | {_fmt(c['mean_roc_auc'])} | {_fmt(c['mean_pr_auc'])} | "
                         f"{_fmt(c['mean_f1'])} | {_fmt(c['mean_maa'])} | {_fmt(c['mean_baseline_maa'])} |")
    lines += ["", "## Per tag ROC-AUC (emotion tags; first split)", ""]
    names = list(records)
    tags = records[names[0]]["metrics"]["tags"]
    lines.append("| tag | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for t in tags:
        lines.append(f"| {t} | " + " | ".join(_fmt(records[n]["metrics"]["roc_auc"].get(t)) for n in names) + " |")
    return "\n".join(lines) + "\n"
