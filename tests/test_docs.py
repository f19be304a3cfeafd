"""Every fenced block of README.md, docs/*.md and bench/HISTORY.md runs or is checked, so the docs cannot drift.

The rules are in docs/testing.md, "Examples in the docs": the fence's info string says how a block is
tested (```console sessions are compared with their output, ```bash/```python must exit 0, ```yaml KIND
goes through the product's loader for that file). Relative links must point to existing files and headings,
and no product file may speak of sessions or issue numbers.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

from gateway.accounting.prices import PricesError, parse_prices
from gateway.settings import SettingsError, load_settings
from router.policy import default_policy_dir, read_policy_set
from router.policytests import read_policy_tests
from tests.gateway_process import DEV_KEY, GatewayProcess, start_gateway

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DOCS_ADDRESS = "127.0.0.1:8080"  # the address the docs write; the test's gateway's replaces it
COMMAND_TIMEOUT_S = 120.0


Failed = pytest.fail.Exception


def fail(message: str) -> NoReturn:
    """Fail the test with only `message` (a reader wants the doc's line and the difference, not this file's)."""
    pytest.fail(message, pytrace=False)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "HISTORY.md"]


# --- reading the blocks ------------------------------------------------------------------------------------

OPEN_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
SKIP_MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<directive>.*?)\s*-->\s*$")
SKIP_REASON = re.compile(r"^skip\s*\((?P<reason>.*)\)$")


@dataclass(frozen=True)
class Block:
    doc: str  # the file, relative to the repository
    line: int  # of the opening fence, from 1
    info: str  # the fence's info string
    body: str
    marker: str | None  # the `docs-test:` directive before the fence, if any

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def words(self) -> list[str]:
        return self.info.split()


def read_blocks(text: str, doc: str) -> tuple[list[Block], list[int]]:
    """The fenced blocks of a Markdown text, and the lines of prose (outside any fence)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    prose: list[int] = []
    i = 0
    while i < len(lines):
        m = OPEN_FENCE.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            prose.append(i)
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not close.match(lines[end]):
            end += 1
        body = "\n".join(_dedent(line, indent) for line in lines[i + 1 : end])
        blocks.append(Block(doc, i + 1, m["info"].strip(), body + "\n" if body else "", _marker(lines, i)))
        i = end + 1
    return blocks, prose


def _dedent(line: str, indent: int) -> str:
    strip = len(line) - len(line.lstrip(" "))
    return line[min(strip, indent) :]


def _marker(lines: list[str], fence: int) -> str | None:
    """The `<!-- docs-test: ... -->` directive on the nearest non-blank line above a fence."""
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    m = SKIP_MARK.match(lines[j]) if j >= 0 else None
    return m["directive"] if m else None


def all_blocks() -> list[Block]:
    out: list[Block] = []
    for path in doc_files():
        out += read_blocks(path.read_text(), str(path.relative_to(ROOT)))[0]
    return out


# --- console sessions: commands and their expected output --------------------------------------------------

@dataclass(frozen=True)
class Command:
    line: int  # in the block, from 1
    text: str  # what bash runs (continuations and here-documents included)
    expected: list[str]  # the output shown under it (empty: only the exit status is checked)


HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>[A-Za-z_][A-Za-z0-9_]*)\1")


