"""
runs.py: folders that are complete or absent. The model cache, atomic saves, the run folder's checkpoints, and
what --resume checks, restores and prints; Ctrl-C in the training loop; the line a run ends with.

Paper: none of this is in the paper (a 4000-step run on 8 GPUs is killed and resumed in practice). The rule every
function here keeps: a folder is written beside its final name and renamed into place, so a killed process leaves
the last complete version, never a half-written one; and a folder is checked (headers, not weights) before it is
used, so a damaged one is named with what is wrong instead of failing deep inside a loader.

    runs.cache_path("toy-base-s0", settings)     # <cache>/<name>-<hash of settings>: never stale
    runs.save_checkpoint("runs/x/last", lm, tok, state, keep_previous=True)
    runs.check_resume("runs/x", vars(args), args.stop_after)   # None, or why --resume cannot continue
"""

import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile

import torch
from transformers import AutoConfig

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
    """Why nothing can be written in `folder` (made if missing), or None. For the scripts' parsers: an output or
    cache folder is proven writable before minutes of work whose result would go there. Root ignores
    permission bits, so this writes a file rather than asking os.access."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return "a file of that name is in the way"
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def write_jsonl(rows, path):
    """One JSON object a line, written beside `path` and renamed: several ranks writing the same file, or a kill,
    never leave a half file for a reader."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)
    return path


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


def folder_problem(path, extra=()):
    """Why the Hugging Face folder at `path` cannot be loaded, or None if it looks complete.

    Cheap (headers and JSON only, no weights read): config.json and the tokenizer files parse, and every
    safetensors file (one, or the shards its index names) is exactly as long as its header says. A file cut
    short by a full disk or a killed copy fails here instead of as a raw SafetensorError without a path.
    `extra`: more files that must exist (e.g. trainer_state.pt).
    """
    if not os.path.isdir(path):
        return "missing"
    name = "model.safetensors.index.json"
    try:
        for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
            with open(os.path.join(path, name)) as f:
                json.load(f)
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        else:
            shards = ["model.safetensors"]
        for name in shards:
            file = os.path.join(path, name)
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if os.path.getsize(file) != 8 + n + end:
                return f"{name} is {os.path.getsize(file)} bytes, its header says {8 + n + end}"
        for name in extra:
            if not os.path.isfile(os.path.join(path, name)):
                return f"no {name}"
    except (OSError, ValueError, KeyError, TypeError) as e:   # missing, unreadable, not JSON, malformed header
        return f"{name}: {type(e).__name__}: {str(e)[:200]}"
    return None


def reuse_cached(path, what):
    """True if a complete cached folder is at `path`. A damaged one (see folder_problem) is removed, and said so,
    so that the caller rebuilds it: a cache is only a copy of what the code can make again."""
    if not os.path.exists(path):
        return False
    problem = folder_problem(path)
    if problem is None:
        return True
    print(f"the cached {what} at {path} is damaged ({problem}): removing it and making it again", flush=True)
    shutil.rmtree(path)
    return False


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path, lm, tok, state=None, weights=None, keep_previous=False):
    """A plain Hugging Face folder (+ trainer_state.pt), written to a temp folder then renamed: atomic.
    weights: the full state dict gathered from FSDP shards (None: lm's own).

    keep_previous: the checkpoint this one replaces stays as <path>.prev (the one before it is deleted), so that
    --resume has a complete checkpoint to fall back to when <path> is lost or damaged; it costs a second copy.
    """
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, state_dict=weights)
    tok.save_pretrained(tmp)
    if state is not None:
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    old = path + (".prev" if keep_previous else ".old")
    if os.path.exists(path):
        if keep_previous and checkpoint_problem(path):   # damaged (a resume went past it): no fallback, drop it
            shutil.rmtree(path)                          # and keep <path>.prev
        else:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
    os.replace(tmp, path)
    if not keep_previous:
        shutil.rmtree(old, ignore_errors=True)


def checkpoints(out):
    """Where --resume looks, newest first: last/, then the one before it (save_checkpoint's keep_previous)."""
    last = os.path.join(out, "last")
    return [last, last + ".prev"]


def checkpoint_problem(folder):
    """Why `folder` is not a complete resumable checkpoint, or None. Reads headers and the trainer state's
    small fields only (tensors memory-mapped, not read), so the parser can afford it."""
    problem = folder_problem(folder, extra=("trainer_state.pt",))
    if problem:
        return problem
    try:
        AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:   # JSON, but not a model's configuration
        return f"config.json: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    try:
        torch.load(os.path.join(folder, "trainer_state.pt"), mmap=True, weights_only=False)["step"]
    except Exception as e:   # noqa: BLE001 - any failure to read it (truncated zip, bad pickle, no key) = unusable
        return f"trainer_state.pt cannot be read ({type(e).__name__}: {str(e).split('. ')[0][:200]})"
    return None


