// streamq dashboard: refresh the live parts of a page, follow a running job.
// Written for this dashboard (no library): the server renders every fragment,
// escaped, and this only swaps it in.
(function () {
  "use strict";
  function refresh(el) {
    if (document.hidden || el.dataset.busy) return;
    el.dataset.busy = "1";
    fetch(el.dataset.refresh, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) el.innerHTML = html; })
      .catch(function () {})
      .finally(function () {
        delete el.dataset.busy;
        // A finished job's page stops refreshing.
        if (el.querySelector('[data-final="true"]') && el.dataset.timer) {
          clearInterval(parseInt(el.dataset.timer, 10));
        }
        el.dispatchEvent(new Event("refreshed"));
      });
  }
  function start(el) {
    var every = parseInt(el.dataset.interval || "2000", 10);
    if (el.dataset.sse && window.EventSource) {
      // A running job: refresh when it changes, and stop once it is final.
      var source = new EventSource(el.dataset.sse);
      source.addEventListener("update", function () { refresh(el); });
      source.addEventListener("final", function () { source.close(); refresh(el); });
      every = Math.max(every, 5000);
    }
    el.dataset.timer = String(setInterval(function () { refresh(el); }, every));
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(start);
  });
})();
