"""The paper's tokenizers and model folders (tests/paper_models.py): the tokenizers against tiktoken on the same rank
files, and what softcot's stop rule, the answer prefills and the reward see through them; the shrunk model folders
against the real config fields. In-process; the folders come from the model cache (built there the first time)."""
import json
import os
import unicodedata

import pytest
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

import data
import memory
import paper_models
import rewards
import softcot

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
            "clips did Natalia sell altogether in April and May?")
STRINGS = [
    data.format_prompt(QUESTION),                                             # App. B, with its curly quotes
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
    "April and May.\n#### 72",                                                # a GSM8K chain of thought
    "So $x = \\frac{1}{2}$ and $y = \\dfrac{9}{7}$. The final answer is: \\boxed{18}.",
    "123456789 and 3.14159, 1,000,000 or 1{,}000",
    "cafe\u0301 caf\u00e9 na\u00efve \u2018quoted\u2019 \u6570\u5b66 \U0001F600",   # decomposed and composed e-acute
    "a  b\n\n\nc \t d   \n  lead and trail  ",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",      # each one's specials
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
]


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


@pytest.fixture(params=["llama3", "qwen25"])
def pair(request, llama3_tok, qwen_tok):
    """(the transformers tokenizer, tiktoken on the same ranks, what the reference does to the text first)."""
    if request.param == "llama3":
        ranks = load_tiktoken_bpe(paper_models.llama_files()[1])              # tokenizer.model, not tokenizer.json
        specials = {name: i for i, name in paper_models.llama_specials().items()}
        return llama3_tok, tiktoken.Encoding("llama3", pat_str=paper_models.LLAMA_PATTERN, mergeable_ranks=ranks,
                                             special_tokens=specials), lambda s: s
    specials = {name: 151643 + i for i, (name, _) in enumerate(paper_models.QWEN_ADDED)}
    reference = tiktoken.Encoding("qwen25", pat_str=paper_models.QWEN_PATTERN,
                                  mergeable_ranks=load_tiktoken_bpe(paper_models.qwen_file()), special_tokens=specials)
    return qwen_tok, reference, lambda s: unicodedata.normalize("NFC", s)     # as Qwen's own tokenizer does


# ------------------------------------------------------------------------------------------------ the tokenizers
def test_llama3_tokenizer_is_llama_3_1_and_3_2_instructs(llama3_tok):
    tok = llama3_tok
    assert len(tok) == 128256
    names = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128004: "<|finetune_right_pad_id|>",
             128005: "<|reserved_special_token_2|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>",
             128010: "<|python_tag|>", 128011: "<|reserved_special_token_3|>",
             128255: "<|reserved_special_token_247|>"}
    assert {i: tok.convert_ids_to_tokens(i) for i in names} == names
    assert all(t.special for i, t in tok.added_tokens_decoder.items() if i >= 128000)
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id, tok.pad_token) == \
        ("<|begin_of_text|>", 128000, "<|eot_id|>", 128009, None)
    assert tok("Hi").input_ids == [128000, 13347]                   # the post-processor adds BOS, once
    assert tok("Hi", "there").input_ids == [128000, 13347, 128000] + ids(tok, "there")   # a pair: BOS before each
    assert ids(tok, "Hi") == [13347]