# ------------------------------------------------------------------------------------------------ resume
# What --resume may change against the run's config.json, and why: none of these changes what is trained, on
# which data, or how. Everything else (a new --mode, --lr, --seed, --val_size, --dtype, ...) is refused before
# anything is written. Not here: --steps, because the cosine schedule decays over --steps, so a new value would
# change every later learning rate (to stop early, use --stop_after); --val_cot_tokens, because validations
# before and after would measure different things and best/ compares them.
RESUME_MAY_CHANGE = {
    "resume": "asks for this",
    "out": "names the run folder that holds this config.json",
    "val_every": "when to validate: which steps may become best/, not the updates",
    "save_every": "when to write last/",
    "stop_after": "when to pause",
    "micro_batch": "memory against time: the same gradient up to float rounding (the order of the sums)",
    "fsdp": "memory: where the weights and optimizer states live, not what they are",
    "grad_ckpt": "memory against time: the activations are recomputed, not changed",
}


def check_resume(out, settings, stop_after):
    """Why `--resume` cannot continue the run in `out` with these settings (the parsed flags, by name), or None:
    no config.json, settings that differ from it (other than RESUME_MAY_CHANGE), no complete checkpoint, or a
    --stop_after the checkpoint has already passed."""
    path = os.path.join(out, "config.json")
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        return f"--resume: cannot read {path} ({type(e).__name__}); start without --resume to make a new run there"
    changed = [f"--{k} {settings[k]} (the run has {run[k]})" for k in run
               if k in settings and k not in RESUME_MAY_CHANGE and settings[k] != run[k]]
    if changed:
        return (f"--resume: {', '.join(changed)}: these would change the run in {out}; resume with its "
                f"settings (config.json), or start a new run with another --out. A resume may change "
                f"{', '.join('--' + k for k in RESUME_MAY_CHANGE if k not in ('resume', 'out'))}")
    problems = {c: checkpoint_problem(c) for c in checkpoints(out)}
    usable = [c for c, problem in problems.items() if problem is None]
    if not usable:
        why = "; ".join(f"{c}: {problem}" for c, problem in problems.items())
        return f"--resume: no complete checkpoint in {out} ({why}); start again without --resume"
    step = torch.load(os.path.join(usable[0], "trainer_state.pt"), mmap=True, weights_only=False)["step"]
    if stop_after is not None and stop_after <= step:
        return (f"--stop_after {stop_after}: the checkpoint {usable[0]} is at step {step} already; pass a "
                "later step, or leave --stop_after out to run to the end")
    return None


def resume_checkpoint(out, rank0):
    """The newest complete checkpoint of `out`: last/, else last.prev/ (a damaged or missing last/ is named and
    skipped). check_resume, in the parser, has made sure there is one."""
    for folder in checkpoints(out):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if rank0:
            print(f"--resume: skipping {folder}, it cannot be loaded ({problem}); continuing from the checkpoint "
                  "before it", flush=True)
    raise SystemExit(f"--resume: no complete checkpoint in {out} any more; start again without --resume")


def trim_logs(out, step):
    """--resume: the log lines of the steps after the checkpoint's (the killed run's tail) are dropped, since they
    are redone."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        log = os.path.join(out, name)
        keep = [x for x in open(log) if json.loads(x)["step"] <= step] if os.path.exists(log) else []
        open(log, "w").writelines(keep)


def resume_command(argv, world):
    """The command that continues this run: the same flags (less --stop_after) plus --resume."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a.startswith("--stop_after"):
            del argv[i:i + (1 if "=" in a else 2)]
            break
    launcher = "torchrun [the same options] train.py" if world > 1 else "python train.py"
    return " ".join([launcher] + [shlex.quote(a) for a in argv] + ([] if "--resume" in argv else ["--resume"]))


def catch_ctrl_c(world, device):
    """Ctrl-C in the training loop: returns stop(), true once Ctrl-C was pressed (on any rank, under DDP).

    The first Ctrl-C only sets a flag: the step in progress ends (an optimiser update cut in half would leave
    nothing worth saving), last/ is saved and the --resume command printed. The handler then puts Python's own
    back, so a second Ctrl-C raises KeyboardInterrupt at once, without saving.
    """
    pressed = []

    def handler(signum, frame):
        pressed.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nCtrl-C: finishing this step, then saving last/ (Ctrl-C again: quit now, without saving)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    # every rank must stop after the same step, or the others would wait for it in the next collective
    return lambda: runtime.all_sum(torch.tensor([float(len(pressed))], device=device), world).item() > 0


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
