"""python -m jaxtag.report --workdirs runs/cnn runs/cnn_lstm --out report.png

Per-tag MAA of one or more runs side by side (the paper's Figure 4), plus a markdown table of
MAA, the all-negative baseline, ROC-AUC and PR-AUC (written next to the picture as .md).
"""
from __future__ import annotations

import json
import os

from absl import app, flags

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories with eval/test_metrics.json: comma-separated, "
                              "or space-separated (`--workdirs runs/cnn runs/cnn_lstm`).")
_OUT = flags.DEFINE_string("out", "report.png", "Picture to write; the table goes to the same name .md.")


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

    def fmt(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    for key, label in [(t, t) for t in tags] + [(None, "**mean**")]:
        def get(run, metric):
            return runs[run][f"mean_{metric}"] if key is None else runs[run][metric][key]
        cells = [fmt(get(n, "maa")) for n in names] + [fmt(get(names[0], "baseline_maa"))]
        cells += [fmt(get(n, "roc_auc")) for n in names] + [fmt(get(n, "pr_auc")) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    from jaxtag.plots import plot_maa_bars
    # `--workdirs a b` leaves b among the positional arguments: every run named is reported.
    workdirs = list(_WORKDIRS.value or []) + list(argv[1:])
    if not workdirs:
        raise app.UsageError("name the runs: --workdirs runs/cnn runs/cnn_lstm")
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(set(names)) < len(names):  # runs with the same folder name: label them by path
        names = [os.path.normpath(w) for w in workdirs]
    runs = {n: load_metrics(w) for n, w in zip(names, workdirs)}
    tags = [r["tags"] for r in runs.values()]
    if any(t != tags[0] for t in tags):
        raise app.UsageError("the runs were evaluated on different tag sets")
    plot_maa_bars(runs, _OUT.value)
    table_path = os.path.splitext(_OUT.value)[0] + ".md"
    with open(table_path, "w") as f:
        f.write(markdown_table(runs))
    print(f"wrote {_OUT.value} and {table_path}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
