"""python -m jaxtag.report --workdirs runs/cnn runs/cnn_lstm --out report.png

Per-tag MAA of one or more runs side by side (the paper's Figure 4), plus a markdown table of
MAA, the all-negative baseline, ROC-AUC and PR-AUC (written next to the picture as .md).
"""
from __future__ import annotations

from absl import app, flags

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories with eval/test_metrics.json: comma-separated, "
                              "or space-separated (`--workdirs runs/cnn runs/cnn_lstm`).")
_OUT = flags.DEFINE_string("out", "report.png", "Picture to write; the table goes to the same name .md.")


def main(argv):
    from jaxtag.evaluation.report import write_report
    # `--workdirs a b` leaves b among the positional arguments: every run named is reported.
    workdirs = list(_WORKDIRS.value or []) + list(argv[1:])
    if not workdirs:
        raise app.UsageError("name the runs: --workdirs runs/cnn runs/cnn_lstm")
    try:
        picture, table = write_report(workdirs, _OUT.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(f"wrote {picture} and {table}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
