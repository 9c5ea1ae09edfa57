"""
report.py: a run's metrics.jsonl, also sent to an experiment tracker (--report_to none | tensorboard | wandb).

Paper: none of this is in the paper (ours). train.py writes every step to <out>/metrics.jsonl whatever this says;
a tracker is a second copy of the same lines, to watch a run live and lay runs side by side. Each tracker's package
is imported only when it is chosen, so the toy world runs without either installed, and a missing one is named by
the parser (missing) with its pip line, before anything is loaded.

    tracker = report.open_tracker("tensorboard", "runs/x")   # after train.py wrote runs/x/config.json
    tracker.log({"step": 1, "reward": 40.0, "time": 2.5})          # one metrics.jsonl line
    tracker.close()
"""

import importlib.util
import json
import os

TRACKERS = ("none", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboard==2.21.0", "wandb": "wandb==0.31.0"}   # as requirements.txt pins them


def missing(kind):
    """Why --report_to `kind` cannot run here (its package is not installed), or None. Nothing is imported."""
    if kind in PACKAGES and importlib.util.find_spec(kind) is None:
        return f"--report_to {kind}: the {kind} package is not installed; pip install {PACKAGES[kind]}"
    return None


def open_tracker(kind, out):
    """The tracker of --report_to `kind` for the run in `out`, with its settings (<out>/config.json) recorded."""
    if kind == "none":
        return NoTracker()
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    return {"tensorboard": TensorBoard, "wandb": WandB}[kind](out, config)


class NoTracker:
    """--report_to none: metrics.jsonl only."""

    def log(self, metrics):
        pass

    def close(self):
        pass


class TensorBoard:
    """Event files in <out>/tensorboard/ (`tensorboard --logdir runs` shows every run): one scalar per field of a
    metrics.jsonl line at its step, and the settings as text. A resume adds an event file beside the first; the
    steps a kill cut off and the resume redid are in both, and TensorBoard draws the later ones."""

    def __init__(self, out, config):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(os.path.join(out, "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def log(self, metrics):
        for key, value in metrics.items():
            if key != "step":
                self.writer.add_scalar(key, value, metrics["step"])
        self.writer.flush()   # a killed run keeps what it logged

    def close(self):
        self.writer.close()


class WandB:
    """A Weights & Biases run named after the folder, in project $WANDB_PROJECT (default softcot), its files in
    <out>/wandb/; a --resume continues the same wandb run (its id is the run's). Every field is charted against the
    logged `step` (define_metric), so steps redone after a kill are kept, not refused as out of order.
    WANDB_MODE=offline records without an account or network (`wandb sync <out>/wandb/offline-run-*` uploads)."""

    def __init__(self, out, config):
        import wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "softcot"), name=os.path.basename(
            os.path.abspath(out)), id=config.get("run_id"), resume="allow", config=config, dir=out)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, metrics):
        self.run.log(metrics)

    def close(self):
        self.run.finish()
