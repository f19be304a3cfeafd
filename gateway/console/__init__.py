"""The web console at `/console`: finance's and operators' pages, server-rendered HTML with a little
JavaScript (charts drawn by the vendored Chart.js, nothing fetched from the internet).

The console adds no data of its own: each page calls the same Python functions as the API's endpoints
(`gateway/accounting/reports.py`, `gateway/accounting/overview.py`, ...) with the same filters, scoped the
same way (`gateway/api/report_query.py`, `gateway/auth/scope.py`).

Modules, one job each:

- `router.py`: the routes as mounted on the app (`console_routers(settings)`): a Litestar `Router` at
  `/console` with its own middleware, guard and HTML errors, and the static files. No app-wide middleware:
  the inference path never runs any of it.
- `session.py`: sign-in sessions (server side: Redis or memory; the key's keyed hash, never the key, checked
  again on every request), the session and CSRF middleware.
- `access.py`: the guard: a signed-in finance or admin key (or auth off), then the page's roles.
- `pages.py`: the pages as data (path, title, roles) and the navigation.
- `render.py`: templates, the layout's context, chart data as exact text, errors as HTML pages.
- `signin.py`: `GET`/`POST /console/login`, `POST /console/logout`.
- one module per page (`overview.py`, ...); `templates/` (Jinja, autoescaped); `static/` (`console.css`,
  `console.js`, `vendor/chart.js-<version>/` with its licence).

How to add a page:

1. Describe it in `pages.py`: `KEYS = Page(path="/console/keys", title="Keys", name="keys", roles=ADMIN)`
   and add it to `NAV` (the navigation shows it to its roles only; the nav link's `data-testid` is
   `nav-<name>`).
2. Write its handler in a module of its own, on the path relative to `/console`, with the page's `opt`
   (the guard checks its roles before the handler runs: another role gets a 403 page) and `check_query`
   (an unknown query parameter is a 400 page):

       @get("/keys", opt=KEYS.opt, guards=[check_query], include_in_schema=False)
       async def keys_page(request: Request[Any, Any, Any], tenant: str | None = None) -> Template:
           ...  # the API's own function, with report_filters(principal_of(request), ...) for tenant scope
           return page(request, KEYS, "keys.html", rows=plain(rows))

   and list it in the module's `HANDLERS`, and those in `router.py`.
3. Its template extends `base.html`. A form that POSTs carries `{{ csrf_input | safe }}` (every POST is
   checked for the token). A chart: `{{ chart(id, "bar"|"line", data, title) }}` from `macros.html`, with
   `data = {"labels": [...], "series": [{"label": ..., "values": [...]}], "stacked": bool}` (values as
   exact text: `gateway.accounting.money.plain`), and the same numbers in a table beside it
   (`series_table`): the table is what screen readers and the browser tests read.
4. Keep stable `id` / `data-testid` attributes on the elements tests look at; document the page in
   docs/console.md.
"""
