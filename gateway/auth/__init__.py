"""Keys and roles: who may call.

- `keys.py`: the key format, the keyed hash, the server secret and the development key;
- `models.py` + `store.py`: the `api_keys` and `team_limits` tables and their operations;
- `principal.py`: who a key says the caller is (tenant, team, key, role, scope) and its limits;
- `scope.py`: which tenants a key reaches (its own, or all) and the 403s of reaching further;
- `service.py`: `Auth`, the lookup with its in-process TTL cache and fast revocation through Redis;
- `guard.py`: the Litestar guard (401 / 403 in OpenAI's envelope) and the roles each path needs;

Kept free of imports here so that `migrations/env.py` can import `gateway.auth.models` cheaply.
"""
