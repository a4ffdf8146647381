// batchq dashboard: the one script. Refreshes [data-poll] regions with a small HTML fragment
// rendered (and escaped) by the server, every data-every ms, until the fragment says it is final.
"use strict";
(function () {
  function poll(region) {
    var url = region.getAttribute("data-poll");
    var every = parseInt(region.getAttribute("data-every"), 10) || 3000;
    var timer = null;
    function schedule() { timer = window.setTimeout(tick, every); }
    function tick() {
      if (document.hidden) { schedule(); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" }, redirect: "error" })
        .then(function (response) {
          if (!response.ok) { throw new Error(String(response.status)); }
          return response.text();
        })
        .then(function (html) {
          if (html !== region.innerHTML) { replace(region, html); }
          if (region.querySelector("[data-terminal]")) { region.removeAttribute("data-poll"); return; }
          schedule();
        })
        .catch(function () { region.setAttribute("data-stale", "1"); });
    }
    schedule();
    return function () { if (timer) { window.clearTimeout(timer); } };
  }
  function replace(region, html) {
    var focused = document.activeElement && document.activeElement.id;
    region.innerHTML = html;  // server-rendered with autoescape: no user string arrives unescaped
    region.removeAttribute("data-stale");
    if (focused) { var again = document.getElementById(focused); if (again) { again.focus(); } }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var regions = document.querySelectorAll("[data-poll]");
    for (var i = 0; i < regions.length; i++) { poll(regions[i]); }
  });
})();
