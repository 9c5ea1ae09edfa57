"""Tests for rewards.py: extraction (of answers, and of the golds data.py reads with it), the
Eq. 11 reward on tricky pairs, the GSM8K gold rule, and a grader that neither crashes nor hangs
(threads, timeouts, a dead worker).

Every verdict in TRICKY was checked against Math-Verify 0.9.0 before being written down; where
Math-Verify's verdict is surprising, a comment says so instead of forcing our opinion."""

import json
import threading

import pytest

import data
import rewards
from rewards import extract_boxed, gsm8k_gold

# ---------------------------------------------------------------- Eq. 11 on tricky pairs
# (answer text as the reward sees it: prefill + generated, gold, expected reward)
TRICKY = [
    # thousands separators and GSM8K-style golds
    ("\\boxed{1,000}", "1000", 100),
    ("\\boxed{1000}", "1,000", 100),
    ("\\boxed{1,000,000}", "1000000", 100),
    ("\\boxed{-3}", "-3", 100),
    ("\\boxed{3}", "-3", 10),
    ("\\boxed{\\$18}", "18", 100),
    ("\\boxed{18 \\text{ dollars}}", "18", 100),  # units in \text are dropped
    ("\\boxed{12.}", "12", 100),  # a sentence-final dot inside the box
    ("\\boxed{2.0}", "2", 100),
    # fractions and decimals
    ("\\boxed{\\frac12}", "0.5", 100),
    ("\\boxed{0.5}", "\\frac{1}{2}", 100),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 100),
    ("\\boxed{\\frac{1}{2}}", "0.5", 100),  # nested braces
    ("\\boxed{1/2}", "\\frac12", 100),
    ("\\boxed{0.333}", "\\frac13", 10),  # 3 digits are not 1/3 (6-digit rounding)
    # percentages. Surprising: Math-Verify accepts 10% for gold 10 AND for gold 0.1, and both
    # 10 and 0.1 for gold 10%: it tries the percentage with and without the factor 1/100.
    ("\\boxed{10\\%}", "0.1", 100),
    ("\\boxed{10\\%}", "10", 100),
    ("\\boxed{0.1}", "10\\%", 100),
    ("\\boxed{10}", "10\\%", 100),
    # equations vs values: an assignment matches its value, both ways
    ("\\boxed{x = 3}", "3", 100),
    ("\\boxed{3}", "x = 3", 100),
    # intervals and sets
    ("\\boxed{(1, 2]}", "(1,2]", 100),
    ("\\boxed{[1,2)}", "(1,2]", 10),
    ("\\boxed{(1,2)}", "(1,2]", 10),
    ("\\boxed{\\{2,1\\}}", "\\{1,2\\}", 100),
    ("\\boxed{2, 1}", "\\{1,2\\}", 100),
    ("\\boxed{\\{1,3\\}}", "\\{1,2\\}", 10),
    # Surprising: the gold (1,2) may be read as the pair of values {1, 2}, so a set matches.
    ("\\boxed{\\{1,2\\}}", "(1,2)", 100),
    # symbolic
    ("\\boxed{\\sqrt{50}}", "5\\sqrt{2}", 100),
    ("\\boxed{(x+2)(x+5)}", "x^2+7x+10", 100),
    ("\\boxed{90^\\circ}", "90", 100),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", 100),
    ("\\boxed{C}", "\\text{(C)}", 100),
    ("\\boxed{B}", "\\text{(C)}", 10),
    ("\\boxed{\\infty}", "3", 10),
    ("\\boxed{two}", "2", 10),  # words are not numbers
    ("\\boxed{\\frac{}{}}", "5", 10),  # boxed garbage: wrong, not a grader error
    # which box, and no box
    ("\\boxed{4} then \\boxed{5}", "5", 100),  # the last box counts
    ("\\boxed{5} then \\boxed{4}", "5", 10),
    ("\\boxed{5}. Human: \\boxed{", "5", 0),  # the last box is unclosed: no answer
    ("\\boxed{", "5", 0),  # the prefill alone
    ("\\boxed{5", "5", 0),  # ran out of answer tokens before the brace
    ("The answer is 5", "5", 0),  # correct but unboxed: Eq. 11 gives 0
    ("", "5", 0),
    ("\\boxed{}", "5", 0),
    ("\\boxed{ }", "5", 0),
]


@pytest.mark.parametrize("answer,gold,expected", TRICKY, ids=[f"{a}|{g}" for a, g, _ in TRICKY])
def test_reward_on_tricky_pairs(answer, gold, expected):
    assert rewards.reward(answer, gold) == expected


def test_score_batch_fields_agree_with_rewards():
    answers = [a for a, _, _ in TRICKY]
    golds = [g for _, g, _ in TRICKY]
    s = rewards.score(answers, golds)
    assert s.rewards == [float(r) for _, _, r in TRICKY]
    assert s.correct == [r == 100 for _, _, r in TRICKY]
    assert s.boxed == [r > 0 for _, _, r in TRICKY]
    assert s.grader_errors == 0 and s.error_messages == []


