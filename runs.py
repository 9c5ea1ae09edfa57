"""
runs.py: run folders and the model cache. One run per --out (claimed while it lives), what --resume checks,
restores and prints, Ctrl-C in the training loop, the logs and the line a run ends with, where a run came from
(provenance); the cache of made models, written whole; append-only jsonl files cut back to their last unit of work.

Paper: none of this is in the paper (a 4000-step run on 8 GPUs is killed and resumed in practice). The rule every
function here keeps: a folder is written beside its final name and renamed into place, so a killed process leaves
the last complete version, never a half-written one; checkpoints.py holds the checkpoints themselves and the checks
of a folder before it is used. Files too large to rewrite (evaluate.py's generations) are appended instead, and cut
back on reading to the last unit of work their record lists (append_jsonl, appended).

    runs.cache_path("toy-base-s0", settings)     # <cache>/<name>-<hash of settings>: never stale
    runs.check_resume("runs/x", vars(args), args.stop_after)   # None, or why --resume cannot continue
    runs.claim_run("runs/x")                     # --out is this process's until release_run
"""

import atexit
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

import checkpoints
import runtime


# ------------------------------------------------------------------------------------------------ files and caches
def cache_root(cache_dir=None):
    """Where made models live: cache_dir, else $SOFTCOT_CACHE, else ~/.cache/softcot."""
    return cache_dir or os.environ.get("SOFTCOT_CACHE") or os.path.expanduser("~/.cache/softcot")


def cache_path(name, settings, cache_dir=None):
    """`<cache root>/<name>-<hash of settings>`: changing any setting names a new folder, so a cached model is never
    stale."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(cache_root(cache_dir), f"{name}-{digest}")


def unwritable(folder):
    """Why nothing can be written in `folder`, or None. For the parsers: an output or cache folder is proven
    writable before minutes of work whose result would go there. Nothing is created: a missing folder is judged
    by its nearest existing parent (where it would be made), so parsing a command leaves no empty folders behind.
    Root ignores permission bits, so this writes a file rather than asking os.access."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is a file, in the way of a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def write_text(path, text):
    """`text` written beside `path` (<path>.<pid>.tmp) and renamed over it: several ranks writing the same file, or
    a kill, never leave a half file for a reader."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_jsonl(rows, path):
    """One JSON object a line, atomically (write_text)."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_json(path, obj, indent=None):
    """One JSON document, atomically (write_text)."""
    return write_text(path, json.dumps(obj, indent=indent))


def append_jsonl(path, rows):
    """`rows` appended to `path`, one JSON object a line, and handed to the OS at once: a killed process leaves at
    most a torn last line (complete_jsonl cuts it off; a machine crash may lose more). Returns the file's size."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        return f.tell()


def complete_jsonl(path):
    """The rows of an append-only jsonl up to its first line that is not complete JSON (a kill mid-write), which is
    cut off with all after it, so the next append starts a line. [] for no file."""
    rows, size = [], 0
    if not os.path.exists(path):
        return rows
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n"):   # `{"a": 1}` cut before its newline parses, but is torn too
                break
            rows.append(row)
            size += len(line)
    os.truncate(path, size)
    return rows


def appended(data, record):
    """The rows of `record`, a jsonl that follows the jsonl `data`: each unit of work appends its rows to `data`,
    then one row to `record` whose `bytes` is `data`'s size after them. A kill can leave a torn last line in
    either, or rows in `data` without their record row: all cut off here, so `data` holds exactly the work
    `record` lists. A `data` shorter than `record` says (removed, replaced) means neither can be trusted: both
    are emptied and [] returned."""
    rows = complete_jsonl(record)
    end = rows[-1]["bytes"] if rows else 0
    if (os.path.getsize(data) if os.path.exists(data) else 0) < end:
        rows, end = [], 0
        open(record, "w").close()
    if os.path.exists(data):
        os.truncate(data, end)
    return rows


def save_atomically(path, model, tok, notes_name, notes):
    """Write model + tokenizer (+ a JSON of notes) to a temporary folder beside `path`, then rename it into place:
    a killed run leaves nothing half written, and of two processes making the same folder the first one wins."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(path))
    os.chmod(tmp, 0o755)               # mkdtemp makes it private; the cache is an ordinary folder
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, notes_name), "w") as f:
        json.dump(notes, f, indent=1)
    try:
        os.rename(tmp, path)
    except OSError:                    # another process finished the same folder first: keep theirs
        shutil.rmtree(tmp)


