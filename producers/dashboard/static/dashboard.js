// Refreshes each [data-refresh] element from the same page with ?partial=1 (the server renders just that
// part), every data-refresh milliseconds while the tab is visible. A 401 means the sign-in ended.
(function () {
  "use strict";
  function refresh(element) {
    var every = parseInt(element.getAttribute("data-refresh"), 10) || 3000;
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    url.searchParams.delete("notice");
    function tick() {
      if (document.hidden) { return window.setTimeout(tick, every); }
      fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status === 401) { window.location.assign("/signin"); return null; }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined) {
            element.innerHTML = html;
            element.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () { /* the next tick tries again */ })
        .finally(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  });
})();