def parse_console(body: str) -> list[Command]:
    """Split a console block into commands (`$ ` lines, `\\` continuations, here-documents) and outputs."""
    lines = body.splitlines()
    commands: list[Command] = []
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and not lines[i].startswith("$ "):
        fail(f"line {i + 1}: a console block starts with a `$ ` command, not {lines[i]!r}")
    while i < len(lines):
        start = i
        text = [lines[i][2:]]
        while text[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            text.append(lines[i])
        for word in (m["word"] for m in HEREDOC.finditer("\n".join(text))):
            while i + 1 < len(lines) and lines[i].strip() != word:
                i += 1
                text.append(lines[i])
        i += 1
        out: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            out.append(lines[i])
            i += 1
        while out and not out[-1].strip():
            out.pop()
        commands.append(Command(start + 1, "\n".join(text), out))
    return commands


def _line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")), re.DOTALL)


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """`...` in a line matches any text; a line that is only `...` matches any number of lines."""
    exp = [line.rstrip() for line in expected]
    act = [line.rstrip() for line in actual]
    while act and not act[-1]:
        act.pop()
    memo: dict[tuple[int, int], bool] = {}

    def match(e: int, a: int) -> bool:
        if (e, a) not in memo:
            if e == len(exp):
                result = a == len(act)
            elif exp[e].strip() == "...":
                result = match(e + 1, a) or (a < len(act) and match(e, a + 1))
            else:
                result = a < len(act) and _line_pattern(exp[e]).fullmatch(act[a]) is not None and match(e + 1, a + 1)
            memo[(e, a)] = result
        return memo[(e, a)]

    return match(0, 0)


def mismatch_report(command: Command, expected: list[str], actual: list[str], status: int) -> str:
    def show(lines: list[str]) -> str:
        return "\n".join(f"  | {line}" for line in lines) or "  (nothing)"

    return (f"$ {command.text}\n(exit status {status})\n--- expected:\n{show(expected)}\n"
            f"--- actual:\n{show([line.rstrip() for line in actual])}")


class Shell:
    """One bash for a console block: variables and `cd` carry from one command to the next, as in a terminal."""

    def __init__(self, cwd: Path, scratch: Path, env: dict[str, str]) -> None:
        self.scratch = scratch
        self.count = 0
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, text=True,
        )
        self._send("set -o pipefail\n")

    def _send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
        self.count += 1
        script, out, status = (self.scratch / f"{self.count}.{ext}" for ext in ("sh", "out", "status"))
        script.write_text(command + "\n")
        self._send(f"source {script} >{out} 2>&1 </dev/null; echo $? >{status}.part; mv {status}.part {status}\n")
        deadline = time.monotonic() + timeout
        while not status.exists():
            if self.process.poll() is not None:
                return self.process.returncode, out.read_text(errors="replace") + "\n(the shell exited)"
            if time.monotonic() > deadline:
                self.close()
                return -1, out.read_text(errors="replace") + f"\n(timed out after {timeout:.0f}s)"
            time.sleep(0.02)
        return int(status.read_text()), out.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# --- the gateway the examples run against ------------------------------------------------------------------

@dataclass(frozen=True)
class DocsGateway:
    process: GatewayProcess
    env: dict[str, str]  # what every example runs with
    address: str  # host:port


@pytest.fixture(scope="session")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsGateway]:
    """The gateway on its embedded defaults (SQLite, in-process cache, the simulated pools), as `make run`."""
    workdir = tmp_path_factory.mktemp("docs-gateway")
    state = workdir / ".gateway"
    gw = start_gateway(workdir, env={"GATEWAY_STATE_DIR": str(state)})
    address = gw.base_url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "ANTHROPIC_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        # The CLI reads the same state dir (database, key secret) and knows the port and the key.
        GATEWAY_STATE_DIR=str(state), GATEWAY_PORT=address.rsplit(":", 1)[1], GATEWAY_DEV_KEY=DEV_KEY,
        GATEWAY_KEY=DEV_KEY,
        OPENAI_BASE_URL=f"{gw.base_url}/v1", OPENAI_API_KEY=DEV_KEY,
        ANTHROPIC_BASE_URL=gw.base_url, ANTHROPIC_API_KEY=DEV_KEY,
    )
    yield DocsGateway(gw, env, address)
    gw.stop()


