"""Compare learning rules from their run folders: tables and figures.

    runs = [load_run(d) for d in ["runs/bp-0", "runs/ss-0", "runs/ss-1"]]
    write_report(runs, Path("runs/compare"))   # report.md, results.csv, three figures
    plot_run("runs/ss-0")                      # one run's figures, into its folder
"""

from biograd.results.figures import plot_run
from biograd.results.report import write_report
from biograd.results.runs import Run, load_run

__all__ = ["Run", "load_run", "plot_run", "write_report"]
