"""Classification: tokens, capabilities, categories, complexity -- from parsed request bodies."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from router import tokens
from router.classifier import Classifier
from router.classify import Features, classify
from router.policy import load_policy_set
from tests.test_router_policy import write_policy

pytestmark = pytest.mark.pure

SHIPPED = load_policy_set()


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}


def feats(body: dict[str, Any], kind: str = "chat", headers: dict[str, str] | None = None,
          classifier: Classifier = SHIPPED.classifier) -> Features:
    return classify(body, kind, headers or {}, classifier)  # type: ignore[arg-type]


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


# -------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_cl100k_from_the_offline_file_with_the_published_hash() -> None:
    path = tokens.vocabulary_path()
    assert path.name == "cl100k_base.tiktoken"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tokens.CL100K_BASE_SHA256
    assert tokens.CL100K_BASE_SHA256 == "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
    enc = tokens.encoding()
    assert enc is tokens.encoding()  # loaded once
    assert enc.n_vocab == 100277
    # known cl100k_base ids
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    assert tokens.count_tokens("tiktoken is great!") == 6


def test_a_tampered_vocabulary_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "data" / "cl100k_base.tiktoken"
    bad.parent.mkdir()
    original = tokens.vocabulary_path().read_bytes()
    bad.write_bytes(original.replace(b"IQ== 0", b"IQ== 1", 1))
    monkeypatch.setattr(tokens, "vocabulary_path", lambda: bad)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="does not match cl100k_base's published sha256"):
        tokens.encoding.__wrapped__()


def test_exact_token_count_for_short_prompts() -> None:
    text = "Hello there, how are you doing today?"
    f = feats(chat(text))
    # the content's tokens + 3 per message + 3 for the reply header
    assert f.tokens_exact and f.prompt_tokens == tokens.count_tokens(text) + 3 + 3
    two = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}
    f2 = feats(two)
    assert f2.messages == 2 and f2.turns == 1
    # each message's text is tokenized on its own (as the chat template separates them)
    assert f2.prompt_tokens == tokens.count_tokens("Be brief.") + tokens.count_tokens(text) + 2 * 3 + 3
    f3 = feats({"prompt": text}, "completion")
    assert f3.prompt_tokens == tokens.count_tokens(text) and f3.tokens_exact


def test_long_prompts_are_sampled_and_extrapolated() -> None:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "the", "cat", "watches",
             "from", "the", "window"]
    text = " ".join(words[i * 7 % len(words)] for i in range(6000))
    exact = tokens.count_tokens(text)
    f = feats({"prompt": text}, "completion")
    assert not f.tokens_exact and f.prompt_chars == len(text)
    assert abs(f.prompt_tokens - exact) / exact < 0.05
    # a prompt with a dense middle (code between prose) is sampled in the middle too
    code = "def f(x):\n    return [i*i for i in range(x) if i % 3 == 0]\n" * 60
    mixed = text[:4000] + code + text[:4000]
    est = feats({"prompt": mixed}, "completion").prompt_tokens
    assert abs(est - tokens.count_tokens(mixed)) / tokens.count_tokens(mixed) < 0.10


def test_a_million_characters_take_no_pathological_time() -> None:
    body = chat("lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 17_544)
    assert len(body["messages"][0]["content"]) > 1_000_000
    feats(body)
    started = time.perf_counter()
    f = feats(body)
    elapsed = time.perf_counter() - started
    exact = tokens.count_tokens(body["messages"][0]["content"]) + 6
    assert abs(f.prompt_tokens - exact) / exact < 0.05 and not f.tokens_exact
    assert elapsed < 0.5  # ~0.2 ms in practice; a generous bound against quadratic regressions


def test_token_ids_images_and_tools_count() -> None:
    f = feats({"prompt": [[1, 2, 3], [4, 5]]}, "completion")
    assert f.prompt_tokens == 5 and f.tokens_exact
    img = chat([{"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 50_000}}])
    f = feats(img)
    assert f.images == 1 and "vision" in f.capabilities
    # the image counts as classify.yaml's image_tokens, its base64 is not counted as text
    assert f.prompt_tokens == tokens.count_tokens("What is this?") + 765 + 6
    plain = feats(chat("Weather?")).prompt_tokens
    assert feats(chat("Weather?", tools=[TOOL])).prompt_tokens > plain + 10


# ------------------------------------------------------------------------------------------ max tokens


def test_max_tokens_and_output_assumptions() -> None:
    f = feats(chat("hi", max_tokens=50))
    assert (f.max_tokens, f.output_tokens, f.output_assumed) == (50, 50, False)
    f = feats(chat("hi", max_tokens=50, max_completion_tokens=70))
    assert (f.max_tokens, f.output_tokens) == (70, 70)
    f = feats(chat("hi"))
    assert (f.max_tokens, f.output_tokens, f.output_assumed) == (None, 256, True)
    f = feats({"prompt": "hi"}, "completion")
    assert (f.max_tokens, f.output_tokens, f.output_assumed) == (None, 16, False)  # the API's default
    assert f.context_tokens == f.prompt_tokens + 16


# ---------------------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize(
    ("body", "kind", "caps"),
    [
        (chat("hi"), "chat", set()),
        (chat("hi", tools=[TOOL]), "chat", {"tools"}),
        (chat("hi", functions=[{"name": "f", "parameters": {}}]), "chat", {"tools"}),
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "assistant", "content": None,
                        "tool_calls": [{"id": "1", "type": "function",
                                        "function": {"name": "f", "arguments": "{}"}}]},
                       {"role": "tool", "tool_call_id": "1", "content": "42"}]}, "chat", {"tools"}),
        (chat("hi", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), "chat",
         {"json_schema"}),
        (chat("hi", response_format={"type": "json_object"}), "chat", {"json_object"}),
        (chat("hi", response_format={"type": "text"}), "chat", set()),
        (chat("hi", guided_json={"type": "object"}), "chat", {"json_schema"}),
        (chat("hi", logprobs=True), "chat", {"logprobs"}),
        (chat("hi", logprobs=False, top_logprobs=0), "chat", set()),
        (chat("hi", top_logprobs=3), "chat", {"logprobs"}),
        ({"prompt": "hi", "logprobs": 0}, "completion", {"logprobs"}),
        ({"prompt": "hi", "echo": True}, "completion", set()),
        (chat("hi", n=3), "chat", {"n"}),
        (chat("hi", n=1), "chat", set()),
        ({"prompt": "hi", "best_of": 2}, "completion", {"n"}),
        (chat([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]), "chat", {"vision"}),
        (chat([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]), "chat", {"audio"}),
        (chat("hi", max_tokens=5000), "chat", {"long_context"}),
    ],
)
def test_capabilities(body: dict[str, Any], kind: str, caps: set[str]) -> None:
    assert feats(body, kind).capabilities == frozenset(caps)


def test_fields_of_the_wrong_type_are_ignored() -> None:
    body = {"messages": [None, "x", {"role": "user", "content": 5}, {"role": "user", "content": [None, {"type": 3}]}],
            "max_tokens": "many", "n": "2", "tools": "all", "logprobs": "yes", "temperature": "0",
            "response_format": "json"}
    f = feats(body)
    assert f.capabilities == frozenset() and f.max_tokens is None and f.messages == 2 and not f.deterministic
    assert feats({"messages": "nope"}).messages == 0
    assert feats({"prompt": None}, "completion").prompt_tokens == 0


# ------------------------------------------------------------------------------------------ categories


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Hello! How are you today?", "chat"),
        ("Why does this fail?\n```\nx = [1, 2\n```", "code"),
        ("My python script prints a stack trace when it starts", "code"),
        ("function add(a, b) { return a + b }  -- what is wrong?", "code"),
        ("What is 17 * 23 + 4?", "math"),
        ("Solve the equation for x: x squared equals nine", "math"),
        ("Explain why the sky is blue, step by step.", "reasoning"),
        ("Compare the pros and cons of renting and buying.", "reasoning"),
        ("Extract the names and dates from this letter as JSON.", "extraction"),
        ("Summarize this article in three key points.", "summarization"),
        ("Translate 'good morning' into French.", "translation"),
    ],
)
def test_categories_of_the_shipped_classifier(text: str, category: str) -> None:
    f = feats(chat(text))
    assert f.category == category, f.signals


def test_category_signals_from_structure_capabilities_and_the_system_prompt() -> None:
    f = feats(chat('Here it is: {"name": "Ada", "born": 1815}. Pull out the fields.'))
    assert f.category == "extraction" and "extraction/pasted json" in f.signals
    f = feats(chat("Give me the record.", response_format={"type": "json_object"}))
    assert "extraction/json output" in f.signals and f.category == "chat"  # 1 < min_score 2
    body = {"messages": [{"role": "system", "content": "You translate text into German."},
                         {"role": "user", "content": "Good morning, my friend"}]}
    assert feats(body).category == "translation"


def test_only_the_last_user_message_and_bounded_windows_are_scanned() -> None:
    history = {"messages": [{"role": "user", "content": "```python\nprint(1)\n```"},
                            {"role": "assistant", "content": "Done."},
                            {"role": "user", "content": "Thanks, how is the weather?"}]}
    assert feats(history).category == "chat"
    # a keyword in the middle of a long message is outside the head/tail windows
    filler = "lorem ipsum dolor sit amet " * 200
    assert feats(chat(filler + " translate this " + filler)).category == "chat"
    assert feats(chat("Please translate this: " + filler)).category == "translation"
    assert feats(chat(filler + " Please translate this.")).category == "translation"


def test_keywords_match_whole_words_case_insensitively(tmp_path: Path) -> None:
    classify_yaml = """\
        categories:
          code:
            signals: [{keywords: [debug, "c++", stack trace, tl;dr], weight: 1}]
        """
    cls = load_policy_set(write_policy(tmp_path / "p", classify=classify_yaml,
                                       models="models: [{name: m, pool: p, context_window: 99, tier: 1}]\n",
                                       routing="rules: []\n")).classifier
    assert feats(chat("Please DEBUG this"), classifier=cls).category == "code"
    assert feats(chat("the debugger is broken"), classifier=cls).category == "chat"
    assert feats(chat("I like C++."), classifier=cls).category == "code"
    assert feats(chat("a\nstack   trace\there"), classifier=cls).category == "code"
    assert feats(chat("a stacktrace"), classifier=cls).category == "chat"
    assert feats(chat("tl;dr please"), classifier=cls).category == "code"


def test_phrases_that_share_their_first_word_each_count(tmp_path: Path) -> None:
    classify_yaml = """\
        categories:
          ops:
            signals: [{name: dump, keywords: [core dump], weight: 1}, {name: file, keywords: [core file], weight: 2}]
        """
    cls = load_policy_set(write_policy(tmp_path / "p", classify=classify_yaml,
                                       models="models: [{name: m, pool: p, context_window: 99, tier: 1}]\n",
                                       routing="rules: []\n")).classifier
    assert feats(chat("the core is fine, the dump is not"), classifier=cls).category == "chat"
    assert feats(chat("a core dump"), classifier=cls).signals == ("ops/dump",)
    assert feats(chat("a CORE FILE"), classifier=cls).signals == ("ops/file",)
    f = feats(chat("core file and core   dump"), classifier=cls)
    assert (sorted(f.signals), f.category_score) == (["ops/dump", "ops/file"], 3)


def test_min_score_and_ties(tmp_path: Path) -> None:
    classify_yaml = """\
        categories:
          first:
            min_score: 2
            signals: [{keywords: [alpha], weight: 1}, {keywords: [beta], weight: 1}]
          second:
            signals: [{keywords: [gamma], weight: 2}]
        """
    cls = load_policy_set(write_policy(tmp_path / "p", classify=classify_yaml,
                                       models="models: [{name: m, pool: p, context_window: 99, tier: 1}]\n",
                                       routing="rules: []\n")).classifier
    assert feats(chat("alpha"), classifier=cls).category == "chat"  # 1 < min_score 2
    assert feats(chat("alpha beta"), classifier=cls).category == "first"
    assert feats(chat("alpha beta gamma"), classifier=cls).category == "first"  # tie: the earlier one
    f = feats(chat("gamma"), classifier=cls)
    assert (f.category, f.category_score) == ("second", 2)


# ------------------------------------------------------------------------------------- complexity, rest


def test_complexity_tiers() -> None:
    assert feats(chat("Hello")).tier == 1
    f = feats(chat("What is 3 * 4?"))
    assert (f.complexity, f.tier) == (2, 2)  # hard category
    f = feats(chat("What is 3 * 4? Answer thoroughly.", tools=[TOOL]))
    assert (f.complexity, f.tier) == (4, 3)
    assert "complexity/careful words" in f.signals and "complexity/tools" in f.signals
    long_chat = {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "ok"} for i in range(12)]}
    f = feats(long_chat)
    assert f.turns == 6 and "complexity/long conversation" in f.signals


def test_turns_stream_determinism_and_headers() -> None:
    f = feats(chat("hi", stream=True, temperature=0), headers={"X-Team": "blue"})
    assert f.stream and f.deterministic and f.turns == 1
    assert f.headers == {}  # the shipped rules match on no header: none is kept
    assert feats(chat("hi", seed=7, temperature=0.9)).deterministic
    assert not feats(chat("hi", temperature=0.2)).deterministic
    assert not feats(chat("hi")).deterministic


def test_only_headers_that_rules_match_on_are_kept(tmp_path: Path) -> None:
    routing = ("rules:\n  - name: a\n    match: {headers: {X-Team: blue}}\n"
               "  - name: b\n    match: {headers: {x-tier: '*'}}\n")
    cls = load_policy_set(write_policy(tmp_path / "p", routing=routing,
                                       models="models: [{name: m, pool: p, context_window: 99, tier: 1}]\n",
                                       classify=None)).classifier
    f = feats(chat("hi"), headers={"Authorization": "Bearer sk-secret", "X-TEAM": "blue", "X-Tier": "gold"},
              classifier=cls)
    assert f.headers == {"x-team": "blue", "x-tier": "gold"}


def test_long_pieces_are_counted_once_and_remembered_without_their_text() -> None:
    system = "You are a careful assistant. " * 10  # a system prompt every turn of a conversation resends
    tokens._memo.clear()
    first = feats({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]})
    assert len(tokens._memo) == 1  # "Hi" is too short to remember
    (key, count), = tokens._memo.items()
    assert count == tokens.count_tokens(system) and all(isinstance(k, int) for k in key)  # no text kept
    again = feats({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]})
    assert again.prompt_tokens == first.prompt_tokens == count + tokens.count_tokens("Hi") + 2 * 3 + 3
    for i in range(tokens.MEMO_ENTRIES + 10):  # bounded: the oldest go
        tokens.estimate_tokens([f"{i} " + "x" * tokens.MEMO_MIN_CHARS], tokens.MEMO_MIN_CHARS + 8, 10_000, 1000)
    assert len(tokens._memo) == tokens.MEMO_ENTRIES