# ---------------------------------------------------------------- extraction: the box and GSM8K's ####
@pytest.mark.parametrize("text,expected", [
    ("\\boxed{42}", "42"),
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are characters, not nesting
    ("\\boxed{a \\} b}", "a \\} b"),
    ("\\boxed {7}", "7"),  # a space before the brace
    ("\\boxed{1} and \\boxed{2}", "2"),
    ("\\boxed{\\boxed{3}}", "3"),
    ("\\boxed{}", ""),
    ("\\boxed{", None),
    ("\\boxed{\\frac{1}{2}", None),
    ("\\boxed{1} \\boxed{2", None),  # the last box decides
    ("no box", None),
    ("\\fbox{3}", None),  # only \boxed is the format the prompt asks for
    ("\\boxedx{3}", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("\\fbox{3}", "3"),  # a few MATH solutions box their answer this way
    ("\\fbox {3}", "3"),
    ("\\boxed{1} then \\fbox{2}", "2"),  # the last box of either kind decides
    ("\\fbox{1} then \\boxed{2}", "2"),
    ("\\fbox{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{1} \\fbox{2", None),  # unclosed: the last box decides here too
    ("no box", None),
])
def test_extract_boxed_with_fbox(text, expected):
    """fbox=True, as data.py reads golds from human-written solutions; answers never get it."""
    assert extract_boxed(text, fbox=True) == expected


def test_extract_boxed_rejects_non_strings():
    with pytest.raises(ValueError, match="expects a str"):
        extract_boxed(None)


@pytest.mark.parametrize("field,gold", [
    ("She pays 3 + 4 = <<3+4=7>>7 dollars.\n#### 7", "7"),
    ("#### 1,000", "1000"),
    ("He loses 5.\n#### -5", "-5"),
    ("a #### b\n#### 12,345,678", "12345678"),  # the last marker
    ("#### 72 ", "72"),
])
def test_gsm8k_gold(field, gold):
    assert gsm8k_gold(field) == gold


@pytest.mark.parametrize("field", ["no marker 7", "#### ", None])
def test_gsm8k_gold_rejects_fields_without_a_number(field):
    with pytest.raises(ValueError):
        gsm8k_gold(field)


def test_gsm8k_gold_is_the_data_loaders_rule(tmp_path):
    """data.py's GSM8K loader reads its golds with gsm8k_gold: the loader and the function give the cases' golds."""
    fields = ["x\n#### 7", "#### 1,000", "#### -5", "#### 12,345"]
    golds = ["7", "1000", "-5", "12345"]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": f}) + "\n" for i, f in enumerate(fields)))
    assert [gsm8k_gold(f) for f in fields] == golds
    assert [r["answer"] for r in data.load("gsm8k", "test", path=path)] == [gsm8k_gold(f) for f in fields]


# ---------------------------------------------------------------- bad input; a grader that neither crashes nor hangs
def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="2 answers but 1 golds"):
        rewards.score(["\\boxed{1}", "\\boxed{2}"], ["1"])
    with pytest.raises(ValueError, match=r"answers\[0\] is NoneType"):
        rewards.score([None], ["1"])
    with pytest.raises(ValueError, match=r"golds\[0\] is empty"):
        rewards.score(["\\boxed{1}"], [" "])


def test_math_verify_alone_fails_off_the_main_thread():
    """The premise of the worker design: Math-Verify's signal timeouts raise in a thread."""
    from math_verify import parse

    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(ValueError, parse, "$1$")))
    t.start()
    t.join()
    assert len(errors) == 1 and "thread" in str(errors[0].value)


def test_grading_from_non_main_threads():
    results = {}

    def grade(k):  # the shared default grader, used from two threads at once
        results[k] = rewards.score(["\\boxed{\\frac12}", "\\boxed{3}"], ["0.5", "4"]).rewards

    def own_grader():  # a Grader made and used inside a thread
        with rewards.Grader() as g:
            results["own"] = g.score(["\\boxed{x=3}"], ["3"]).rewards

    threads = [threading.Thread(target=grade, args=(k,)) for k in range(2)]
    threads.append(threading.Thread(target=own_grader))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {0: [100.0, 10.0], 1: [100.0, 10.0], "own": [100.0]}


def test_timeout_is_counted_then_the_worker_restarts():
    """10^(10^10) makes sympy build a 10-billion-digit integer: without a deadline it hangs."""
    with rewards.Grader(timeout=1.0) as g:
        s = g.score(["\\boxed{10^{10^{10}}}", "\\boxed{10^{10^{10}}}", "\\boxed{5}", "no box"], ["5"] * 4)
        # both copies are counted (graded once), get the extraction-only reward 10; others unharmed
        assert s.rewards == [10.0, 10.0, 100.0, 0.0]
        assert s.grader_errors == 2 and all("timeout" in m for m in s.error_messages)
        assert g.restarts == 1
        assert g.score(["\\boxed{6}"], ["6"]).rewards == [100.0]  # a fresh worker


def test_grader_errors_are_counted_not_silent_zeros():
    with rewards.Grader() as g:
        s = g.score(["\\boxed{5}", "\\boxed{5}"], ["\\text{}", "5"])  # a gold that parses to nothing
        assert s.rewards == [10.0, 100.0] and s.correct == [False, True]
        assert s.grader_errors == 1 and "gold" in s.error_messages[0]


def test_a_worker_that_died_while_idle_is_replaced():
    with rewards.Grader() as g:
        assert g.check("1", "1") == (True, None)
        g._proc.kill()  # e.g. the out-of-memory killer
        g._proc.wait()
        assert g.check("2", "2") == (True, None)
        assert g.restarts == 1
