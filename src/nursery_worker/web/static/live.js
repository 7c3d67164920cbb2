// Live updates for the dashboard (no inline script: CSP forbids it).
// Listens to the server's change events and refreshes the page's live region through htmx;
// polls every 5 s when the event stream is refused or broken. Also asks before a confirmed POST.
(function () {
  "use strict";
  var POLL_MS = 5000;
  var pollTimer = null;
  var pending = false;

  function liveRegion() { return document.querySelector("#live[data-live]"); }

  function refresh() {
    var region = liveRegion();
    if (!region || !window.htmx || pending) { return; }
    if (document.querySelector("#live input:focus, #live select:focus, #live textarea:focus")) { return; }
    pending = true;
    window.htmx.ajax("GET", window.location.pathname + window.location.search,
      { target: "#live", select: "#live", swap: "outerHTML" }).then(function () { pending = false; },
      function () { pending = false; });
  }

  function setStatus(text, cls) {
    var el = document.getElementById("live-status");
    if (el) { el.className = "live-status " + cls; el.title = text; el.setAttribute("data-state", cls); }
  }

  function startPolling() {
    if (pollTimer === null) { pollTimer = window.setInterval(refresh, POLL_MS); }
    setStatus("polling every 5 s", "polling");
  }

  function stopPolling() {
    if (pollTimer !== null) { window.clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    var url = document.body.getAttribute("data-events");
    if (!url || !window.EventSource || !liveRegion()) { if (liveRegion()) { startPolling(); } return; }
    var source = new EventSource(url);
    source.addEventListener("ready", function () { stopPolling(); setStatus("live", "live"); });
    source.addEventListener("change", refresh);
    source.onerror = function () { startPolling(); };
  }

  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = button && button.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest("[data-toggle]");
    if (!toggle) { return; }
    document.body.classList.toggle(toggle.getAttribute("data-toggle"));
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
}());
