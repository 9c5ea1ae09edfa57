"""
bench.py: speed and memory of softcot, every comparison a ratio of two things measured in the same run.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170). What a soft or fuzzy CoT token costs beyond a
hard one is Eq. 5, the mixture p E: V x d multiply-adds per CoT token in the rollout, and three times that in
re-scoring (the forward for Eq. 10, then the gradients into p and into E). At Llama-3.2-3B's shape (V 128256,
d 3072, 28 layers) that is +12% of the forward's multiply-adds, at Llama-3.1-8B's +7%; on small models it is much
more (column `pE/fwd`: V d over the forward's weight multiply-adds per token). The fuzzy mixture is nearly one-hot,
and softcot's exact sparse path skips almost all of it (softcot.SPARSE_MIXTURE); the soft one is dense.

    python bench.py                   # CPU: the toy world's Llama and two CPU-sized proxies (~15 min on 2 cores)
    python bench.py --quick           # CI-sized: the toy shape, small batches (seconds)
    python bench.py --device cuda     # bf16, Llama-3.2-3B's shape with random weights

Markdown tables on stdout; every number also goes to --out (JSON).
1. Our hard rollout (softcot.rollout, mode "hard", tau 1) against model.generate (sampling at temperature 1,
   top_k 0, KV cache): tokens/s on the same N prompts. The lengths match exactly: the word-level tokenizer here
   cannot spell the trigger and has no EOS, so every row runs the CoT cap, a one-token prefill and one answer
   token, and generate gets max_new_tokens = cap + 2 (both lengths are checked).
2. Soft and fuzzy rollouts against hard (all but 2 of each row's steps are CoT steps); fuzzy with the mixture's
   exact sparse path (softcot.SPARSE_MIXTURE = True, "fast") and without it ("plain"). Soft (tau 0.5) is dense.
3. The training step: micro-batched re-scoring (softcot.sequence_logprobs), forward + backward, as in
   train.policy_gradient_step without the optimiser. Time and peak memory against hard, and peak memory against
   the CoT cap, the micro-batch size and the number of rows (which must not matter).
4. The mixture alone: dense against sparse (fuzzy), and the fused attention read softmax(h W^T / tau) E (one
   scaled_dot_product_attention over the vocabulary: query the final hidden state h, keys the output embeddings
   W, values the input embeddings E) against the plain path (soft). softcot does not use the attention read: it
   measured slower here (docs/benchmarks.md).
5. The precision policy: fp32 LM-head logits (softcot.FP32Head) against bf16 ones, under bf16 autocast over fp32
   master weights, in a fuzzy rollout and in the re-scoring step.

Timing: torch.set_num_threads(--threads, default 1). Each variant runs once to warm up, then --repeats rounds run
every variant of a table in turn (interleaved, so background load hits all alike); a figure is the median of its
rounds. On CPU with one thread the clock is the process's CPU time (on a shared machine, wall-clock time also
counts the time the OS gives to other jobs); otherwise wall-clock time, synchronised on CUDA.
Memory: the peak of the bytes allocated during the call above what was allocated when it began (weights and the
preallocated gradients are not counted): torch.cuda.max_memory_allocated on CUDA; on CPU, which keeps no such
counter, the running total of the allocations and frees that torch.profiler(profile_memory=True) records (its two
`USDT:... profiler_start / profiler_stop` lines a call on stderr are dropped, nothing else: stderr_without_usdt).
Memory is deterministic, so it is measured once.
"""

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

import runs
import softcot


