"""The mock upstream: nginx answering fixed vLLM 0.32 bodies, far cheaper than any gateway.

Two ports, one per pool:
- JSON: POST /v1/chat/completions -> the real vLLM body (fixtures/vllm-0.32/chat.json), model renamed;
- SSE:  POST /v1/chat/completions -> a 30-chunk stream built from chat_stream_usage.sse's chunk shapes
  (a role chunk, 28 content chunks, a finish chunk), then the usage chunk and `data: [DONE]`, sent with
  chunked transfer encoding, one HTTP chunk per event as vLLM does (nginx SSI: each event is a
  subrequest, so each reaches the reader as its own chunk and the gateway relays 32 pieces, not one).
Both answer GET /health (200), GET /metrics (vLLM's load gauges, for the health checker and the
balancer) and GET /v1/models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from overheadlib.procs import BenchError, Child, free_port, http_get, pinned, wait_until

CHUNKS = 30  # chunks carrying choices; the usage chunk and [DONE] follow


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_body(fixtures: Path, model: str) -> bytes:
    data = json.loads((fixtures / "chat.json").read_text())
    data["model"] = model
    return _compact(data).encode()


def sse_events(fixtures: Path, model: str) -> list[bytes]:
    """The stream's events, each `data: ...\\n\\n`: CHUNKS chunks, the usage chunk, [DONE]."""
    events = []
    for block in (fixtures / "chat_stream_usage.sse").read_text().split("\n\n"):
        block = block.strip()
        if block.startswith("data: {"):
            events.append(json.loads(block[6:]))
    role = next(e for e in events if e["choices"] and "role" in e["choices"][0]["delta"])
    content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    middle = next(e for e in content if e["choices"][0]["finish_reason"] is None)
    last = next(e for e in content if e["choices"][0]["finish_reason"] is not None)
    usage = next(e for e in events if e.get("usage"))
    words = [e["choices"][0]["delta"]["content"] for e in content]
    out = []

    def add(event: dict[str, object]) -> None:
        event = json.loads(json.dumps(event))
        event["model"] = model
        out.append(f"data: {_compact(event)}\n\n".encode())

    add(role)
    for i in range(CHUNKS - 2):
        chunk = json.loads(json.dumps(middle))
        chunk["choices"][0]["delta"]["content"] = words[i % len(words)]
        add(chunk)
    add(last)
    completion = CHUNKS - 1  # every chunk but the role chunk carries one token
    usage = json.loads(json.dumps(usage))
    prompt = usage["usage"]["prompt_tokens"]
    usage["usage"].update(completion_tokens=completion, total_tokens=prompt + completion)
    add(usage)
    out.append(b"data: [DONE]\n\n")
    return out


def metrics_page(model: str) -> str:
    lines = []
    for name, help_ in (
        ("vllm:num_requests_running", "Number of requests in model execution batches."),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
    ):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f'{name}{{engine="0",model_name="{model}"}} 0.0']
    return "\n".join(lines) + "\n"


def models_body(fixtures: Path, model: str) -> str:
    data = json.loads((fixtures / "models.json").read_text())
    for m in data["data"]:
        m["id"] = m["root"] = model
    return _compact(data)


def _quote(text: str | bytes) -> str:
    """An nginx single-quoted string; `return` would expand `$name`, so bodies must not hold a `$`."""
    if isinstance(text, bytes):
        text = text.decode()
    if "$" in text:
        raise BenchError("mock body contains `$`, which nginx would expand")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


@dataclass
class Mock:
    child: Child
    json_port: int
    sse_port: int
    json_body: bytes
    sse_events: list[bytes]

    @property
    def json_url(self) -> str:
        return f"http://127.0.0.1:{self.json_port}"

    @property
    def sse_url(self) -> str:
        return f"http://127.0.0.1:{self.sse_port}"

    @property
    def sse_body(self) -> bytes:
        return b"".join(self.sse_events)


def _server(port: int, model: str, fixtures: Path, chat: list[str]) -> list[str]:
    return [
        "  server {",
        f"    listen 127.0.0.1:{port} reuseport backlog=4096;",
        "    location = /health { default_type text/plain; return 200 ''; }",
        "    location = /metrics {",
        "      default_type 'text/plain; version=0.0.4; charset=utf-8';",
        f"      return 200 {_quote(metrics_page(model))};",
        "    }",
        "    location = /v1/models {",
        "      default_type application/json;",
        f"      return 200 {_quote(models_body(fixtures, model))};",
        "    }",
        *chat,
        "    location / {",
        "      default_type application/json;",
        "      return 404 "
        """'{"object":"error","message":"Not Found","type":"NotFoundError","param":null,"code":404}';""",
        "    }",
        "  }",
    ]


def config(workdir: Path, fixtures: Path, json_model: str, sse_model: str, json_port: int, sse_port: int) -> str:
    body = json_body(fixtures, json_model)
    events = sse_events(fixtures, sse_model)
    json_chat = [
        "    location = /v1/chat/completions {",
        "      default_type application/json;",
        f"      return 200 {_quote(body)};",
        "    }",
    ]
    includes = "".join(f'<!--# include virtual="/_c/{i}" -->' for i in range(len(events)))
    sse_chat = [
        "    location = /v1/chat/completions {",
        "      default_type text/event-stream;",
        "      charset utf-8; charset_types text/event-stream;",  # vLLM's `text/event-stream; charset=utf-8`
        "      ssi on; ssi_types text/event-stream; ssi_silent_errors off;",
        f"      return 200 '{includes}';",
        "    }",
        *(
            f"    location = /_c/{i} {{ internal; default_type text/plain; return 200 {_quote(event)}; }}"
            for i, event in enumerate(events)
        ),
    ]
    tmp = workdir / "tmp"
    return "\n".join([
        "worker_processes 1;",
        "worker_rlimit_nofile 20000;",
        "daemon off;",
        "master_process on;",
        f"pid {workdir / 'nginx.pid'};",
        f"error_log {workdir / 'error.log'} warn;",
        "events { worker_connections 8192; multi_accept on; }",
        "http {",
        "  access_log off;",
        "  server_tokens off;",
        f"  client_body_temp_path {tmp}/body;",
        f"  proxy_temp_path {tmp}/proxy;",
        f"  fastcgi_temp_path {tmp}/fastcgi;",
        f"  uwsgi_temp_path {tmp}/uwsgi;",
        f"  scgi_temp_path {tmp}/scgi;",
        "  client_body_buffer_size 1m;",
        "  client_max_body_size 16m;",
        "  keepalive_requests 1000000000;",  # never close a kept-alive connection during a run
        "  keepalive_timeout 600s;",
        "  tcp_nodelay on;",
        *_server(json_port, json_model, fixtures, json_chat),
        *_server(sse_port, sse_model, fixtures, sse_chat),
        "}",
        "",
    ])


def start(workdir: Path, fixtures: Path, core: str, json_model: str, sse_model: str) -> Mock:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    json_port, sse_port = free_port(), free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(config(workdir, fixtures, json_model, sse_model, json_port, sse_port))
    child = Child("nginx mock", pinned(core, ["nginx", "-p", str(workdir), "-c", str(conf)]), workdir / "nginx.out",
                  stop_signal=15)
    mock = Mock(child, json_port, sse_port, json_body(fixtures, json_model), sse_events(fixtures, sse_model))
    for url in (mock.json_url, mock.sse_url):
        wait_until(f"mock {url}/health", lambda url=url: http_get(url + "/health")[0] == 200, 20, child)
    return mock
