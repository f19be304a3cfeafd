"""What the console's tests share: signed-in clients, keys made through the API, calls, a page's JSON data,
and a gateway in this process on PostgreSQL and Redis for them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.auth_support import bearer
from tests.inprocess_gateway import InProcessGateway
from tests.limits_support import delete_prefix, require_redis, unique_prefix
from tests.services import redis_url

HELLO = [{"role": "user", "content": "Say hello to the accountants."}]


@dataclass(frozen=True)
class Key:
    secret: str
    id: str


@dataclass
class Console:
    gw: InProcessGateway
    keys: dict[str, Key]
    database_url: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gw.base_url, follow_redirects=False, timeout=30)

    def api(self, path: str, key: str, **params: Any) -> httpx.Response:
        return httpx.get(self.gw.base_url + path, params=params, headers=bearer(self.keys[key].secret), timeout=30)


def csrf_of(client: httpx.Client) -> str:
    """The CSRF token of the sign-in form (GET /console/login sets its cookie)."""
    form = client.get("/console/login")
    found = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert found is not None, form.text
    return found.group(1)


def sign_in(client: httpx.Client, secret: str, next_page: str = "") -> httpx.Response:
    return client.post("/console/login", data={"api_key": secret, "next": next_page, "_csrf_token": csrf_of(client)})


def signed_in(c: Console, key: str) -> httpx.Client:
    client = c.client()
    r = sign_in(client, c.keys[key].secret)
    assert r.status_code == 303 and r.headers["location"] == "/console/", r.text
    return client


def json_block(html: str, block_id: str) -> Any:
    found = re.search(rf'<script type="application/json" id="{block_id}">(.*?)</script>', html, re.S)
    assert found is not None, html
    return json.loads(found.group(1))


def create_key(gw: InProcessGateway, tenant: str, team: str, role: str, scope: str = "tenant") -> Key:
    r = httpx.post(gw.base_url + "/admin/keys", headers=gw.auth, timeout=30,
                   json={"tenant": tenant, "team": team, "role": role, "scope": scope, "name": f"{tenant} {role}"})
    assert r.status_code == 201, r.text
    body = r.json()
    return Key(body["key"], body["id"])


def chat(gw: InProcessGateway, key: Key, **body: Any) -> httpx.Response:
    return httpx.post(gw.api + "/chat/completions", json={"messages": HELLO, "max_tokens": 8, **body},
                      headers=bearer(key.secret), timeout=30)


@contextmanager
def console_gateway(state_dir: Path, database_url: str, **extra: Any) -> Iterator[InProcessGateway]:
    """A started gateway on `database_url` and Redis (its own key prefixes, removed afterwards)."""
    require_redis()
    prefix = unique_prefix()
    config = {"database_url": database_url, "auto_migrate": True, "redis_url": redis_url(),
              "recorder_flush_interval_s": 0.05, "limits_key_prefix": prefix + "limits:",
              "cache_key_prefix": prefix + "cache:", "feedback_key_prefix": prefix + "feedback:",
              "responses_key_prefix": prefix + "responses:", **extra}
    gw = InProcessGateway(state_dir, config)
    try:
        yield gw
    finally:
        gw.stop()
        delete_prefix(prefix)