def scratch_dir(root: Path) -> Path:
    """A directory of the block's own, with the repository's top-level entries linked in (to read), the
    virtualenv included (so that `make` targets find it instead of building one)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in _top_level_entries():
        if (ROOT / name).exists() and not (root / name).exists():
            (root / name).symlink_to(ROOT / name)
    return root


@functools.cache
def _top_level_entries() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted({line.split("/", 1)[0] for line in listed.splitlines() if line} | {".venv"})


def fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def for_docs(text: str, gw: DocsGateway) -> str:
    return text.replace(DOCS_ADDRESS, gw.address)


def run_console(block: Block, gw: DocsGateway, tmp: Path) -> None:
    commands = parse_console(block.body)
    shell = Shell(scratch_dir(tmp / "work"), fresh_dir(tmp / "shell"), gw.env)
    try:
        for command in commands:
            status, output = shell.run(for_docs(command.text, gw))
            actual = output.replace(gw.address, DOCS_ADDRESS).replace("\r", "").splitlines()
            where = f"{block.doc}:{block.line + command.line}"
            if command.expected:
                if not output_matches(command.expected, actual):
                    fail(f"{where}: the output differs\n{mismatch_report(command, command.expected, actual, status)}")
            elif status != 0:
                fail(f"{where}: exit status {status}\n{mismatch_report(command, [], actual, status)}")
    finally:
        shell.close()


def run_script(block: Block, gw: DocsGateway, tmp: Path) -> None:
    script = tmp / "block.sh"
    script.write_text(for_docs(block.body, gw))
    _must_succeed(block, ["bash", "-eo", "pipefail", str(script)], gw, tmp)


def run_python(block: Block, gw: DocsGateway, tmp: Path) -> None:
    script = tmp / "block.py"
    script.write_text(for_docs(block.body, gw))
    _must_succeed(block, [sys.executable, str(script)], gw, tmp)


def _must_succeed(block: Block, args: list[str], gw: DocsGateway, tmp: Path) -> None:
    try:
        done = subprocess.run(args, cwd=scratch_dir(tmp / "work"), env=gw.env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, start_new_session=True)
    except subprocess.TimeoutExpired:
        fail(f"{block.id}: still running after {COMMAND_TIMEOUT_S:.0f}s")
    if done.returncode != 0:
        fail(f"{block.id}: exit status {done.returncode}\n--- stdout:\n{done.stdout[-4000:]}\n"
             f"--- stderr:\n{done.stderr[-4000:]}")


# --- YAML and JSON checked by the product's own loaders ----------------------------------------------------

def check_policy_file(name: str) -> Callable[[Block, Path], None]:
    """A block standing for one file of the policy: the shipped policy with that file replaced must load."""

    def check(block: Block, tmp: Path) -> None:
        folder = _shipped_policy_copy(tmp)
        (folder / name).write_text(block.body)
        policy, problems = read_policy_set(folder)
        if policy is None or problems:
            fail(f"{block.id}: not a valid {name}:\n" + "\n".join(problems))

    return check


def check_policy_tests(block: Block, tmp: Path) -> None:
    policy, problems = read_policy_set(default_policy_dir())
    if policy is None:
        fail("the shipped policy does not load:\n" + "\n".join(problems))
    folder = tmp / "tests"
    folder.mkdir()
    (folder / "example.yaml").write_text(block.body)
    cases, problems = read_policy_tests(policy, folder)
    if problems or not cases:
        fail(f"{block.id}: not a valid policy test file:\n" + ("\n".join(problems) or "no cases"))


def check_settings(block: Block, tmp: Path) -> None:
    path = tmp / "gateway.yaml"
    path.write_text(block.body)
    try:
        load_settings(path, env={})
    except SettingsError as exc:
        fail(f"{block.id}: {exc}")


def check_prices(block: Block, tmp: Path) -> None:
    try:
        parse_prices(block.body, block.id)
    except PricesError as exc:
        fail(str(exc))


def check_fragment(block: Block, tmp: Path) -> None:
    try:
        yaml.safe_load(block.body)
    except yaml.YAMLError as exc:
        fail(f"{block.id}: not valid YAML: {exc}")


def check_json(block: Block, tmp: Path) -> None:
    try:
        json.loads(block.body)
    except json.JSONDecodeError as exc:
        fail(f"{block.id}: not valid JSON: {exc}")


def _shipped_policy_copy(tmp: Path) -> Path:
    folder = tmp / "policies"
    shutil.copytree(default_policy_dir(), folder, ignore=shutil.ignore_patterns("training", "tests", "*.md"))
    return folder


CHECKS: dict[str, Callable[[Block, Path], None]] = {
    "yaml policy": check_policy_file("routing.yaml"),
    "yaml models": check_policy_file("models.yaml"),
    "yaml classify": check_policy_file("classify.yaml"),
    "yaml policy-tests": check_policy_tests,
    "yaml settings": check_settings,
    "yaml prices": check_prices,
    "yaml fragment": check_fragment,
    "json": check_json,
    "text": lambda block, tmp: None,
}
RUNS: dict[str, Callable[[Block, DocsGateway, Path], None]] = {
    "console": run_console,
    "bash": run_script,
    "sh": run_script,
    "python": run_python,
}
KNOWN = sorted([*CHECKS, *RUNS])


def how(block: Block) -> str:
    """The key of CHECKS or RUNS the info string names (a language alone, or `yaml KIND`)."""
    words = block.words
    if not words:
        fail(f"{block.id}: a fence needs an info string (one of: {', '.join(KNOWN)})")
    key = " ".join(words[:2]) if words[0] == "yaml" else words[0]
    if (key not in CHECKS and key not in RUNS) or len(words) > len(key.split()):
        fail(f"{block.id}: unknown info string `{block.info}` (known: {', '.join(KNOWN)})")
    return key


def example_params() -> list[object]:
    """One test per block; those only checked (no gateway, no commands) are `pure`."""
    return [pytest.param(b, id=b.id, marks=[pytest.mark.pure] if _checked_only(b) else []) for b in all_blocks()]


def _checked_only(block: Block) -> bool:
    try:
        return how(block) in CHECKS
    except Failed:
        return True  # a malformed fence fails without running anything


@pytest.mark.parametrize("block", example_params())
def test_example(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.marker is not None:
        m = SKIP_REASON.match(block.marker)
        if not (m and m["reason"].strip()):
            fail(f"{block.id}: `<!-- docs-test: {block.marker} -->` is not `<!-- docs-test: skip (the reason) -->`")
        how(block)  # a skipped block still says what it is
        pytest.skip(m["reason"].strip())
    key = how(block)
    if key in CHECKS:
        CHECKS[key](block, tmp_path)
    else:
        RUNS[key](block, request.getfixturevalue("docs_gateway"), tmp_path)


# --- links ---------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(?P<title>.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"(?P<name>[^\"]+)\"")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    lines = text.splitlines()
    _, prose = read_blocks(text, str(path))
    seen: dict[str, int] = {}
    out: set[str] = set()
    for i in prose:
        out.update(m["name"] for m in HTML_ANCHOR.finditer(lines[i]))
        m = HEADING.match(lines[i])
        if m is None:
            continue
        base = slug(m["title"])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    _, prose = read_blocks(text, str(path))
    problems = []
    for i in prose:
        line = CODE_SPAN.sub("", lines[i])
        targets = [m["target"] for m in LINK.finditer(line)]
        ref = REF_LINK.match(line)
        if ref:
            targets.append(ref["target"])
        for target in targets:
            if SCHEME.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{i + 1}: `{target}`"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading `#{anchor}` in {dest.relative_to(root)}")
    return problems


@pytest.mark.pure
@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links(doc: Path) -> None:
    problems = broken_links(doc)
    if problems:
        fail("broken links:\n" + "\n".join(problems))


# --- no sessions or issue numbers in the product ---------------------------------------------------------

HISTORY_TALK = re.compile(r"[Ii]ssue #?[0-9]+|[Ss]ession [0-9]+")
PRODUCT_SUFFIXES = (".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".txt", ".sh", ".json")


def product_files() -> list[Path]:
    """Tracked files and new ones not ignored: code, docs, settings (not data)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [ROOT / name for name in listed
            if (name.endswith(PRODUCT_SUFFIXES) or Path(name).name == "Makefile") and (ROOT / name).is_file()]


