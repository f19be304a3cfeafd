"""The vLLM simulator's hidden ground truth of answer quality (vllm_sim/truth.py) and its
judge mode: the pure functions directly, then markers and verdicts over HTTP from a real
simulator (uvicorn in a background thread)."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from vllm_sim import SimConfig, SimServer
from vllm_sim.cli import build_parser, config_from_args
from vllm_sim.judge import verdict
from vllm_sim.text import count_tokens, generate, render_chat
from vllm_sim.truth import acceptable, difficulty, p_acceptable

CREATED = 1795818555
ABILITY = 0.5
SHARPNESS = 12.0


def length_term(units: int) -> float:
    return 0.2 * min(1.0, math.log1p(units) / math.log1p(400))


def is_hard(unit: str, seed: int = 0) -> bool:
    """A lone unit is hard exactly when its difficulty carries the 0.8 of the hard share."""
    return difficulty(unit, seed) > 0.5


def split_units(candidates: list[str], hard: int, easy: int) -> list[str]:
    """``hard`` hard units then ``easy`` easy ones, taken from ``candidates`` in order."""
    hs = [u for u in candidates if is_hard(u)][:hard]
    es = [u for u in candidates if not is_hard(u)][:easy]
    assert (len(hs), len(es)) == (hard, easy)
    return hs + es


def ok(text: str) -> bool:
    return acceptable(text, "tiny", ABILITY, 0, SHARPNESS)


def prompt_with(outcome: bool, stem: str) -> str:
    """The first of ``stem 0``, ``stem 1``, ... whose answer by "tiny" is (not) acceptable."""
    return next(p for p in (f"{stem} {i}" for i in itertools.count()) if ok(p) is outcome)


# --------------------------------------------------------------------------- truth.py


def test_difficulty_is_deterministic_and_in_range() -> None:
    rng = random.Random(3)
    words = ["alpha", "Beta", "Ünïcode", "数学", "証明", "доказать", "теорема", "42", "x=y+1", "(why?)"]
    for _ in range(500):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 600)))
        d = difficulty(text, 7)
        assert 0.0 <= d <= 1.0
        assert d == difficulty(text, 7)
    assert difficulty("", 0) == difficulty(" \n\t ", 0) == 0.0
    assert difficulty("Prove The Theorem", 0) == difficulty("prove the theorem", 0)  # case-blind
    assert difficulty("prove  the\ntheorem", 0) == difficulty("prove the theorem", 0)  # any whitespace
    # the seed keys the hash: other seeds, other hard words
    text = " ".join(f"w{i}" for i in range(50))
    assert len({difficulty(text, seed) for seed in range(5)}) > 1
    # an all-hard text of 400+ units is as hard as it gets
    hard = " ".join(u for u in (f"h{i}" for i in range(3000)) if is_hard(u))
    assert difficulty(hard, 0) == pytest.approx(1.0)


def test_difficulty_counts_units_the_same_way_in_every_script() -> None:
    scripts = {
        # written without spaces: one unit per character
        "japanese": ([chr(c) for c in range(0x3041, 0x3097)] + [chr(c) for c in range(0x4E00, 0x4F00)], ""),
        "chinese": ([chr(c) for c in range(0x5000, 0x5200)], ""),
        "thai": ([chr(c) for c in range(0x0E01, 0x0E2F)], ""),
        "korean": ([chr(c) for c in range(0xAC00, 0xAD00)], ""),
        # written with spaces: one unit per word
        "cyrillic": (["".join(p) for p in itertools.product("абвгдежзик", repeat=3)], " "),
        "latin": (["".join(p) for p in itertools.product("abcdefghik", repeat=3)], " "),
    }
    expected = 0.8 * 7 / 20 + length_term(20)
    for name, (candidates, sep) in scripts.items():
        units = split_units(candidates, hard=7, easy=13)
        random.Random(name).shuffle(units)
        assert difficulty(sep.join(units), 0) == pytest.approx(expected), name
    # capitals do not make a word harder, in any script
    assert [is_hard(w) for w in ("слово", "теорема", "доказательство")] == [
        is_hard(w) for w in ("СЛОВО", "Теорема", "ДОКАЗАТЕЛЬСТВО")
    ]
    # scripts mix: kana inside a spaced sentence still count one per character
    kana = split_units([chr(c) for c in range(0x3041, 0x3097)], hard=2, easy=2)
    latin = split_units(["".join(p) for p in itertools.product("xyz", repeat=4)], hard=1, easy=1)
    assert difficulty(f"{latin[0]} {''.join(kana)} {latin[1]}", 0) == pytest.approx(0.8 * 3 / 6 + length_term(6))


def test_only_the_first_256_units_make_the_hard_share() -> None:
    words = [f"u{i}" for i in range(5000)]
    easy = [w for w in words if not is_hard(w)][:256]
    hard = [w for w in words if is_hard(w)][:200]
    assert difficulty(" ".join(easy + hard), 0) == pytest.approx(length_term(456))
    assert difficulty(" ".join(hard + easy), 0) == pytest.approx(0.8 * 200 / 256 + length_term(456))


def test_p_acceptable_is_a_logistic_of_the_gap() -> None:
    assert p_acceptable(0.5, 0.5, 12.0) == 0.5
    assert p_acceptable(0.3, 0.5, 12.0) == pytest.approx(1 / (1 + math.exp(-2.4)))
    assert p_acceptable(0.5, 0.3, 12.0) == pytest.approx(1 - p_acceptable(0.3, 0.5, 12.0))
    assert p_acceptable(0.2, 0.8, 1e6) == 1.0 and p_acceptable(0.8, 0.2, 1e6) == 0.0  # no overflow
    ps = [p_acceptable(0.5, a / 10, 12.0) for a in range(11)]
    assert ps == sorted(ps) and len(set(ps)) == 11


def test_acceptable_is_a_fixed_outcome_per_prompt_and_model() -> None:
    prompts = [f"question number {i}" for i in range(300)]
    first = [acceptable(p, "small", 0.3, 1, 12.0) for p in prompts]
    assert first == [acceptable(p, "small", 0.3, 1, 12.0) for p in prompts]
    assert 0 < sum(first) < len(prompts)
    assert first != [acceptable(p, "large", 0.3, 1, 12.0) for p in prompts]  # each model its own luck


def test_a_larger_ability_answers_more_prompts_acceptably() -> None:
    rng = random.Random(11)
    words = [f"w{i}" for i in range(400)]
    prompts = [" ".join(rng.choices(words, k=rng.randint(1, 80))) for _ in range(1000)]
    counts = []
    previous: list[bool] | None = None
    for ability in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        outcomes = [acceptable(p, "m", ability, 0, 12.0) for p in prompts]
        if previous is not None:  # same model: what a weaker ability answers well, a stronger one does too
            assert all(o for o, before in zip(outcomes, previous, strict=True) if before)
        previous = outcomes
        counts.append(sum(outcomes))
    assert counts == sorted(counts) and counts[0] < 100 < 900 < counts[-1]


@pytest.mark.parametrize("ability", [0.25, 0.4, 0.55])
def test_the_share_of_acceptable_answers_matches_p_acceptable(ability: float) -> None:
    # ~2,000 distinct prompts of one difficulty: orderings of the same 7 hard and 13 easy words
    units = split_units(["".join(p) for p in itertools.product("pqrstu", repeat=3)], hard=7, easy=13)
    rng = random.Random(5)
    prompts: set[str] = set()
    while len(prompts) < 2000:
        rng.shuffle(units)
        prompts.add(" ".join(units))
    d = 0.8 * 7 / 20 + length_term(20)
    difficulties = {difficulty(p, 0) for p in prompts}
    assert len(difficulties) == 1 and difficulties.pop() == pytest.approx(d)
    p = p_acceptable(d, ability, SHARPNESS)
    share = sum(acceptable(q, "m", ability, 0, SHARPNESS) for q in prompts) / len(prompts)
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / len(prompts))


def test_judge_scores_the_markers() -> None:
    assert verdict("<answer_a>[ok] fine</answer_a><answer_b>[poor] bad</answer_b>") == '{"a": 10, "b": 0}'
    reversed_blocks = "Which?\n<answer_b>\nno marker\n</answer_b>\n<answer_a>[poor]\nx</answer_a>"
    assert verdict(reversed_blocks) == '{"a": 0, "b": 5}'
    assert verdict("<answer_a>[ok]</answer_a> but no second answer") is None
    assert verdict("plain question") is None


def test_a_lead_keeps_one_token_per_piece() -> None:
    for lead in ("[ok]", "[poor]", '{"a": 10, "b": 0}', '{"a": 5, "b": 5}'):
        for seed, max_tokens in itertools.product(range(20), (1, 2, 3, 4, 5, 8, 40)):
            out = generate(f"prompt {seed}", seed=seed, max_tokens=max_tokens, lead=lead)
            assert count_tokens(out.text) == len(out.texts) == max_tokens
            assert out.text == "".join(out.texts)
            assert out.text.startswith(lead[: len(out.text)])
            assert len(out.text) <= len(lead) or out.text.startswith(lead + " ")
    # a judge's verdict ends by itself, unless the EOS is ignored
    out = generate("p", seed=0, max_tokens=50, lead='{"a": 0, "b": 5}', lead_ends=True)
    assert (out.text, out.finish_reason) == ('{"a": 0, "b": 5}', "stop")
    assert generate("p", seed=0, max_tokens=50, lead="{}", lead_ends=True, ignore_eos=True).finish_reason == "length"


def test_config_validation_and_cli_flags() -> None:
    for bad in ({"ability": -0.1}, {"ability": 1.5}, {"truth_sharpness": 0.0}, {"truth_seed": 2**63}):
        with pytest.raises(ValueError):
            SimConfig(**bad)
    defaults = config_from_args(build_parser().parse_args(["--model", "m", "--port", "1"]))
    assert (defaults.ability, defaults.truth_seed, defaults.truth_sharpness, defaults.judge) == (None, 0, 12.0, False)
    args = ["--model", "m", "--port", "1", "--ability", "0.7", "--truth-seed", "-3", "--truth-sharpness", "4"]
    config = config_from_args(build_parser().parse_args([*args, "--judge"]))
    assert (config.ability, config.truth_seed, config.truth_sharpness, config.judge) == (0.7, -3, 4.0, True)


# --------------------------------------------------------------------------- over HTTP


def _serve(**overrides: Any) -> SimServer:
    config = SimConfig(**{"model": "tiny", "max_model_len": 1024, "fixed_created": CREATED, **overrides})
    return SimServer(config).start()


@pytest.fixture(scope="module")
def graded() -> Iterator[SimServer]:
    server = _serve(ability=ABILITY, truth_sharpness=SHARPNESS, judge=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[SimServer]:
    server = _serve()
    yield server
    server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20.0, trust_env=False) as c:
        yield c


def sse_chunks(raw: bytes) -> list[dict[str, Any]]:
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def streamed_texts(chunks: list[dict[str, Any]], chat: bool) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            piece = c["delta"].get("content", "") if chat else c["text"]
            out[c["index"]] = out.get(c["index"], "") + piece
    return out


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def chat(client: httpx.AsyncClient, sim: SimServer, messages: list[dict[str, Any]], **extra: Any) -> Any:
    r = await client.post(sim.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages, **extra})
    assert r.status_code == 200, r.text
    return r.json()


async def test_chat_answers_start_with_the_marker(graded: SimServer, client: httpx.AsyncClient) -> None:
    good, poor = prompt_with(True, "Explain"), prompt_with(False, "Explain")
    for prompt, marker in ((good, "[ok] "), (poor, "[poor] ")):
        body = await chat(client, graded, user(prompt), max_tokens=20, n=3)
        contents = [c["message"]["content"] for c in body["choices"]]
        assert all(c.startswith(marker) for c in contents)
        assert len(set(contents)) == 3  # the marker leads; each choice still has its own text
        assert body["usage"]["completion_tokens"] == 60 == sum(count_tokens(c) for c in contents)
        assert [c["finish_reason"] for c in body["choices"]] == ["length"] * 3

        stream = await client.post(
            graded.url + "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": user(prompt),
                "max_tokens": 20,
                "n": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        chunks = sse_chunks(stream.content)
        assert streamed_texts(chunks, chat=True) == dict(enumerate(contents))
        assert chunks[-1]["usage"]["completion_tokens"] == 60


async def test_the_last_user_message_decides(graded: SimServer, client: httpx.AsyncClient) -> None:
    good, poor = prompt_with(True, "Summarise"), prompt_with(False, "Summarise")
    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": poor},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": [{"type": "text", "text": good}]},
    ]
    body = await chat(client, graded, history, max_tokens=8)
    assert body["choices"][0]["message"]["content"].startswith("[ok] ")
    body = await chat(client, graded, [*history, {"role": "assistant", "content": "Done."}], max_tokens=8)
    assert body["choices"][0]["message"]["content"].startswith("[ok] ")  # still the last *user* message
    body = await chat(client, graded, history[:2], max_tokens=8)
    assert body["choices"][0]["message"]["content"].startswith("[poor] ")


async def test_completions_mark_each_prompt_on_its_own(graded: SimServer, client: httpx.AsyncClient) -> None:
    good, poor = prompt_with(True, "Translate"), prompt_with(False, "Translate")
    request = {"model": "tiny", "prompt": [good, poor], "max_tokens": 12, "n": 2}
    r = await client.post(graded.url + "/v1/completions", json=request)
    body = r.json()
    texts = [c["text"] for c in body["choices"]]
    assert [t.split(" ", 1)[0] for t in texts] == ["[ok]", "[ok]", "[poor]", "[poor]"]
    assert body["usage"]["completion_tokens"] == 48 == sum(count_tokens(t) for t in texts)

    r = await client.post(graded.url + "/v1/completions", json={**request, "stream": True})
    assert streamed_texts(sse_chunks(r.content), chat=False) == dict(enumerate(texts))

    r = await client.post(graded.url + "/v1/completions", json={"model": "tiny", "prompt": poor, "max_tokens": 5})
    assert r.json()["choices"][0]["text"].startswith("[poor] ")


async def test_the_marker_is_cut_like_any_text(graded: SimServer, client: httpx.AsyncClient) -> None:
    poor = user(prompt_with(False, "Derive"))
    cuts = []
    for max_tokens in (1, 2, 3, 4, 5):
        body = await chat(client, graded, poor, max_tokens=max_tokens)
        content = body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] == max_tokens == count_tokens(content)
        cuts.append(content)
    assert cuts[:4] == ["[", "[po", "[poor", "[poor]"]
    assert cuts[4].startswith("[poor] ")
    body = await chat(client, graded, poor, max_tokens=30, stop=["]"])
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"], choice["stop_reason"]) == ("[poor", "stop", "]")


async def test_the_judge_grades_by_the_markers(graded: SimServer, client: httpx.AsyncClient) -> None:
    grading = (
        "Grade both answers from 0 to 10.\n<question>Why?</question>\n"
        "<answer_a>[ok] Because.</answer_a>\n<answer_b>[poor] Dunno.</answer_b>\nReply as JSON."
    )
    body = await chat(client, graded, user(grading), max_tokens=100)
    choice = body["choices"][0]
    assert choice["message"]["content"] == '{"a": 10, "b": 0}'
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    assert body["usage"]["completion_tokens"] == count_tokens('{"a": 10, "b": 0}')

    swapped = "<answer_a>no marker at all</answer_a><answer_b>[ok] Yes</answer_b>"
    r = await client.post(
        graded.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": user(swapped), "stream": True, "n": 2},
    )
    assert streamed_texts(sse_chunks(r.content), chat=True) == {0: '{"a": 5, "b": 10}', 1: '{"a": 5, "b": 10}'}

    body = await chat(client, graded, user(grading), max_tokens=3)
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ('{"a":', "length")
    assert body["usage"]["completion_tokens"] == 3

    # only the last user message is read: an earlier grading prompt gets an ordinary, marked answer
    history = [*user(grading), {"role": "assistant", "content": "{}"}, *user("thanks")]
    content = (await chat(client, graded, history, max_tokens=6))["choices"][0]["message"]["content"]
    assert content.startswith("[ok] " if ok("thanks") else "[poor] ")


async def test_without_an_ability_nothing_changes(plain: SimServer, client: httpx.AsyncClient) -> None:
    grading = "<answer_a>[ok] a</answer_a><answer_b>[poor] b</answer_b>"
    for text in ("Explain gravity", grading):
        body = await chat(client, plain, user(text), max_tokens=15, n=2)
        expected = [generate(render_chat(user(text)).text, seed=0, choice=j, max_tokens=15).text for j in range(2)]
        assert [c["message"]["content"] for c in body["choices"]] == expected
        assert not expected[0].startswith("[")
    r = await client.post(plain.url + "/v1/completions", json={"model": "tiny", "prompt": "Explain", "max_tokens": 9})
    assert r.json()["choices"][0]["text"] == generate("Explain", seed=0, max_tokens=9).text

    # truth knobs without an ability change no byte
    other = _serve(truth_seed=9, truth_sharpness=2.0)
    try:
        headers = {"X-Request-Id": "same"}
        for path, request in [
            ("/v1/chat/completions", {"model": "tiny", "messages": user("Explain"), "max_tokens": 20}),
            ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"], "max_tokens": 7, "stream": True}),
        ]:
            a = await client.post(plain.url + path, json=request, headers=headers)
            b = await client.post(other.url + path, json=request, headers=headers)
            assert a.content == b.content
    finally:
        other.stop()
