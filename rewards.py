"""
rewards.py: the grader. The reward of Eq. 11 (a final answer graded with Math-Verify: 100 / 10 / 0), and the
extraction rules that answers and golds share: the last `\\boxed{}` (`extract_boxed`) and GSM8K's `####`
(`gsm8k_gold`). data.py's loaders read their golds with these; nothing here imports the rest of the project.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Sec. 4, Eq. 11. The paper rewards the final
answer a_{b,g} of each rollout:

    r_{b,g} = 100  if Verify(a_{b,g}) = 1                          (Math-Verify accepts it)
              10   if Verify(a_{b,g}) = 0 and ExtractBoxed(a_{b,g}) = 1
              0    otherwise

What "the answer" is here: the text the rollout produced after the CoT, INCLUDING the prefill,
e.g. `\\boxed{` + `42}. Human: ...` (docs/decisions.md, "Prefills"). Its LAST `\\boxed{...}` is the
answer: `extract_boxed` takes its content (nested braces handled, an unclosed box is no answer,
an empty box is no answer). Math-Verify then compares that content with the gold answer:
`verify(gold, prediction)`, gold FIRST (the check is not symmetric). Both sides are parsed from
`$...$`-wrapped LaTeX with LaTeX + expression extraction, which is what made every gold in our
tests match itself (a bare `(1,2]` or `\\sqrt{4}` is not found by the extractors without `$`;
a `\\boxed{12.}` is not parsed but `$12.$` is). A correct verdict therefore implies a boxed
answer, so the rewards are consistent: 100 => boxed.

Why a worker process (the design decision of this module)
---------------------------------------------------------
Math-Verify bounds its own run time with `signal.alarm`. That only works in the main thread of
the main interpreter: from any other thread `parse`/`verify` raise, and with the timeouts turned
off (`parsing_timeout=None`, `timeout_seconds=None`) some inputs do not return for minutes (an
answer such as `\\boxed{10^{10^{10}}}` makes sympy build a ten-billion-digit integer: we stopped
waiting after 20 s; Math-Verify's own 5 s alarm ends it after 5 s, but an alarm cannot interrupt
every C call). A training loop must neither crash nor hang, from the main thread of a torchrun
rank, from a notebook, or from a helper thread. So every check runs in ONE persistent child
process (`python rewards.py --serve`, started with `subprocess`: no `multiprocessing`, so no
re-import of the caller's `__main__`) that runs Math-Verify with its signal timeouts OFF; the
parent waits for each reply with a wall-clock deadline (`select` on the pipe, so it works from
any thread) and, on a timeout, kills the worker and starts a fresh one at the next call. Only
the parent's clock bounds time: one mechanism, no signals anywhere. POSIX only (Linux, macOS),
like the rest of the project.

Errors are counted, never silently zero
---------------------------------------
A check that raises inside Math-Verify (called with `raise_on_error=True`), times out, kills its
worker, or whose gold does not parse, is a GRADER ERROR: `Scores.grader_errors` counts it and
`Scores.error_messages` says why. Such an answer gets the reward extraction alone gives it: 10,
since only boxed answers are graded (an answer without a box is 0 without calling the grader).
A parse that finds nothing in the box (e.g. `\\boxed{\\frac{}{}}`) is not an error: it is a
boxed, wrong answer (10).

Measured cost (2-core CPU machine shared with other jobs; `python rewards.py` prints these):
  - worker start-up (spawn + import Math-Verify/sympy) plus a first check: 0.4-0.6 s, once per
    process, and again after each timeout;
  - integer answers (GSM8K-style): 0.6-1.7 ms per check on average, IPC included, max ~8 ms;
  - symbolic LaTeX answers (fractions, roots, intervals, sets, polynomials, matrices, each with
    a new gold): 44-68 ms on average, median 33-46 ms, max 0.25-0.45 s when sympy simplifies;
  - a timed-out check costs its timeout (default 5 s) plus a restart.
Identical (gold, boxed content) pairs inside one `score` call are graded once: a group of G
samples often repeats the same answer.

Usage:
    from rewards import score, reward, extract_boxed
    s = score(["\\\\boxed{42}.", "\\\\boxed{41}", "no box"], ["42", "42", "42"])
    s.rewards, s.correct, s.boxed, s.grader_errors   # [100.0, 10.0, 0.0], [T, F, F], [T, T, F], 0

    with Grader(timeout=5.0) as g:                    # an own worker, e.g. one per thread pool
        g.score(answers, golds)

    python rewards.py            # prints the measured start-up and per-check times
"""