def history_talk(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if HISTORY_TALK.search(line)]


@pytest.mark.pure
def test_no_sessions_or_issue_numbers() -> None:
    found = [f"{path.relative_to(ROOT)}:{n}: {line}"
             for path in product_files() for n, line in history_talk(path.read_text(errors="replace"))]
    if found:
        fail("the product describes itself as it is (history lives in git):\n" + "\n".join(found))


# --- unit tests of the harness itself ----------------------------------------------------------------------

@pytest.mark.pure
@pytest.mark.parametrize(("expected", "actual", "ok"), [
    (["a", "b"], ["a", "b"], True),
    (["a", "b"], ["a", "b  ", ""], True),  # trailing spaces and blank lines at the end do not count
    (["a", "b"], ["a"], False),
    (["a"], ["a", "b"], False),
    (["a", "b"], ["a", "c"], False),
    (["id: ..."], ["id: 7f3a"], True),
    (["id:..."], ["id:"], True),
    (["id: ...", "x"], ["id: 7f3a", "y"], False),
    (["a ... c"], ["a b c"], True),
    (["a ... c"], ["a b d"], False),
    (["a...c...e"], ["abcde"], True),
    (["...", "last"], ["one", "two", "last"], True),
    (["...", "last"], ["last"], True),  # any number of lines, none included
    (["first", "..."], ["first"], True),
    (["first", "...", "last"], ["first", "last"], True),
    (["first", "...", "last"], ["first", "x", "y", "last"], True),
    (["first", "...", "last"], ["first", "x", "y"], False),
    (["first", "...", "mid", "...", "last"], ["first", "mid", "x", "last"], True),
    (["first", "...", "mid", "...", "last"], ["first", "x", "last"], False),
    (["  ..."], ["a", "b"], True),  # only `...` on the line, whatever its indent
    (["a.b"], ["axb"], False),  # the rest of the line is literal, not a regular expression
    (["(1+1)*"], ["(1+1)*"], True),
    ([], [], True),
    ([], ["x"], False),
])
def test_output_matching(expected: list[str], actual: list[str], ok: bool) -> None:
    assert output_matches(expected, actual) is ok