def reuse_cached(path, what):
    """True if a complete cached folder is at `path`. A damaged one (see folder_problem) is removed, and said so,
    so that the caller rebuilds it: a cache is only a copy of what the code can make again."""
    if not os.path.exists(path):
        return False
    problem = checkpoints.folder_problem(path)
    if problem is None:
        return True
    print(f"the cached {what} at {path} is damaged ({problem}): removing it and making it again", flush=True)
    shutil.rmtree(path)
    return False


# ------------------------------------------------------------------------------------------------ resume
# What --resume may change against the run's config.json, and why: none of these changes what is trained, on
# which data, or how. Everything else (a new --mode, --lr, --seed, --val_size, --dtype, ...) is refused before
# anything is written. Not here: --steps, because the cosine schedule decays over --steps, so a new value would
# change every later learning rate (to stop early, use --stop_after); --val_cot_tokens, because validations
# before and after would measure different things and best/ compares them.
RESUME_MAY_CHANGE = {
    "resume": "asks for this",
    "overwrite": "how the run's folder was claimed at its start, not what it trains",
    "out": "names the run folder that holds this config.json",
    "val_every": "when to validate: which steps may become best/, not the updates",
    "save_every": "when to write last/",
    "stop_after": "when to pause",
    "micro_batch": "memory against time: the same gradient up to float rounding (the order of the sums)",
    "fsdp": "memory: where the weights and optimizer states live, not what they are",
    "grad_ckpt": "memory against time: the activations are recomputed, not changed",
    "report_to": "where the metrics are also sent (report.py), not what they are",
}
ASKED_ANEW = ("resume", "overwrite", "out", "stop_after")   # what each command says for itself, never inherited


def resume_defaults(out):
    """--resume: the settings of the run in `out` (config.json), which a resume takes for every flag it does not
    pass, so that `train.py --out DIR --resume` continues the run as it was started; a flag passed that differs
    is then refused by check_resume unless RESUME_MAY_CHANGE allows it. {} if config.json cannot be read (and
    check_resume says why). ASKED_ANEW are left out: a pause point or --overwrite belongs to one command."""
    try:
        return {k: v for k, v in run_config(out).items() if k not in ASKED_ANEW}
    except (OSError, ValueError):
        return {}


def check_resume(out, settings, stop_after):
    """Why `--resume` cannot continue the run in `out` with these settings (the parsed flags, by name), or None:
    no config.json, settings that differ from it (other than RESUME_MAY_CHANGE), no complete checkpoint of this
    run, or a --stop_after the checkpoint has already passed."""
    try:
        run = run_config(out)
    except (OSError, ValueError) as e:
        return (f"--resume: cannot read {out}/config.json ({type(e).__name__}); start without --resume to make a "
                "new run there")
    changed = [f"--{k} {settings[k]} (the run has {run[k]})" for k in run
               if k in settings and k not in RESUME_MAY_CHANGE and settings[k] != run[k]]
    if changed:
        return (f"--resume: {', '.join(changed)}: these would change the run in {out}; leave them out to continue "
                f"with the run's own (config.json), or start a new run with another --out. A resume may change "
                f"{', '.join('--' + k for k in RESUME_MAY_CHANGE if k not in ('resume', 'out', 'overwrite'))}")
    problems = {c: checkpoints.checkpoint_problem(c, run.get("run_id")) for c in checkpoints.candidates(out)}
    usable = [c for c, problem in problems.items() if problem is None]
    if not usable:
        why = "; ".join(f"{c}: {problem}" for c, problem in problems.items())
        return f"--resume: no complete checkpoint of this run in {out} ({why}); start again without --resume"
    step = checkpoints.load_trainer_state(usable[0])["step"]
    if stop_after is not None and stop_after <= step:
        return (f"--stop_after {stop_after}: the checkpoint {usable[0]} is at step {step} already; pass a "
                "later step, or leave --stop_after out to run to the end")
    return None