def test_qwen25_tokenizer_is_qwen25_instructs(qwen_tok):
    tok = qwen_tok
    assert len(tok) == 151665
    added = {i: (t.content, t.special) for i, t in tok.added_tokens_decoder.items()}
    assert added == {151643 + i: a for i, a in enumerate(paper_models.QWEN_ADDED)}
    assert [added[i][0] for i in (151643, 151644, 151645, 151646, 151657, 151664)] == \
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<tool_call>", "<|file_sep|>"]
    assert (tok.bos_token, tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == \
        (None, "<|im_end|>", 151645, "<|endoftext|>", 151643)
    assert tok("Hi").input_ids == ids(tok, "Hi") == [13048]          # no BOS


def test_tokenizers_agree_with_tiktoken(pair):
    tok, reference, prepare = pair
    for s in STRINGS:
        got = tok(s, add_special_tokens=False).input_ids
        assert got == reference.encode(prepare(s), allowed_special="all"), s
        assert tok.decode(got) == prepare(s)                          # byte-level BPE loses nothing but NFC
    # numbers: Llama 3 splits them into groups of up to 3 digits, Qwen2 into single digits
    digits = tok.convert_ids_to_tokens(ids(tok, "123456789"))
    assert digits == (["123", "456", "789"] if tok.eos_token == "<|eot_id|>" else list("123456789"))
    # NFC: only Qwen composes a decomposed e-acute before splitting
    assert (ids(tok, "cafe\u0301") == ids(tok, "caf\u00e9")) == (tok.eos_token == "<|im_end|>")


# ------------------------------------------------------------------------------------------------ the stop rule
def cot_end(tok, cot):
    """Feed the tokens of `cot` to softcot._end_cots one step at a time, as the rollout does after each CoT step
    (its shadow tokens in soft / fuzzy modes); return (CoT length when it ended, stop reason, the prefill ids), or
    None when it would run on to the cap."""
    prefills = [ids(tok, t) for t in (softcot.PREFILL_STOPPED, softcot.PREFILL_CAPPED)]
    cot_ids, cap = ids(tok, cot), 1000
    out = softcot._Buffers.empty(1, len(cot_ids), cap, torch.zeros(1, 8), max(map(len, prefills)), soft=False)
    rows, eos = torch.tensor([0]), torch.tensor([tok.eos_token_id])
    for s, t in enumerate(cot_ids):
        out.ids[0, s] = t                                   # what _cot_step records before the stop decision
        softcot._end_cots(out, tok, rows, torch.tensor([t]), s, eos, softcot.TRIGGER, prefills, cap)
        if not out.in_cot[0]:
            return int(out.cot_len[0]), out.stop_reason[0], out.prefill[0, :out.prefill_len[0]].tolist()
    return None


@pytest.mark.parametrize("cot, stops_after", [
    (" 48 + 24 = 72. The final answer is: \\boxed{72}", "The final answer is:"),   # after a space: ":" alone
    (" 48 + 24 = 72.\nThe final answer is: \\boxed{72}", "The final answer is:"),  # after a newline
    (" so 72.The final answer is: \\boxed{72}", "The final answer is:"),           # glued to ".": ".The"
    (" The final answer is: $\\boxed{18}$", "The final answer is:"),                # ":" then " $\\"
    (" The final answer is:\n\\boxed{18}", "The final answer is:\n"),              # ":\n" is one token
], ids=["space", "newline", "glued", "dollar-boxed", "colon-newline"])
def test_the_stop_rule_fires_at_the_trigger(pair, cot, stops_after):
    tok = pair[0]
    # the boundaries this relies on, the same in both vocabularies
    assert tok.convert_ids_to_tokens(ids(tok, "is: \\boxed")) == ["is", ":", "Ġ\\", "boxed"]
    assert tok.convert_ids_to_tokens(ids(tok, "is: $\\boxed")) == ["is", ":", "Ġ$\\", "boxed"]
    assert tok.convert_ids_to_tokens(ids(tok, "is:\n\\boxed")) == ["is", ":Ċ", "\\", "boxed"]
    head = cot[:cot.index(stops_after) + len(stops_after)]
    assert ids(tok, cot)[:len(ids(tok, head))] == ids(tok, head)      # the CoT's tokens up to the stop are head's
    assert cot_end(tok, cot) == (len(ids(tok, head)), "trigger", ids(tok, softcot.PREFILL_STOPPED))


@pytest.mark.parametrize("cot", [
    " The final answer is:\\boxed{18}",        # ":\\" is one token: the text never ends with the trigger
    " **The final answer is:** 18",            # ":**" is one token
    " so the final answer is: \\boxed{18}",    # lower case: not the trigger
], ids=["colon-backslash", "bold", "lower-case"])
def test_the_stop_rule_never_fires(pair, cot):
    tok = pair[0]
    assert tok.convert_ids_to_tokens(ids(tok, "is:\\boxed")) == ["is", ":\\", "boxed"]
    assert tok.convert_ids_to_tokens(ids(tok, "is:**")) == ["is", ":**"]
    assert cot_end(tok, cot) is None                 # the CoT runs on to the cap (then PREFILL_CAPPED)


# ------------------------------------------------------------------------------------------------ prefills, reward
@pytest.mark.parametrize("prefill", [softcot.PREFILL_STOPPED, softcot.PREFILL_CAPPED])
def test_prefills_round_trip(pair, prefill):
    """The ids the rollout appends (softcot.rollout encodes each prefill this way) decode to the prefill, end on "{",
    and an answer after them decodes as if written in one piece: nothing merges across the seam."""
    tok = pair[0]
    p = ids(tok, prefill)
    assert tok.decode(p) == prefill and tok.convert_ids_to_tokens(p)[-1] == "{"
    assert tok.decode(p + ids(tok, "18}") + [tok.eos_token_id], skip_special_tokens=True) == prefill + "18}"


def test_the_reward_grades_what_the_tokenizers_decode(pair):
    tok = pair[0]
    answers = ["$18$", "\\$18", "\\text{18}", "1,000", "1{,}000", "\\dfrac{9}{7}", "9/7"]
    golds = ["18", "18", "18", "1000", "1000", "9/7", "9/7"]
    # as softcot._pack: the prefill's text + the decoded answer tokens (here the answer's, then EOS)
    texts = [softcot.PREFILL_STOPPED + tok.decode(ids(tok, a + "}") + [tok.eos_token_id], skip_special_tokens=True)
             for a in answers]
    assert texts == [softcot.PREFILL_STOPPED + a + "}" for a in answers]
    assert rewards.score(texts, golds).rewards == [100.0] * len(answers)


# ------------------------------------------------------------------------------------------------ the model folders
@pytest.mark.parametrize("name, vocab, theta, factor, tied", [
    ("llama3b", 128256, 500000.0, 32.0, True), ("llama8b", 128256, 500000.0, 8.0, False),
    ("qwen3b", 151936, 1000000.0, None, True)])
def test_paper_model_folder(paper_model, llama3_tok, qwen_tok, name, vocab, theta, factor, tied):
    path = paper_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    c, g = model.config, model.generation_config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim) == (vocab, 256, 2, 512, 2, 1, 128)
    assert c.rope_parameters["rope_theta"] == theta and c.rope_parameters.get("factor") == factor
    assert c.tie_word_embeddings is tied and (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    if name == "qwen3b":
        tok, family = qwen_tok, "qwen25"
        assert isinstance(model, Qwen2ForCausalLM) and model.model.layers[0].self_attn.q_proj.bias is not None
        assert (c.bos_token_id, c.eos_token_id, g.eos_token_id, g.pad_token_id) == \
            (151643, 151645, [151645, 151643], 151643)
    else:
        tok, family = llama3_tok, "llama3"
        rope = c.rope_parameters
        assert (rope["rope_type"], rope["original_max_position_embeddings"], rope["low_freq_factor"],
                rope["high_freq_factor"]) == ("llama3", 8192, 1.0, 4.0)
        assert (c.bos_token_id, c.eos_token_id, g.eos_token_id) == \
            (128000, [128001, 128008, 128009], [128001, 128008, 128009])
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:            # saved in bf16, as the real ones
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    tokenizer = paper_models.tokenizer_folder(family)                              # the tokenizer tested above
    with open(os.path.join(path, "tokenizer.json"), "rb") as a, open(os.path.join(tokenizer, "tokenizer.json"),
                                                                   "rb") as b:
        assert a.read() == b.read()
    config = [json.load(open(os.path.join(folder, "tokenizer_config.json"))) for folder in (path, tokenizer)]
    assert [{k: c.get(k) for k in ("bos_token", "eos_token", "pad_token")} for c in config] == \
        [{k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token")}] * 2
    with torch.no_grad():                                                          # the App. B prompt runs
        logits = model(input_ids=torch.tensor([tok(data.format_prompt(QUESTION)).input_ids])).logits
    assert logits.shape[-1] == vocab and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(paper_models.MODELS))
def test_real_sizes_are_the_published_ones(name):
    """REAL (scripts/gpu_check.py's sizes) agrees with memory.PAPER_MODELS, the plan's published shapes."""
    c = memory.PAPER_MODELS[paper_models.MODELS[name][0]]
    real = paper_models.REAL[name]
    assert {k: getattr(c, k) for k in real if k not in ("head_dim", "max_position_embeddings")} == \
        {k: v for k, v in real.items() if k not in ("head_dim", "max_position_embeddings")}
    assert real["hidden_size"] // real["num_attention_heads"] == real["head_dim"]
    assert paper_models.MODELS[name][2]["tie_word_embeddings"] == c.tie_word_embeddings


def test_a_paper_model_folder_is_built_once(paper_model):
    path = paper_model("llama3b")
    made = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    assert paper_models.paper_model_folder("llama3b") == path
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == made

def test_one_process_builds_a_folder_while_the_others_wait(tmp_path):
    """paper_models.one_builder: a second holder (another xdist worker) waits until the first one is done."""
    import threading
    path, order = str(tmp_path / "folder"), []

    def second():
        with paper_models.one_builder(path):
            order.append("second")

    with paper_models.one_builder(path):
        t = threading.Thread(target=second)
        t.start()
        t.join(0.5)                                   # blocked: flock holds across open files, threads included
        order.append("first done")
    t.join()
    assert order == ["first done", "second"]