@pytest.mark.pure
def test_console_parsing() -> None:
    body = textwrap.dedent("""\
        $ echo one
        one
        $ curl -s http://127.0.0.1:8080/healthz \\
            -H 'x: y'
        ...
        $ true
        $ cat <<'EOF' > f.json
        {"a": 1}
        EOF
        $ cat f.json
        {"a": 1}

        """)
    commands = parse_console(body)
    assert [c.line for c in commands] == [1, 3, 6, 7, 10]
    assert commands[0] == Command(1, "echo one", ["one"])
    assert commands[1].text == "curl -s http://127.0.0.1:8080/healthz \\\n    -H 'x: y'"
    assert commands[1].expected == ["..."]
    assert commands[2].expected == []
    assert commands[3].text == "cat <<'EOF' > f.json\n{\"a\": 1}\nEOF"
    assert commands[3].expected == []
    assert commands[4].expected == ['{"a": 1}']
    with pytest.raises(Failed, match="starts with a `\\$ ` command"):
        parse_console("output first\n$ true\n")


@pytest.mark.pure
def test_shell_keeps_variables_and_directory(tmp_path: Path) -> None:
    shell = Shell(fresh_dir(tmp_path / "w"), fresh_dir(tmp_path / "s"), dict(os.environ))
    try:
        assert shell.run("X=42; mkdir -p sub && cd sub") == (0, "")
        assert shell.run("echo $X; basename $PWD") == (0, "42\nsub\n")
        assert shell.run("false | cat")[0] == 1  # pipefail: a failing stage fails the command
        assert shell.run("echo oops >&2; (exit 3)") == (3, "oops\n")
        assert shell.run("sleep 5", timeout=0.5)[0] == -1
    finally:
        shell.close()


@pytest.mark.pure
def test_block_reading() -> None:
    text = textwrap.dedent("""\
        # Title

        <!-- docs-test: skip (needs Docker) -->
        ```console
        $ docker build .
        ```

        1. A step:
           ```yaml settings
           port: 9000
           ```
        ````text
        ```
        nested
        ```
        ````
        """)
    blocks, prose = read_blocks(text, "x.md")
    assert [(b.line, b.info, b.marker) for b in blocks] == [
        (4, "console", "skip (needs Docker)"), (9, "yaml settings", None), (12, "text", None)]
    assert blocks[1].body == "port: 9000\n"
    assert blocks[2].body == "```\nnested\n```\n"
    assert prose == [0, 1, 2, 6, 7]


