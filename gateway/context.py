"""What the handlers need, created once by the app's lifespan and handed to them through app state."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gateway.settings import Settings
from router.models import Catalogue
from workers.pool import Pools
from workers.supervisor import Supervisor


@dataclass
class GatewayContext:
    settings: Settings
    catalogue: Catalogue
    pools: Pools
    client: httpx.AsyncClient
    started_at: int
    supervisor: Supervisor