# ------------------------------------------------------------------------------------------------ settings
# Llama shapes with tied embeddings (as the 3B models): vocabulary, width, layers, MLP width, heads, KV heads.
SHAPES = {
    "tiny": dict(vocab=100, d=128, layers=4, ffn=512, heads=4, kv=4),             # toy.py's Llama
    "proxy": dict(vocab=32000, d=512, layers=4, ffn=1376, heads=8, kv=2),          # CPU-sized, few layers: pE 60%
    "proxy-3b": dict(vocab=10688, d=256, layers=28, ffn=683, heads=2, kv=1),      # Llama-3.2-3B / 12 in width
    "llama3b": dict(vocab=128256, d=3072, layers=28, ffn=8192, heads=24, kv=8),    # Llama-3.2-3B
}
# Rollout rows and prompt words; CoT cap; re-scoring rows and micro-batch; the memory sweeps; timing rounds.
SIZES = {
    "quick": dict(rows=4, prompt=8, cot=8, score_rows=4, micro=2, cots=(4, 8), micros=(1, 2), repeats=3),
    "cpu": dict(rows=16, prompt=16, cot=64, score_rows=8, micro=4, cots=(16, 32, 64), micros=(1, 2, 4, 8),
                repeats=7),
    "cuda": dict(rows=16, prompt=64, cot=128, score_rows=16, micro=4, cots=(64, 128, 256), micros=(1, 2, 4, 8),
                 repeats=5),
}
PREFILL = " w2"          # a one-token prefill after the CoT cap (the default prefills are not in this vocabulary)