def resume_checkpoint(out, rank, world):
    """The newest complete checkpoint of `out`'s run: last/, else last.prev/; every byte checked (checkpoint.json's
    sha256, finite weights and optimizer state), and a damaged one named and skipped. check_resume, in the parser,
    has made sure one looks complete. Rank 0 reads every byte once (first finishing a save that a kill
    interrupted: recover) and tells the other ranks its choice, so that all of them resume from the same one."""
    chosen = None
    if rank == 0:
        for name in ("last", "best"):
            checkpoints.recover(os.path.join(out, name))
        for folder in checkpoints.candidates(out):
            problem = checkpoints.checkpoint_problem(folder, run_id(out), verify=True)
            if problem is None:
                chosen = folder
                break
            print(f"--resume: skipping {folder}, it cannot be loaded ({problem}); continuing from the checkpoint "
                  "before it", flush=True)
    chosen = runtime.broadcast_object(chosen, world)
    if chosen is None:
        raise SystemExit(f"--resume: no usable checkpoint in {out} any more; start again with --overwrite or a new "
                         "--out")
    return chosen


def trim_logs(out, step):
    """--resume: the log lines of the steps after the checkpoint's (the killed run's tail) are dropped, since they
    are redone; so is a line a kill cut in half (it can only be the last), said in one line."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        log = os.path.join(out, name)
        keep = []
        for i, line in enumerate(open(log) if os.path.exists(log) else [], 1):
            try:
                row = json.loads(line)
            except ValueError:
                print(f"{log}: line {i} is not complete JSON (a kill mid-write): dropped", flush=True)
                continue
            if row["step"] <= step:
                keep.append(line)
        open(log, "w").writelines(keep)


def run_config(out):
    """<out>/config.json: the run's settings as it started (describe_run in train.py)."""
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f)


def run_id(out):
    """The id of the run in `out` (config.json; None for a run made before ids existed)."""
    return run_config(out).get("run_id")


def check_data(out, data_sha256):
    """--resume: the problems must be the run's own. An edited data file would change the training and validation
    sets under the same config.json (and best/ would compare validations of two sets): refused, in one line."""
    recorded = run_config(out).get("data_sha256")
    if recorded and recorded != data_sha256:
        raise SystemExit(f"--resume: the training and validation problems are not the ones the run in {out} started "
                         f"with (data digest {data_sha256}, config.json has {recorded}); the data file changed. "
                         "Restore it, or start a new run with another --out")


def record_resume(out, settings, world, step):
    """config.json is the run's start and is never rewritten; each resume appends what it changed (flags of
    RESUME_MAY_CHANGE, the process count) to <out>/resumes.jsonl, and says so when the process count changed:
    the update is the same, but each rank draws its own noise (recipes.rollout_seed), so the steps from here on are
    not those an uninterrupted run would have taken."""
    run = run_config(out)
    changed = {k: [run[k], settings[k]] for k in RESUME_MAY_CHANGE
               if k not in ("resume", "out") and k in run and run[k] != settings[k]}
    if run.get("world_size", world) != world:
        changed["world_size"] = [run["world_size"], world]
        print(f"resuming a {run['world_size']}-process run on {world}: the same update, other noise draws from "
              f"step {step + 1} on (recorded in {out}/resumes.jsonl)", flush=True)
    with open(os.path.join(out, "resumes.jsonl"), "a") as f:
        f.write(json.dumps(dict(step=step, time=time.strftime("%Y-%m-%dT%H:%M:%S"), host=socket.gethostname(),
                                changed=changed)) + "\n")


# ------------------------------------------------------------------------------------------------ one run a folder
# what a run writes into --out (tensorboard/, wandb/: --report_to); anything else there (your notes) is left alone
STATE = ("config.json", "metrics.jsonl", "samples.jsonl", "resumes.jsonl", "best", "best.tmp", "best.old", "last",
         "last.tmp", "last.prev", "last.damaged", "training.png", "tensorboard", "wandb")


