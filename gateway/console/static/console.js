// Draws each <canvas data-chart="ID"> from the JSON block #ID the server rendered: {"labels": [...],
// "series": [{"label": ..., "values": [...]}], "stacked": bool}. Values are exact decimal text; the chart plots
// them as numbers, the table beside it shows them as served.
(function () {
  "use strict";
  if (typeof Chart === "undefined") { return; }
  // Axis labels as decimals (0.0001), never in exponent notation (1E-4). Lines are curved without overshooting
  // (monotone): a budget's remaining amount is never drawn above its limit, nor a day's spend below zero.
  function plain(value) { return Number(value).toLocaleString("en-US", { maximumFractionDigits: 10 }); }
  var colours = ["#2457c5", "#e07b39", "#2f9e6a", "#b23a7a", "#7a5cc7", "#c9a227", "#3aa3b2", "#8a8f99"];
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var block = document.getElementById(canvas.dataset.chart);
    if (!block) { return; }
    var data = JSON.parse(block.textContent);
    var kind = canvas.dataset.kind || "bar";
    var datasets = data.series.map(function (s, i) {
      var colour = s.colour || colours[i % colours.length];
      return {
        label: s.label, data: s.values.map(function (v) { return v === null ? null : Number(v); }),
        borderColor: colour, backgroundColor: kind === "line" ? colour + "33" : colour,
        fill: kind === "line" && data.series.length === 1, tension: 0.2,
        cubicInterpolationMode: "monotone", borderDash: s.dashed ? [6, 4] : [],
        pointRadius: kind === "line" ? 2 : 0, stepped: s.stepped || false
      };
    });
    new Chart(canvas, {
      type: kind,
      data: { labels: data.labels, datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: !!data.stacked },
          y: { stacked: !!data.stacked, beginAtZero: true, ticks: { callback: plain } }
        },
        plugins: { legend: { display: datasets.length > 1 || kind !== "line" } }
      }
    });
  });
})();
