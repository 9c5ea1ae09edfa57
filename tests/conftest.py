"""Shared fixtures: a small BPE tokenizer trained here, and tiny random Llama / Qwen2 models built from configs.

Nothing is downloaded. The tokenizer is byte-level BPE (like Llama 3 and Qwen), trained in a few ms on text in
the paper's format, so `The final answer is:` spans several tokens whose boundaries depend on context. At the end:
the paper's real tokenizers and shrunk copies of its three models (tests/paper_models.py), built once and cached.
"""
import functools
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(1)   # tests are tiny; one thread avoids oversubscription when run in parallel
# subprocesses: one thread each (two of them may share the 2 cores), offline; a crash in C code (SIGSEGV)
# prints every thread's Python stack (faulthandler), so a failure says where it happened
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
           PYTHONFAULTHANDLER="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def killed_by_signal(p):
    """Did a process (or, under torchrun, a worker: the launcher reports `exitcode  : -N`) die of a signal?"""
    return p.returncode < 0 or re.search(r"exitcode\s*:\s*-\d+ \(pid", p.stderr) is not None


def launch(cmd, timeout=600):
    """subprocess.run from the repository root, with ENV. A torchrun launch whose worker dies of a signal is run
    once more, with a warning that carries the crash: rank 0 of the 2-process FSDP run on CPU (gloo, torch 2.13)
    died of SIGSEGV once in CI, inside torch's C code; 77 local runs of the same launch (40 of them beside a busy
    process) did not crash. A wrong result, an exception, or a second crash still fails."""
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if cmd[:3] == TORCHRUN[:3] and p.returncode != 0 and killed_by_signal(p):
        warnings.warn(f"a torchrun worker died of a signal; running it again. Its output:\n{crash_report(p)}")
        p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    return p


def crash_report(p):
    """The end of stdout and stderr, and faulthandler's stacks when a process crashed (they come first, so a
    long torchrun error report cannot push them out of view)."""
    fatal = p.stderr.find("Fatal Python error")
    stacks = p.stderr[fatal:fatal + 4000] + "\n...\n" if fatal >= 0 else ""
    return stacks + p.stdout[-3000:] + p.stderr[-3000:]


def run_script(script, args, torchrun=False):
    """`python script args` (or under torchrun with 2 processes) from the repository root; fails with its output."""
    p = launch((TORCHRUN if torchrun else [sys.executable]) + [script] + args)
    assert p.returncode == 0, crash_report(p)
    return p


def pytest_collection_modifyitems(items):
    """The longest tests first (the notebooks, ~20-80 s each): under `-n 2` (README) the two workers then end
    together, instead of one running a notebook alone at the end."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_notebooks.py::test_runs_top_to_bottom"))


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """A toy base model from a very short supervised run (the real one takes minutes), shared by the end-to-end
    tests of train.py and evaluate.py."""
    import toy
    return toy.base_model(seed=0, steps=20, cache_dir=str(tmp_path_factory.mktemp("cache")))

CORPUS = [
    "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?",
    "She sold 48 / 2 = 24 clips in May, so 48 + 24 = 72 in all. The final answer is: \\boxed{72}",
    "A conversation between User and Assistant. User: what is 3 + 4? Assistant: 3 + 4 = 7.",
    "The final answer is: \\boxed{\\frac{1}{2}}. The final answer is 5. final answers are boxed.",
] * 20


def make_tokenizer(vocab_size=300):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def make_model(family, tokenizer, tied=True, seed=0, max_positions=512):
    torch.manual_seed(seed)
    kw = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
              tie_word_embeddings=tied, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    # initializer_range 0.2 (not 0.02): peaked but varied next-token distributions (entropy ~3-4 nats), so
    # greedy and sampled paths differ. A random EOS output row of norm ~4 makes EOS the argmax now and then,
    # so rows of one batch end at different times and leave it mid-rollout.
    model = cls[1](cls[0](**kw)).eval()
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w[tokenizer.eos_token_id] = 4.0 * torch.randn(w.shape[1]) / w.shape[1] ** 0.5
    return model


@pytest.fixture(scope="session", params=[("llama", True), ("llama", False), ("qwen2", True), ("qwen2", False)],
                ids=["llama-tied", "llama-untied", "qwen2-tied", "qwen2-untied"])
def model(request, tokenizer):
    family, tied = request.param
    return make_model(family, tokenizer, tied=tied)


# The paper's tokenizers and shrunk random-weight copies of its three models (tests/paper_models.py): built once into
# the model cache ($SOFTCOT_CACHE or ~/.cache/softcot; first time 2-4 s per tokenizer, ~5 s per model), then
# loaded (~2 s per tokenizer, once per process). Session fixtures are shared: copy a tokenizer before changing it.
@pytest.fixture(scope="session")
def llama3_tok():
    """Llama-3.1-8B-Instruct's and Llama-3.2-3B-Instruct's tokenizer (no pad token, as released)."""
    import paper_models
    return paper_models.llama3_tokenizer()


@pytest.fixture(scope="session")
def qwen_tok():
    """Qwen2.5-3B-Instruct's tokenizer."""
    import paper_models
    return paper_models.qwen25_tokenizer()


@pytest.fixture(scope="session")
def paper_model():
    """name ("llama3b", "llama8b", "qwen3b") -> the folder of that paper model's shrunk copy, built on first use."""
    import paper_models
    return functools.cache(paper_models.paper_model_folder)