def model_folder_above(out):
    """The model folder that `out` is or lies inside (weights, or a config.json with a model_type), or None: a run
    writing there would replace the model's own config.json."""
    folder = os.path.abspath(out)
    while True:
        if any(os.path.isfile(os.path.join(folder, f)) for f in
               ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
            return folder
        try:
            with open(os.path.join(folder, "config.json")) as f:
                if "model_type" in json.load(f):
                    return folder
        except (OSError, ValueError, TypeError):
            pass
        if os.path.dirname(folder) == folder:
            return None
        folder = os.path.dirname(folder)


def fresh_run_problem(out, overwrite):
    """Why a new run (no --resume) may not start in `out`, or None. A folder with a run's state in it belongs to
    that run: starting another there would replace its checkpoints and config.json, and a later --resume would mix
    the two. --overwrite says the old run may go (main removes its state, nothing else)."""
    model = model_folder_above(out)
    if model:
        return f"--out {out}: {'it is' if model == os.path.abspath(out) else 'it is inside'} the model folder " \
               f"{model}; a run writes its own config.json there. Pass another --out"
    there = [name for name in STATE if os.path.exists(os.path.join(out, name))]
    if there and not overwrite:
        return (f"--out {out} holds a run already ({', '.join(there)}): continue it with --resume, start this one "
                "in another --out, or pass --overwrite to replace it")
    return None


def out_problem(out, settings, rank0=True):
    """Why this run may not use the folder `out`, or None (train.py's parser, before anything is written). The
    folder belongs to one run: a live run's lock refuses it (on rank 0 only: the other ranks of one torchrun may
    parse after rank 0 took the lock); --resume must find a run it can continue (check_resume), a new run an
    empty folder or --overwrite (fresh_run_problem); and it must be writable."""
    problem = (lock_problem(out) if rank0 else None) or \
        (check_resume(out, settings, settings["stop_after"]) if settings["resume"] else
         fresh_run_problem(out, settings["overwrite"]))
    if problem:
        return problem
    problem = unwritable(out)
    return f"--out {out}: cannot write there ({problem}); pass a folder you can write" if problem else None


def clear_run(out):
    """--overwrite: remove the previous run's state from `out` (STATE), nothing else."""
    for name in STATE:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path) if os.path.exists(path) else None


LOCK = "run.lock"


def lock_problem(out):
    """Why `out` is in use by another live run (its run.lock names a process that is still running), or None. A
    lock left by a process that died (SIGKILL, a crash) is stale, and claim_run takes it over."""
    try:
        with open(os.path.join(out, LOCK)) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    if owner.get("host") == socket.gethostname() and (owner["pid"] == os.getpid() or not alive(owner["pid"])):
        return None
    return (f"--out {out}: another run (pid {owner['pid']} on {owner.get('host')}, since {owner.get('since')}) is "
            f"writing there; wait for it or pass another --out (if that run is gone, delete {out}/{LOCK})")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: alive
        pass
    return True


def new_run_id():
    """A new run's id: its start time and rank 0's pid (unique on a host, and readable in a listing)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def claim_run(out, overwrite=False):
    """Rank 0, at the start of main: <out>/run.lock with this process's pid and host, so that a second run into the
    same folder is refused (lock_problem) instead of interleaving its logs with this one's. Created with O_EXCL, so
    of two runs started at once one gets it. Removed at exit (atexit: a normal end, an exception, the exit after
    SIGTERM); a SIGKILL leaves it stale, and the next run takes it over. overwrite: then clear the old run's state."""
    os.makedirs(out, exist_ok=True)
    lock = os.path.join(out, LOCK)
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            problem = lock_problem(out)
            if problem:
                raise SystemExit(problem) from None
            os.remove(lock)   # stale: its process is gone
    with os.fdopen(fd, "w") as f:
        json.dump(dict(pid=os.getpid(), host=socket.gethostname(), since=time.strftime("%Y-%m-%dT%H:%M:%S")), f)
    atexit.register(release_run, out)
    if overwrite:   # the lock is ours: nothing else writes here while the old run's state goes
        clear_run(out)


def release_run(out):
    lock = os.path.join(out, LOCK)
    try:
        if json.load(open(lock))["pid"] == os.getpid():
            os.remove(lock)
    except (OSError, ValueError, KeyError):
        pass


