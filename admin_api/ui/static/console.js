// relaybox console: progressive enhancement only (every page works without it). No inline script: CSP.
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.textContent = d.toLocaleString(); t.title = t.getAttribute("datetime"); }
    });
  }
  function wire(root) {
    localTimes(root);
    var all = root.querySelector("#tick-all");
    if (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("input.tick").forEach(function (c) { c.checked = all.checked; });
      });
    }
    root.querySelectorAll("[data-confirm]").forEach(function (b) {
      b.addEventListener("click", function (ev) {
        if (!window.confirm(b.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
  }
  function copyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.addEventListener("click", function () {
        var src = document.getElementById(b.getAttribute("data-copy"));
        if (!src || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(src.textContent.trim()).then(function () {
          b.textContent = "Copied"; b.classList.add("copied");
        });
      });
    });
  }
  function refresh(box) {
    var url = box.getAttribute("data-refresh");
    var every = parseInt(box.getAttribute("data-interval"), 10) || 10;
    setInterval(function () {
      if (document.hidden) { return; }
      fetch(url, {credentials: "same-origin", redirect: "error"}).then(function (r) {
        if (!r.ok) { throw new Error(r.status); }
        return r.text();
      }).then(function (html) {
        // the server rendered (and escaped) the fragment; parse it inertly, then swap it in
        var doc = new DOMParser().parseFromString(html, "text/html");
        box.replaceChildren.apply(box, Array.prototype.slice.call(doc.body.childNodes));
        localTimes(box);
        box.setAttribute("data-refreshed", String(Date.now()));
      }).catch(function () { /* keep the last figures; the next tick tries again */ });
    }, every * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    wire(document);
    copyButtons(document);
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  });
})();