@pytest.mark.pure
@pytest.mark.parametrize(("info", "key"), [
    ("console", "console"), ("yaml policy", "yaml policy"), ("python", "python"), ("json", "json"),
    ("yaml", None), ("yaml routing", None), ("", None), ("ruby", None), ("console extra", None),
])
def test_info_strings(info: str, key: str | None) -> None:
    block = Block("x.md", 1, info, "", None)
    if key is None:
        with pytest.raises(Failed, match="info string"):
            how(block)
    else:
        assert how(block) == key


@pytest.mark.pure
def test_skip_needs_a_reason() -> None:
    assert SKIP_REASON.match("skip (installs packages)")
    for marker in ("skip", "skip ()", "skip because"):
        m = SKIP_REASON.match(marker)
        assert m is None or not m["reason"].strip()


@pytest.mark.pure
def test_slugs() -> None:
    assert slug("Keys, roles, limits and budgets") == "keys-roles-limits-and-budgets"
    assert slug("`gateway route explain`") == "gateway-route-explain"
    assert slug("The [API](api.md) in 5 minutes") == "the-api-in-5-minutes"
    assert slug("Errors: 4xx & 5xx") == "errors-4xx--5xx"


@pytest.mark.pure
def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# API\n\n## Errors\n\n## Errors\n")
    readme = tmp_path / "README.md"
    readme.write_text(textwrap.dedent("""\
        # Gateway
        [API](docs/api.md), [errors](docs/api.md#errors), [again](docs/api.md#errors-1), [top](#gateway),
        [site](https://example.com/missing.md), `[code](nowhere.md)`
        [gone](docs/gone.md) and [no heading](docs/api.md#headers) and [here](#nothing)
        ```text
        [in a block](nowhere.md)
        ```
        """))
    assert broken_links(readme, tmp_path) == [
        "README.md:4: `docs/gone.md`: no such file",
        "README.md:4: `docs/api.md#headers`: no heading `#headers` in docs/api.md",
        "README.md:4: `#nothing`: no heading `#nothing` in README.md",
    ]


@pytest.mark.pure
def test_history_talk_is_found() -> None:
    issue, session = "Issue", "session"
    text = f"fine line\nsee {issue} #12 here\nsince {session} 4\nan issue with sessions\n"
    assert [n for n, _ in history_talk(text)] == [2, 3]


def test_console_block_runs_against_the_docs_gateway(docs_gateway: DocsGateway, tmp_path: Path) -> None:
    body = textwrap.dedent("""\
        $ curl -s http://127.0.0.1:8080/healthz
        {"status":"ok"}
        $ curl -s -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:8080/v1/models \\
            -H "Authorization: Bearer $GATEWAY_KEY"
        200
        $ echo "$OPENAI_BASE_URL"
        http://127.0.0.1:8080/v1
        $ gateway keys list --format json | python -c 'import json, sys; json.load(sys.stdin)'
        """)
    run_console(Block("x.md", 1, "console", body, None), docs_gateway, tmp_path)


def test_console_failure_shows_expected_and_actual(docs_gateway: DocsGateway, tmp_path: Path) -> None:
    body = "$ echo hello\n$ printf 'one\\ntwo\\n'\none\nthree\n"
    with pytest.raises(Failed) as failed:
        run_console(Block("docs/x.md", 10, "console", body, None), docs_gateway, tmp_path)
    assert "docs/x.md:12: the output differs" in str(failed.value)
    assert "--- expected:\n  | one\n  | three\n--- actual:\n  | one\n  | two\n" in str(failed.value) + "\n"
    with pytest.raises(Failed, match=r"docs/x.md:11: exit status 1"):
        run_console(Block("docs/x.md", 10, "console", "$ false\n", None), docs_gateway, fresh_dir(tmp_path / "again"))


def test_python_block_reaches_the_docs_gateway(docs_gateway: DocsGateway, tmp_path: Path) -> None:
    body = textwrap.dedent("""\
        from openai import OpenAI

        client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY name the docs gateway
        assert "auto" in [m.id for m in client.models.list()]
        """)
    run_python(Block("x.md", 1, "python", body, None), docs_gateway, tmp_path)
    with pytest.raises(Failed, match="exit status 1"):
        run_python(Block("x.md", 1, "python", "assert False\n", None), docs_gateway, fresh_dir(tmp_path / "again"))
