"""The gateway's HTTP API: every route handler, one module per area. Handlers are thin: they parse
what they need, call the services below them and render the answer.

- `openai.py`: the inference endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
  `/v1/messages`, `/v1/embeddings`, ...);
- `responses.py`: `GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`;
- `models.py`: `/v1/models`, `/v1/models/{model}`;
- `feedback.py`: `POST /v1/feedback`;
- `reports.py`, `overview.py`, `budgets.py`: `/v1/reports/usage`, `/v1/reports/overview`, `/v1/reports/budgets`
  (finance);
- `invoices.py`: `/v1/reports/invoice`, monthly statements (finance);
- `admin.py`: `/admin/policy`, `/admin/route/explain`, `/admin/workers`;
- `keys.py`: `/admin/keys`, `/admin/teams`;
- `health.py`: `/healthz`, `/readyz`;
- `metrics.py`: `/metrics`, and the separate metrics listener.
- `openapi.py`: the OpenAPI document, `GET /admin/openapi.json` (Litestar's, completed).
"""

from __future__ import annotations

from gateway.api.admin import policy_status, route_explain, workers_status
from gateway.api.budgets import budgets_report
from gateway.api.feedback import feedback
from gateway.api.health import healthz, readyz
from gateway.api.invoices import invoice_report
from gateway.api.keys import KEY_HANDLERS
from gateway.api.metrics import metrics_endpoint
from gateway.api.models import list_models, retrieve_model
from gateway.api.openai import BY_NAME_ROUTES, chat_completions, completions, create_message, create_response
from gateway.api.overview import overview_report
from gateway.api.reports import usage_report
from gateway.api.responses import cancel_response, retrieve_response

HANDLERS = [
    chat_completions, completions, create_response, retrieve_response, cancel_response, create_message, *BY_NAME_ROUTES,
    list_models, retrieve_model, feedback, usage_report, overview_report, budgets_report, invoice_report,
    policy_status, route_explain, workers_status, *KEY_HANDLERS, healthz, readyz, metrics_endpoint,
]
