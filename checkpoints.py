"""
checkpoints.py: model folders that are complete or absent. A checkpoint (a plain Hugging Face folder, the trainer
state, and checkpoint.json with every file's sha256) is written beside its final name and renamed into place; a
folder is checked before it is used (headers and JSON, cheaply; or every byte), so a damaged one is named with what
is wrong instead of failing deep inside a loader.

Paper: none of this is in the paper (a 4000-step run on 8 GPUs is killed and resumed in practice). runs.py builds
the run folder and --resume on it; evaluate.py checks the folders it is given.

    checkpoints.save_checkpoint("runs/x/last", lm, tok, state, keep_previous=True)
    checkpoints.checkpoint_problem("runs/x/last")   # None, or why --resume cannot use it
    checkpoints.folder_problem("models/toy-slips-s0")   # None, or why the folder cannot be loaded
"""

import hashlib
import json
import os
import shutil

import torch
from transformers import AutoConfig


# ------------------------------------------------------------------------------------------------ folders
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


# ------------------------------------------------------------------------------------------------ checkpoints
def nonfinite(tensors):
    """The name of the first floating-point tensor of a {name: tensor} dict that holds NaN or inf, or None."""
    # a sum is finite when every element is (30x faster than isfinite().all() on E); an overflowing sum of finite
    # values is told apart by the full check, which only runs then
    return next((k for k, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point()
                 and not torch.isfinite(t.sum()) and not torch.isfinite(t).all()), None)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


MANIFEST = "checkpoint.json"   # written last into a checkpoint folder: the run's id, its step, every file's sha256


def save_checkpoint(path, lm, tok, state=None, weights=None, keep_previous=False, run_id=None):
    """A plain Hugging Face folder (+ trainer_state.pt, + checkpoint.json), written to a temp folder then renamed:
    atomic. weights: the full state dict gathered from FSDP shards (None: lm's own).

    checkpoint.json is written last: the run's id (--resume refuses another run's checkpoint) and the sha256 of every
    file (checked when a run resumes from it or evaluate.py loads it: flipped bytes are named, not trained on).
    Weights that are not finite are never written, so they can never rotate over a healthy checkpoint.

    keep_previous: the checkpoint this one replaces stays as <path>.prev (the one before it is deleted), so that
    --resume has a complete checkpoint to fall back to when <path> is lost or damaged; it costs a second copy.
    A kill between the two renames below leaves <path>.tmp complete (its checkpoint.json is there) and <path>
    missing: recover() puts it in place before the folder is read again.
    """
    bad = nonfinite(weights if weights is not None else lm.state_dict())
    if bad:
        raise SystemExit(f"the weights are not finite ({bad} holds NaN or inf): not writing {path}, which keeps "
                         f"the last healthy checkpoint; resume from it with a lower --lr or --grad_clip")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        lm.save_pretrained(tmp, state_dict=weights)
        tok.save_pretrained(tmp)
        if state is not None:
            torch.save(state, os.path.join(tmp, "trainer_state.pt"))
        files = sorted(f for f in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, f)))
        manifest = dict(run_id=run_id, step=(state or {}).get("step"), sha256={f: sha256(os.path.join(tmp, f))
                                                                                  for f in files})
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
    except (OSError, RuntimeError) as e:   # torch.save reports a full disk as "[enforce fail ...] unexpected pos"
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2 ** 30
        raise SystemExit(f"cannot write the checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                         f"{free:.1f} GiB free there. Nothing half-written is left and the previous checkpoint "
                         "is kept: free space (or fix the permissions) and continue with --resume") from None
    old = path + (".prev" if keep_previous else ".old")
    if os.path.exists(path):
        if keep_previous and (problem := checkpoint_problem(path)):   # damaged (a resume went past it): no fallback;
            shutil.rmtree(path + ".damaged", ignore_errors=True)       # <path>.prev stays, and the damaged one is
            os.replace(path, path + ".damaged")                         # set aside, not deleted on one failed read
            print(f"{path} could not be read ({problem}): kept as {path}.damaged, and {old} as the fallback",
                  flush=True)
        else:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
    os.replace(tmp, path)
    if not keep_previous:
        shutil.rmtree(old, ignore_errors=True)