import atexit
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


# ------------------------------------------------------------------------------------------------ extraction
# The "ExtractBoxed" of Eq. 11 for answers, and the same rules for the golds data.py reads from datasets.

# `\boxed{`, also with spaces before the brace (`\boxed {`). Not `\fbox` in answers: the prompt
# (App. B) asks for `\boxed{}`, and an answer in another format is a format failure the reward
# should see. Gold solutions are human-written and a few MATH ones box with `\fbox`: data.py
# reads them with fbox=True.
_BOXED = re.compile(r"\\boxed\s*\{")
_BOXED_OR_FBOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text, fbox=False):
    """Content of the LAST `\\boxed{...}` in `text`, or None.

    Braces nest (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`); escaped braces `\\{ \\}` are literal
    characters and do not count. None when there is no `\\boxed{`, or when the last one is never
    closed (a truncated answer: the last box decides, an earlier complete box does not rescue
    it). An empty box gives "" (and `score` treats it as no answer).
    fbox=True: `\\fbox{...}` counts as a box too, and the last box of either kind decides (data.py,
    for the gold in a MATH-style solution); answers are always read with the default, `\\boxed` only.
    """
    if not isinstance(text, str):
        raise ValueError(f"extract_boxed expects a str, got {type(text).__name__}")
    starts = [m.end() for m in (_BOXED_OR_FBOX if fbox else _BOXED).finditer(text)]
    if not starts:
        return None
    i = begin = starts[-1]  # first character after the opening brace of the last box
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "\\":  # `\{`, `\}`, `\\`: skip the escaped character
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
        i += 1
    return None  # unclosed


def gsm8k_gold(answer_field):
    """The gold of a GSM8K `answer` field: the number after the last `####`, commas removed.

    `"... #### 1,000"` -> `"1000"`, `"#### -3"` -> `"-3"`. data.py's GSM8K loader reads its golds
    with it, and evaluate.py and toy.py call it too: one rule for every GSM8K gold.
    """
    if not isinstance(answer_field, str) or "####" not in answer_field:
        raise ValueError(
            f"not a GSM8K answer field (no '####'): {str(answer_field)[:80]!r}; "
            "pass the dataset's `answer` column, whose last line is '#### <number>'"
        )
    gold = answer_field.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError(f"GSM8K answer field has nothing after '####': {answer_field[-80:]!r}")
    return gold


# ------------------------------------------------------------------------------------------------ the reward
# Eq. 11: `score` (a batch) and `reward` (one answer), graded by one shared Grader.


@dataclass
class Scores:
    """One entry per answer, in input order."""

    rewards: list[float]  # 100 / 10 / 0 (Eq. 11)
    correct: list[bool]  # Math-Verify accepted the boxed answer
    boxed: list[bool]  # an extractable, non-empty \boxed{} answer
    grader_errors: int  # errors + timeouts, counted (their answers got 10)
    error_messages: list[str] = field(default_factory=list)  # why, one per error


_default = None                    # the shared Grader, made at first use
_default_lock = threading.Lock()


