// Gatehouse dashboard: refreshes the overview's live figures (elements with a data-live
// attribute) from /ui/live.json every few seconds. Pages work without it.
(function () {
  "use strict";
  var fields = document.querySelectorAll("[data-live]");
  if (fields.length === 0 || !window.fetch) {
    return;
  }
  var status = document.querySelector("[data-live-status]");
  var period = 5000;

  function show(text) {
    if (status) {
      status.textContent = text;
    }
  }

  function refresh() {
    fetch("/ui/live.json", {
      credentials: "same-origin",
      headers: { accept: "application/json" },
      cache: "no-store"
    })
      .then(function (r) {
        if (r.status === 401) {
          window.location.assign("/ui/login");
          throw new Error("logged out");
        }
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.json();
      })
      .then(function (v) {
        fields.forEach(function (el) {
          var key = el.getAttribute("data-live");
          if (Object.prototype.hasOwnProperty.call(v, key)) {
            var text = String(v[key]);
            if (el.textContent !== text) {
              el.textContent = text;
            }
          }
        });
        var at = new Date(v.at * 1000);
        show("(updated " + at.toLocaleTimeString() + ")");
      })
      .catch(function () {
        show("(live refresh paused: the server did not answer)");
      })
      .then(function () {
        window.setTimeout(refresh, period);
      });
  }

  window.setTimeout(refresh, period);
})();