def recover(path):
    """Finish a save_checkpoint that a kill cut between its two renames: <path> is missing while <path>.tmp is
    complete (its checkpoint.json, written last, is there) or the previous <path>.old is. Rank 0, before reading."""
    if os.path.exists(path):
        return
    for candidate in (path + ".tmp", path + ".old"):
        if os.path.isfile(os.path.join(candidate, MANIFEST)) and not folder_problem(candidate):
            os.replace(candidate, path)
            print(f"{path} was missing (a save was interrupted): restored it from {candidate}", flush=True)
            return


def candidates(out):
    """Where --resume looks, newest first: last/, then the one before it (save_checkpoint's keep_previous)."""
    last = os.path.join(out, "last")
    return [last, last + ".prev"]


def checkpoint_problem(folder, run_id=None, verify=False):
    """Why `folder` is not a complete resumable checkpoint of the run `run_id` (None: any run), or None. Cheap by
    default (headers and the trainer state's small fields; tensors memory-mapped, not read), so the parser can
    afford it; verify=True also reads every byte: each file against checkpoint.json's sha256, and the weights and
    optimizer state for NaN or inf (what resuming from it would train on)."""
    problem = folder_problem(folder, extra=("trainer_state.pt",))
    if problem:
        return problem
    try:
        AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:   # JSON, but not a model's configuration
        return f"config.json: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    try:
        state = load_trainer_state(folder)
        state["step"]
    except MemoryError:   # this process's memory, not the file: never a reason to call a checkpoint damaged
        raise
    except Exception as e:   # noqa: BLE001 - any failure to read it (truncated zip, bad pickle, no key) = unusable
        return f"trainer_state.pt cannot be read ({type(e).__name__}: {str(e).split('. ')[0][:200]})"
    manifest = read_manifest(folder)
    if run_id and manifest.get("run_id") and manifest["run_id"] != run_id:
        return f"it belongs to another run (run id {manifest['run_id']}; this folder's config.json has {run_id})"
    if verify:
        return content_problem(folder, manifest) or \
            (f"trainer_state.pt holds NaN or inf ({bad})" if (bad := nonfinite(flatten(state))) else None)
    return None


def load_trainer_state(folder):
    """trainer_state.pt, memory-mapped onto the CPU whatever device it was saved from: the optimizer state of a
    multi-GPU run is saved from cuda:0, and a plain torch.load would put every rank's copy on GPU 0 (3B: ~24 GiB
    each). The optimizer moves each state to its parameter's device as it loads them (train.restore)."""
    return torch.load(os.path.join(folder, "trainer_state.pt"), map_location="cpu", mmap=True, weights_only=False)


def read_manifest(folder):
    """checkpoint.json as a dict ({} for a folder saved before checksums existed, or not by save_checkpoint)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def content_problem(folder, manifest=None):
    """Why the bytes of a Hugging Face folder cannot be trusted, or None: a file whose sha256 is not the one
    checkpoint.json recorded (a model folder without one, e.g. a hub download, is not checked for that), or
    weights that hold NaN or inf. Reads every weight: for evaluate.py's and --resume's one load, not the parser."""
    from safetensors import safe_open
    manifest = read_manifest(folder) if manifest is None else manifest
    for name, digest in manifest.get("sha256", {}).items():
        if not os.path.isfile(os.path.join(folder, name)):
            return f"{name} is missing (checkpoint.json lists it)"
        if sha256(os.path.join(folder, name)) != digest:
            return (f"{name} is not the file the checkpoint was saved with (its sha256 differs from {MANIFEST}'s): "
                    "changed since; restore it, or use the folder it came from")
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        with safe_open(os.path.join(folder, name), "pt") as f:
            bad = next((k for k in f.keys() if nonfinite({k: f.get_tensor(k)})), None)
        if bad:
            return f"{name}: {bad} holds NaN or inf"
    return None


def flatten(tree, prefix=""):
    """{path: tensor} of every tensor in nested dicts / lists (the optimizer state inside trainer_state.pt)."""
    if torch.is_tensor(tree):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {k: v for key, sub in items for k, v in flatten(sub, f"{prefix}/{key}").items()}
