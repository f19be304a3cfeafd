// The Workers page's table, drawn from the JSON block #workers-data the server rendered, then redrawn every
// few seconds from the table's data-source (/console/workers.json: GET /admin/workers' answer).
(function () {
  "use strict";
  var table = document.getElementById("workers-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var status = document.getElementById("workers-status");

  function cell(row, text, attrs) {
    var td = document.createElement(attrs && attrs.header ? "th" : "td");
    td.textContent = text === null || text === undefined ? "-" : String(text);
    if (attrs && attrs.header) { td.scope = attrs.header; }
    if (attrs && attrs.colSpan) { td.colSpan = attrs.colSpan; }
    if (attrs && attrs.num) { td.className = "num"; }
    if (attrs && attrs.field) { td.dataset.field = attrs.field; }
    row.appendChild(td);
    return td;
  }

  function draw(pools) {
    var rows = document.createDocumentFragment();
    Object.keys(pools).forEach(function (name) {
      var pool = pools[name];
      var head = document.createElement("tr");
      head.className = "pool";
      head.dataset.testid = "pool-row";
      head.dataset.pool = name;
      cell(head, name + " · " + pool.model + " · " + pool.healthy + "/" + pool.replicas.length + " healthy · "
        + pool.in_flight + " in flight · balance " + pool.balance, { header: "rowgroup", colSpan: 12 });
      rows.appendChild(head);
      pool.replicas.forEach(function (r) {
        var m = r.managed || {};
        var tr = document.createElement("tr");
        tr.dataset.testid = "replica-row";
        tr.dataset.pool = name;
        tr.dataset.url = r.url;
        tr.className = r.healthy ? "healthy" : "unhealthy";
        cell(tr, r.url, { header: "row", field: "url" });
        cell(tr, r.healthy ? "healthy" : "unhealthy", { field: "health" });
        cell(tr, r.circuit, { field: "circuit" });
        cell(tr, r.load.toFixed(2), { num: true, field: "load" });
        cell(tr, r.in_flight, { num: true, field: "in_flight" });
        cell(tr, r.running, { num: true, field: "running" });
        cell(tr, r.waiting, { num: true, field: "waiting" });
        cell(tr, r.kv_cache === null ? null : (r.kv_cache * 100).toFixed(1) + "%", { num: true, field: "kv_cache" });
        cell(tr, r.failures, { num: true, field: "failures" });
        cell(tr, r.managed ? m.state : null, { field: "managed" });
        cell(tr, r.managed ? m.restarts : null, { num: true, field: "restarts" });
        cell(tr, r.last_error || m.last_error, { field: "last_error" });
        rows.appendChild(tr);
      });
    });
    body.replaceChildren(rows);
  }

  function refresh() {
    fetch(table.dataset.source, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (answer) {
        if (!answer.ok || answer.redirected) { throw new Error(answer.redirected ? "signed out" : "HTTP " + answer.status); }
        return answer.json();
      })
      .then(function (data) {
        draw(data.pools);
        status.textContent = "as of " + new Date().toLocaleTimeString();
        status.classList.remove("problem");
      })
      .catch(function (err) {
        status.textContent = "not refreshed (" + err.message + "); reload the page";
        status.classList.add("problem");
      });
  }

  draw(JSON.parse(document.getElementById("workers-data").textContent).pools);
  window.setInterval(refresh, Number(table.dataset.refreshS) * 1000);
})();