def resume_command(settings, world):
    """The command that continues this run (settings: its parsed flags, by name): --out and --resume, which read
    the rest from config.json (resume_defaults), and the flags this command changed that a resume may change
    (a --micro_batch that made it fit, say): config.json keeps the run's start, not the last resume's."""
    run = run_config(settings["out"])
    flags = ["--out", settings["out"]]
    for k in RESUME_MAY_CHANGE:
        if k not in ASKED_ANEW and k in run and settings[k] != run[k]:
            v = settings[k]
            flags += [f"--{k}" if v else f"--no-{k}"] if isinstance(v, bool) else [f"--{k}", str(v)]
    launcher = "torchrun [the same options] train.py" if world > 1 else "python train.py"
    return " ".join([launcher] + [shlex.quote(a) for a in flags] + ["--resume"])


def catch_stop_signals(world, device):
    """Ctrl-C (SIGINT) and SIGTERM (preemption, scancel, a dying torchrun launcher) in the training loop: returns
    stop(), the signal that asks this step to be the last (on any rank, under DDP), or 0.

    The signal only sets a flag: the step in progress ends (an optimiser update cut in half would leave nothing
    worth saving), last/ is saved, the --resume command printed, and the run exits with 130 (SIGINT) or 143
    (SIGTERM), the shell's codes. After the first Ctrl-C Python's own handler is back, so a second one quits at
    once without saving. A scheduler's grace period must cover one step and one save: torchrun kills its workers
    30 s after forwarding SIGTERM, Slurm after KillWait.
    """
    caught = {signal.SIGINT: 0, signal.SIGTERM: 0}

    def handler(signum, frame):
        caught[signum] += 1
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last/" +
              (" (Ctrl-C again: quit now, without saving)" if signum == signal.SIGINT else ""),
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

    def stop():   # every rank must stop after the same step, or the others would wait for it in the next collective
        n_int, n_term = runtime.all_sum(torch.tensor([float(caught[signal.SIGINT]), float(caught[signal.SIGTERM])],
                                                     device=device), world).tolist()
        return signal.SIGTERM if n_term else signal.SIGINT if n_int else 0
    return stop


def restore_signals():
    """Python's own handlers again (notebooks and tests call main() more than once in a process)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_summary(out, seconds, steps):
    """The line a run ends with: greedy validation base -> best (its step) -> final, from <out>/metrics.jsonl (so a
    resumed run reports the whole run), and this process's wall time."""
    vals = [(m["step"], m["val_acc"]) for m in map(json.loads, open(os.path.join(out, "metrics.jsonl")))
            if "val_acc" in m]
    (_, base), (final_step, final) = vals[0], vals[-1]
    best_step, best = max(vals, key=lambda sv: (sv[1], -sv[0]))    # the first step that reached the best (best/)
    return (f"done: greedy validation {base:.3f} (base) -> {best:.3f} (best, step {best_step}) -> {final:.3f} "
            f"(final, step {final_step}), {final - base:+.3f} final - base; {steps} steps in {seconds:.0f} s "
            f"({steps / max(seconds, 1e-9):.2f} steps/s)")


def logged_time(out):
    """The run's wall time so far: the `time` of the last line of <out>/metrics.jsonl (after trim_logs, the
    checkpoint's step), 0.0 for a new run. A resume adds its own seconds to it, so `time` counts every process
    that worked on the run, not the hours it lay stopped between them."""
    path = os.path.join(out, "metrics.jsonl")
    lines = [json.loads(x) for x in open(path)] if os.path.exists(path) else []
    return lines[-1].get("time", 0.0) if lines else 0.0


# ------------------------------------------------------------------------------------------------ provenance
LIBRARIES = ("torch", "transformers", "tokenizers", "huggingface-hub", "safetensors", "datasets", "math-verify",
             "numpy")


def provenance(device):
    """What config.json records about where a run started, to cite it and find it again: the code's git commit
    and whether tracked files had uncommitted changes (None for both outside a git checkout, e.g. a fork's
    tarball), the Python and library versions, the device and the start time (ISO 8601, UTC)."""
    here = os.path.dirname(os.path.realpath(__file__))

    def git(*cmd):
        try:
            p = subprocess.run(["git", *cmd], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):   # no git installed, or it hung
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    # this checkout's commit, not that of a repository the code was unpacked inside
    commit = git("rev-parse", "HEAD") if git("rev-parse", "--show-toplevel") == here else None
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return dict(git_commit=commit, git_dirty=None if changes is None else changes != "",
                versions=dict(python=platform.python_version()) | {n: version(n) for n in LIBRARIES},
                device=name, started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