def default_grader():
    """The process-wide Grader behind `score` and `reward`, made at first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader()
            atexit.register(_default.close)
        return _default


def score(answers, golds):
    """Eq. 11 rewards, correctness, boxed flags and the grader-error count for a batch."""
    return default_grader().score(answers, golds)


def reward(answer, gold):
    """Eq. 11 for one answer: 100 (correct), 10 (boxed but wrong), 0 (no boxed answer)."""
    return score([answer], [gold]).rewards[0]


# ------------------------------------------------------------------------------------------------ the worker
# Math-Verify in its own process (runs as `python rewards.py --serve`).


def _serve():
    """Answer one JSON request per line on stdin: {"gold", "pred"} -> {"correct"} or {"error"}."""
    import logging
    from functools import lru_cache

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # Timeouts are the parent's job: silence Math-Verify's "timeout is disabled" warning.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Replies go through a private copy of stdout; whatever a library prints goes to stderr,
    # so it can never be mistaken for a reply.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]

    def parse_math(s):
        return parse(f"${s}$", extraction_config=configs, parsing_timeout=None, raise_on_error=True)

    @lru_cache(maxsize=4096)  # a gold is graded against all G samples of its prompt
    def parse_gold(gold):
        return parse_math(gold.strip().strip("$"))

    def check(gold, pred):
        g = parse_gold(gold)
        if not g:
            raise ValueError(f"Math-Verify could not parse the gold answer {gold!r}")
        p = parse_math(pred)
        failures = []
        # verify(list, list) stops at the first exception; checking pair by pair means an error
        # only counts when no other reading of the two answers matched.
        for gi in g:
            for pi in p:
                try:
                    if verify(gi, pi, timeout_seconds=None, raise_on_error=True):  # gold first
                        return True
                except Exception as e:  # noqa: BLE001 - reported to the parent, counted there
                    failures.append(e)
        if failures:
            raise failures[0]
        return False

    # Ctrl-C (or a notebook kernel's shutdown) reaches the whole process group: the parent handles it, and
    # this worker ends when its stdin closes, without printing a KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"correct": check(request["gold"], request["pred"])}
        except Exception as e:  # noqa: BLE001 - every failure becomes a counted grader error
            reply = {"error": f"{type(e).__name__}: {e}"[:300]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# ------------------------------------------------------------------------------------------------ the Grader
# The parent side: a Grader owns one worker, with a wall-clock deadline per check.


class Grader:
    """A persistent Math-Verify worker process with a wall-clock deadline per check.

    Thread-safe (one check at a time per Grader; use several Graders to grade in parallel).
    The worker starts in the background when the Grader is made and is waited for at the
    first check; after a timeout or crash it is restarted at the next check.
    """

    def __init__(self, timeout=5.0, startup_timeout=120.0):
        if timeout <= 0 or startup_timeout <= 0:
            raise ValueError("timeout and startup_timeout must be positive (seconds)")
        self.timeout, self.startup_timeout = timeout, startup_timeout
        self.restarts = 0  # workers replaced after a timeout or crash
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._buf = b""
        self._spawn()

    # -- worker lifetime --------------------------------------------------------------------

    def _spawn(self):
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # stderr is inherited: a worker that cannot start shows its traceback there
        )
        self._ready, self._buf = False, b""

    def _kill(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.communicate()  # reap it and close its pipes
            self._proc = None

    def close(self):
        """Stop the worker (it also exits by itself when this process dies: stdin closes)."""
        with self._lock:
            if self._proc is not None:
                try:
                    self._proc.communicate(timeout=2)  # closes stdin: the worker's loop ends
                    self._proc = None
                except subprocess.TimeoutExpired:
                    self._kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _readline(self, deadline):
        """One line from the worker, or None at the deadline. EOFError if the worker died."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError(f"grader worker exited with code {self._proc.wait()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _ensure_ready(self):
        if self._proc is not None and self._ready and self._proc.poll() is not None:
            self._kill()  # died while idle (e.g. the out-of-memory killer): replace it
            self.restarts += 1
        if self._proc is None:
            self._spawn()
        if self._ready:
            return
        try:
            line = self._readline(time.monotonic() + self.startup_timeout)
        except EOFError as e:
            line, reason = None, str(e)
        else:
            reason = f"no answer within {self.startup_timeout:.0f} s"
        if line != b"ready":
            self._kill()
            raise RuntimeError(
                f"the Math-Verify grader worker did not start ({reason}; its traceback, if any, "
                "is on stderr above). Install the grader with "
                "pip install 'math-verify[antlr4_13_2]==0.9.0'."
            )
        self._ready = True

    # -- checks -------------------------------------------------------------------------------

    def check(self, gold, pred):
        """Does Math-Verify accept `pred` (the boxed content) for `gold`? -> (correct, error).

        `error` is None on a clean verdict; otherwise it says why the check failed (the answer
        then counts as not correct).
        """
        with self._lock:
            self._ensure_ready()
            request = json.dumps({"gold": gold, "pred": pred}) + "\n"
            try:
                self._proc.stdin.write(request.encode())
                self._proc.stdin.flush()
                line = self._readline(time.monotonic() + self.timeout)
            except (EOFError, BrokenPipeError) as e:  # the worker crashed (e.g. out of memory)
                self._kill()
                self.restarts += 1
                return False, f"worker died: {e}"
            if line is None:  # too slow: kill it; the next check starts a fresh worker
                self._kill()
                self.restarts += 1
                return False, f"timeout after {self.timeout:g} s"
            reply = json.loads(line)
            if "error" in reply:
                return False, reply["error"]
            return bool(reply["correct"]), None

    def score(self, answers, golds):
        """Eq. 11 for a batch: answers[i] (prefill + generated text) against golds[i]."""
        if len(answers) != len(golds):
            raise ValueError(f"{len(answers)} answers but {len(golds)} golds; pass one gold per answer")
        for name, items in (("answers", answers), ("golds", golds)):
            for i, x in enumerate(items):
                if not isinstance(x, str):
                    raise ValueError(f"{name}[{i}] is {type(x).__name__}, expected str")
        for i, gold in enumerate(golds):
            if not gold.strip():
                raise ValueError(
                    f"golds[{i}] is empty: every answer needs a gold answer to be graded "
                    "(data.load drops dataset rows without one)"
                )
        out = Scores(rewards=[], correct=[], boxed=[], grader_errors=0)
        verdicts: dict[tuple[str, str], tuple[bool, str | None]] = {}
        for answer, gold in zip(answers, golds):
            content = extract_boxed(answer)
            boxed = content is not None and content.strip() != ""
            correct = False
            if boxed:
                key = (gold, content.strip())
                if key not in verdicts:
                    verdicts[key] = self.check(*key)
                correct, error = verdicts[key]
                if error is not None:
                    out.grader_errors += 1
                    out.error_messages.append(error)
            out.rewards.append(100.0 if correct else 10.0 if boxed else 0.0)  # Eq. 11
            out.correct.append(correct)
            out.boxed.append(boxed)
        return out


# ------------------------------------------------------------------------------------------------ timing
# `python rewards.py`: the measured costs of the module docstring.


def _benchmark():
    """Print the worker's start-up time and the time per check (the docstring's numbers)."""
    integers = [(str(n), str(n + k)) for n in range(100, 140) for k in (0, 1)]
    symbolic = [
        ("\\frac{1}{2}", "0.5"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
        ("5\\sqrt{2}", "\\sqrt{50}"), ("(1,2]", "(1, 2]"), ("\\{1,2\\}", "\\{2,1\\}"),
        ("x^2+7x+10", "(x+2)(x+5)"), ("(3, \\frac{\\pi}{2})", "\\left(3, \\frac{\\pi}{2}\\right)"),
        ("10\\%", "0.1"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        ("(-\\infty, 0) \\cup (1, \\infty)", "(-\\infty,0)\\cup(1,\\infty)"), ("2, -2", "-2, 2"),
        ("y = -\\frac{5}{2}", "-\\frac52"), ("6 - 5i", "6-5i"), ("\\frac{14}{3}", "4.6667"),
    ]
    t = time.perf_counter()
    with Grader() as g:
        g.check("1", "1")
        print(f"worker start-up + first check: {time.perf_counter() - t:.2f} s")
        for name, pairs in (("integer", integers), ("symbolic LaTeX", symbolic)):
            times = []
            for gold, pred in pairs:
                t = time.perf_counter()
                g.check(gold, pred)
                times.append(time.perf_counter() - t)
            times.sort()
            print(f"{name:15s} {len(pairs)} checks: mean {1e3 * sum(times) / len(times):.1f} ms, "
                  f"median {1e3 * times[len(times) // 2]:.1f} ms, max {1e3 * times[-1]:.1f} ms")


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        _benchmark()