# ------------------------------------------------------------------------------------------------ models and runs
def make_model(shape, device, dtype):
    """A random-weight Llama of this shape, and a word-level tokenizer ("w2" .. "w{V-1}") with no EOS token."""
    s = SHAPES[shape]
    vocab = {"<pad>": 0, "<unk>": 1} | {f"w{i}": i for i in range(2, s["vocab"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["ffn"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                      tie_word_embeddings=True, max_position_embeddings=4096, pad_token_id=0, bos_token_id=None,
                      eos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):                       # initialise in place: a 3B model never touches the CPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval(), tok


def mixture_share(shape):
    """V d over the forward's weight multiply-adds per token (attention over the context not counted)."""
    s = SHAPES[shape]
    d, head = s["d"], s["d"] // s["heads"]
    layer = 2 * d * d + 2 * d * s["kv"] * head + 3 * d * s["ffn"]     # q, o; k, v; SwiGLU
    return s["vocab"] * d / (s["layers"] * layer + s["vocab"] * d)       # + the output layer


def prompts(n, words, vocab, seed=0):
    ids = torch.randint(2, vocab, (n, words), generator=torch.Generator().manual_seed(seed))
    return [" ".join(f"w{i}" for i in row) for row in ids.tolist()]


def roll(model, tok, texts, mode, cot, sigma, seed=0):
    """softcot.rollout at the training settings; no stop can fire, so every row is cot + 2 steps long."""
    return softcot.rollout(model, tok, texts, mode=mode, tau=softcot.TRAIN_TAU[mode],
                           sigma=0.0 if mode == "hard" else sigma, max_cot_tokens=cot, max_answer_tokens=1,
                           answer_temperature=1.0, prefill_stopped=PREFILL, prefill_capped=PREFILL,
                           generator=torch.Generator(model.device).manual_seed(seed))


def rescore_step(model, ro, micro):
    """train.policy_gradient_step without the optimiser: -sum(A * l) / N, backward, one micro-batch at a time."""
    n = len(ro.cot_len)
    adv = torch.linspace(-1.0, 1.0, n, device=model.device)      # fixed advantages: values do not change the cost
    for p in model.parameters():
        p.grad.zero_()                                            # preallocated: not part of the peak
    for i in range(0, n, micro):
        rows = list(range(i, min(i + micro, n)))
        logp = softcot.sequence_logprobs(model, ro.select(rows)).sum(-1)         # (m,) Eq. 13
        (-(adv[rows] * logp).sum() / n).backward()                               # Eq. 14


def attention_read(h, W, E, tau):
    """softmax(h W^T / tau) E in one fused pass over the vocabulary: h (n, d), W and E (V, d) -> (n, d)."""
    return F.scaled_dot_product_attention(h[None, None], W[None, None], E[None, None], scale=1 / tau)[0, 0]


def path(fast, fn):
    """fn with the mixture's exact sparse path on (fast) or off (plain)."""
    def run():
        before, softcot.SPARSE_MIXTURE = softcot.SPARSE_MIXTURE, fast
        try:
            return fn()
        finally:
            softcot.SPARSE_MIXTURE = before
    return run


# ------------------------------------------------------------------------------------------------ measuring
def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timings(fns, repeats, device, number=1):
    """{name: [seconds per call, one per round]}: every fn once to warm up, then `repeats` rounds that time `number`
    calls of every fn in turn. The clock: CPU time on CPU with one thread, else wall-clock (module docstring)."""
    clock = time.process_time if device == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = clock()
            for _ in range(number):
                fn()
            sync(device)
            times[k].append((clock() - t) / number)
    return times


def med(t, a):
    """The median time of variant a."""
    return statistics.median(t[a])


def ratio(t, a, b):
    """a / b: the median over rounds of the ratio within each round (a slow spell of the machine hits both)."""
    return statistics.median(x / y for x, y in zip(t[a], t[b]))


@contextlib.contextmanager
def stderr_without_usdt():
    """Every line written to stderr (fd 2, C++ included) inside the block, written out at its end, but for torch's
    profiler's `USDT:... profiler_start` / `profiler_stop` (two per profile: hundreds per run). Kineto (torch
    2.13) prints them at its USDT severity, the highest it has, above ERROR, so KINETO_LOG_LEVEL could drop them
    only with its errors; here its errors, Python's warnings and tracebacks all still come out."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            os.write(2, b"".join(line for line in tmp if not line.startswith(b"USDT:")))


def peak_memory(fn, device):
    """Peak bytes allocated during fn() above what was allocated when it began."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with stderr_without_usdt(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                       profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(os.path.join(tmp, "trace.json"))
        with open(os.path.join(tmp, "trace.json")) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e["ts"]):     # "Bytes": + for an allocation, - for a free
        live += e["args"]["Bytes"]
        peak = max(peak, live)
    return peak


# ------------------------------------------------------------------------------------------------ the benchmarks
# Items 1-5 of the module docstring: rollouts (tables 1, 2), re-scoring (3), precision (5), the mixture alone (4).
def bench_rollout(model, tok, sz, sigma, device):
    """Tables 1 and 2: hard vs generate; soft and fuzzy (plain and fast) vs hard."""
    texts = prompts(sz["rows"], sz["prompt"], len(tok))
    cot, new = sz["cot"], sz["cot"] + 2
    enc = tok(texts, return_tensors="pt", padding=True).to(device)

    def generate():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                             pad_token_id=tok.pad_token_id)
        assert out.shape[1] == enc.input_ids.shape[1] + new
    for mode in softcot.MODES:
        ro = roll(model, tok, texts, mode, cot, sigma)
        assert ro.stop_reason == ["cap"] * len(texts) and ro.ids.shape[1] == new and bool((ro.answer_len == 1).all())
    fns = {"generate": generate, "hard": lambda: roll(model, tok, texts, "hard", cot, sigma),
           "soft": lambda: roll(model, tok, texts, "soft", cot, sigma),        # tau 0.5: always the dense path
           "fuzzy plain": path(False, lambda: roll(model, tok, texts, "fuzzy", cot, sigma)),
           "fuzzy fast": path(True, lambda: roll(model, tok, texts, "fuzzy", cot, sigma))}
    return dict(seconds=timings(fns, sz["repeats"], device), rows=len(texts), new_tokens=new)


def bench_rescore(model, tok, sz, sigma, device):
    """Table 3: re-scoring time and peak memory; peak memory against CoT cap, micro-batch and rows."""
    n, m, cot = sz["score_rows"], sz["micro"], sz["cot"]
    texts = prompts(2 * n, sz["prompt"], len(tok), seed=1)
    ros = {(mode, c): roll(model, tok, texts, mode, c, sigma) for mode in softcot.MODES for c in sz["cots"]}
    batch = {mode: ros[mode, cot].select(range(n)) for mode in softcot.MODES}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.train()
    fns = {"hard": lambda: rescore_step(model, batch["hard"], m), "soft": lambda: rescore_step(model, batch["soft"], m),
           "fuzzy plain": path(False, lambda: rescore_step(model, batch["fuzzy"], m)),
           "fuzzy fast": path(True, lambda: rescore_step(model, batch["fuzzy"], m))}
    out = dict(seconds=timings(fns, sz["repeats"], device), peak_bytes={k: peak_memory(f, device)
                                                                          for k, f in fns.items()})
    sweep = []      # peak memory at each (CoT cap, micro-batch, rows), per mode, on softcot's default path
    points = [(c, m, n) for c in sz["cots"]] + [(cot, mm, n) for mm in sz["micros"] if mm != m] + [(cot, m, 2 * n)]
    for c, mm, rows in points:
        peaks = {}
        for mode in softcot.MODES:
            ro = ros[mode, c].select(range(rows))
            peaks[mode] = peak_memory(lambda: rescore_step(model, ro, mm), device)
        # for scale: one (micro-batch, generated length, V) fp32 tensor, which the design allows per micro-batch only
        sweep.append(dict(cot=c, micro=mm, rows=rows, peak_bytes=peaks, logits_bytes=mm * (c + 2) * len(tok) * 4))
    model.eval()
    for p in model.parameters():
        p.grad = None
    out["sweep"] = sweep
    return out


def bench_precision(model, tok, sz, sigma, device):
    """Table 5: the precision policy's cost. fp32 master weights under bf16 autocast (train.py's GPU default), with
    the LM head in fp32 (softcot.FP32Head: fp32 logits for the mixture, the shadow argmax and the log-probs) against
    the same model with a plain head (bf16 logits): a fuzzy rollout, and the re-scoring step (forward + backward)."""
    master = copy.deepcopy(model).float()
    n, m, cot = sz["score_rows"], sz["micro"], sz["cot"]
    texts = prompts(n, sz["prompt"], len(tok), seed=2)
    ctx = torch.autocast(device, dtype=torch.bfloat16)

    def head(cls, fn):
        def run():
            master.lm_head.__class__ = cls
            with ctx:
                return fn()
        return run
    ro = head(softcot.FP32Head, lambda: roll(master, tok, texts, "fuzzy", cot, sigma))()
    for p in master.parameters():
        p.grad = torch.zeros_like(p)
    fns = {}
    for name, cls in (("bf16 head", torch.nn.Linear), ("fp32 head", softcot.FP32Head)):
        fns[f"rollout, {name}"] = head(cls, lambda: roll(master, tok, texts, "fuzzy", cot, sigma))
        fns[f"re-score, {name}"] = head(cls, lambda: rescore_step(master, ro, m))
    out = dict(seconds=timings(fns, sz["repeats"], device))
    del master
    return out


def bench_mixture(model, sz, device):
    """Table 4: the mixture alone. Rollout step: from given logits (rows, V), as the rollout has them. Re-scoring:
    from final hidden states (micro x cot, d) through h W^T, forward and backward, as sequence_logprobs does."""
    E = model.get_input_embeddings().weight                  # (V, d); also the output layer W (tied)
    with torch.no_grad():
        ids = torch.randint(2, E.shape[0], (sz["micro"], sz["cot"]), device=device, generator=torch.Generator(device))
        hidden = model.model(input_ids=ids).last_hidden_state.flatten(0, 1)      # (n, d): final normed states
        h_step = hidden[:sz["rows"]]                                               # (rows, d)
        logits = (h_step @ E.T).float()                                           # (rows, V)
        step = timings({"fuzzy dense": path(False, lambda: softcot.mixture(logits, E, 1e-4)),
                        "fuzzy sparse": path(True, lambda: softcot.mixture(logits, E, 1e-4)),
                        "soft": lambda: softcot.mixture(logits, E, 0.5),
                        "soft attention": lambda: attention_read(h_step, E, E, 0.5)}, sz["repeats"], device,
                       number=10)
    h = hidden.detach().requires_grad_()
    g = torch.randn(h.shape, device=device, generator=torch.Generator(device))   # a fixed d(loss)/d(mixture)

    def plain(tau):
        (softcot.mixture(h @ E.T, E, tau) * g).sum().backward()

    def fused(tau):
        (attention_read(h, E, E, tau).float() * g).sum().backward()
    E.grad = None
    rescore = timings({"fuzzy dense": path(False, lambda: plain(1e-4)), "fuzzy sparse": path(True, lambda: plain(1e-4)),
                       "soft": lambda: plain(0.5), "soft attention": lambda: fused(0.5)}, sz["repeats"], device)
    E.grad = None
    return dict(step=step, step_rows=len(logits), rescore=rescore, rescore_rows=len(h))


# ------------------------------------------------------------------------------------------------ main
def machine(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    with open("/proc/cpuinfo") as f:
        name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    return f"{name}, {os.cpu_count()} cores"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"],
                    help="weights (default float32 on cpu, bfloat16 on cuda)")
    ap.add_argument("--shapes", help=f"comma-separated, from {', '.join(SHAPES)} (default: tiny,proxy,proxy-3b on "
                    "cpu, llama3b on cuda, tiny with --quick)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: small batches, 3 rounds")
    ap.add_argument("--repeats", type=int, help="timing rounds after the warm-up (default 7 on cpu, 5 on cuda, 3 "
                    "with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default="runs/bench.json", help="JSON with every number (default runs/bench.json)")
    args = ap.parse_args(argv)
    # checked before any model is made: a bad value ends the run at once, with the flag named (exit code 2)
    for flag in ("repeats", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag} {getattr(args, flag)}: pass a whole number >= 1")
    for shape in (args.shapes or "tiny").split(","):
        if shape not in SHAPES:
            ap.error(f"--shapes {args.shapes}: {shape!r} is not a shape; pass a comma-separated list from "
                     f"{', '.join(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here; pass --device cpu")
    problem = "it is a folder" if os.path.isdir(args.out) else runs.unwritable(os.path.dirname(args.out) or ".")
    if problem:
        ap.error(f"--out {args.out}: cannot write the JSON there ({problem}); pass a file path you can write")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    sz = dict(SIZES["quick" if args.quick else device])
    sz["repeats"] = args.repeats or sz["repeats"]
    shapes = (args.shapes or ("tiny" if args.quick else "llama3b" if device == "cuda" else "tiny,proxy,proxy-3b")
              ).split(",")
    torch.set_num_threads(args.threads)
    info = dict(machine=machine(device), device=device, dtype=str(dtype).split(".")[1], threads=args.threads,
                torch=torch.__version__, transformers=transformers.__version__, sizes=sz)
    clock = "CPU time" if device == "cpu" and args.threads == 1 else "wall-clock time"
    print(f"softcot bench: {info['machine']}, {args.threads} torch thread(s), {info['dtype']}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}; times: {clock}, median of {sz['repeats']} "
          "rounds after a warm-up\n")
    res = {}
    for shape in shapes:
        model, tok = make_model(shape, device, dtype)
        sigma = softcot.noise_sigma(model)
        res[shape] = dict(pE_share=mixture_share(shape), rollout=bench_rollout(model, tok, sz, sigma, device),
                          rescore=bench_rescore(model, tok, sz, sigma, device),
                          mixture=bench_mixture(model, sz, device),
                          precision=bench_precision(model, tok, sz, sigma, device))
        print(f"[{shape} done]", flush=True)
        del model
    print_tables(res, sz)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info | dict(results=res), f, indent=1)
    print(f"\nwrote {args.out}")


# ------------------------------------------------------------------------------------------------ printing
# The markdown tables on stdout, from the results `main` also writes to --out.


def mb(nbytes):
    return f"{nbytes / 2**20:.2f}"


def print_tables(res, sz):
    """The tables, as markdown. Times are medians over rounds; ratios are medians of the per-round ratios."""
    print(f"\n1. Hard rollout vs model.generate: {sz['rows']} rows x {sz['cot'] + 2} new tokens, sampling, KV cache\n")
    print("| shape | pE/fwd | ours tok/s | generate tok/s | ours / generate |\n|---|---|---|---|---|")
    for s, r in res.items():
        t, tokens = r["rollout"]["seconds"], r["rollout"]["rows"] * r["rollout"]["new_tokens"]
        print(f"| {s} | {r['pE_share']:.0%} | {tokens / med(t, 'hard'):.0f} | {tokens / med(t, 'generate'):.0f} | "
              f"{ratio(t, 'generate', 'hard'):.2f} |")
    print(f"\n2. Rollouts, soft / fuzzy vs hard: seconds per rollout ({sz['cot']} of {sz['cot'] + 2} steps are CoT); "
          "fuzzy plain = dense mixture, fast = exact sparse path; pE / step = one step's soft mixture (table 4) over "
          "a hard rollout's time per step: soft / hard - 1 as the mixture alone predicts it\n")
    print("| shape | pE/fwd | hard s | soft s | fuzzy s plain | fuzzy s fast | soft / hard | pE / step | "
          "fuzzy / hard plain | fuzzy / hard fast |\n" + "|---" * 10 + "|")
    for s, r in res.items():
        t = r["rollout"]["seconds"]
        per_step = med(r["mixture"]["step"], "soft") / (med(t, "hard") / r["rollout"]["new_tokens"])
        print(f"| {s} | {r['pE_share']:.0%} | {med(t, 'hard'):.3f} | {med(t, 'soft'):.3f} | "
              f"{med(t, 'fuzzy plain'):.3f} | {med(t, 'fuzzy fast'):.3f} | {ratio(t, 'soft', 'hard'):.2f} | "
              f"{per_step:.2f} | {ratio(t, 'fuzzy plain', 'hard'):.2f} | {ratio(t, 'fuzzy fast', 'hard'):.2f} |")
    print(f"\n3. Training step (re-scoring forward + backward): {sz['score_rows']} rows, micro-batch {sz['micro']}, "
          f"CoT {sz['cot']}; peak memory above weights and gradients\n")
    print("| shape | variant | step s | x hard | peak MiB | x hard |\n|---|---|---|---|---|---|")
    for s, r in res.items():
        t, p = r["rescore"]["seconds"], r["rescore"]["peak_bytes"]
        for k in t:
            print(f"| {s} | {k} | {med(t, k):.3f} | {ratio(t, k, 'hard'):.2f} | {mb(p[k])} | "
                  f"{p[k] / p['hard']:.2f} |")
    print("\n3b. Peak memory of the step (MiB) against CoT cap, micro-batch and rows; for scale, one fp32 tensor of "
          "(micro-batch, generated length, V) and one of (V, d)\n")
    print("| shape | CoT | micro | rows | hard | soft | fuzzy | (m, S, V) | (V, d) |\n" + "|---" * 9 + "|")
    for s, r in res.items():
        vd = mb(SHAPES[s]["vocab"] * SHAPES[s]["d"] * 4)
        for w in r["rescore"]["sweep"]:
            p = w["peak_bytes"]
            print(f"| {s} | {w['cot']} | {w['micro']} | {w['rows']} | {mb(p['hard'])} | {mb(p['soft'])} | "
                  f"{mb(p['fuzzy'])} | {mb(w['logits_bytes'])} | {vd} |")
    print("\n4. The mixture alone, plain -> fast (ms). Rollout step: from the step's logits; re-scoring: from the "
          "final hidden states h through h W^T, forward + backward\n")
    print("| shape | what | rows | plain ms | fast ms | plain / fast |\n|---|---|---|---|---|---|")
    for s, r in res.items():
        mix = r["mixture"]
        for what, t, n, plain, fast in [
                ("rollout step, fuzzy: dense -> sparse", mix["step"], mix["step_rows"], "fuzzy dense", "fuzzy sparse"),
                ("rollout step, soft: from logits -> attention read from h", mix["step"], mix["step_rows"], "soft",
                 "soft attention"),
                ("re-scoring, fuzzy: dense -> sparse", mix["rescore"], mix["rescore_rows"], "fuzzy dense",
                 "fuzzy sparse"),
                ("re-scoring, soft: plain -> attention read", mix["rescore"], mix["rescore_rows"], "soft",
                 "soft attention")]:
            print(f"| {s} | {what} | {n} | {med(t, plain) * 1e3:.2f} | {med(t, fast) * 1e3:.2f} | "
                  f"{ratio(t, plain, fast):.2f} |")
    print(f"\n5. The LM head in fp32 (softcot.FP32Head) vs bf16, under bf16 autocast over fp32 weights: fuzzy rollout "
          f"({sz['score_rows']} rows, CoT {sz['cot']}) and re-scoring step (micro-batch {sz['micro']}), seconds\n")
    print("| shape | what | bf16 head s | fp32 head s | fp32 / bf16 |\n|---|---|---|---|---|")
    for s, r in res.items():
        t = r["precision"]["seconds"]
        for what in ("rollout", "re-score"):
            print(f"| {s} | {what} | {med(t, what + ', bf16 head'):.3f} | {med(t, what + ', fp32 head'):.3f} | "
                  f"{ratio(t, what + ', fp32 head', what + ', bf16 head'):.2f} |")


if __name__ == "__main__":
    main()
