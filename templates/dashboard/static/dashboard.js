// pgjobs dashboard: auto-refresh of the counts, confirmations of destructive actions and
// the job lists' checkboxes.
// Served by pgjobs itself (the CSP allows no inline script). Everything works without
// it: pages are plain HTML and every action is a plain form.
(function () {
  "use strict";

  var STORAGE_KEY = "pgjobs.dashboard.autoRefresh";
  var body = document.body;
  var countsUrl = body.getAttribute("data-counts-url");
  var configured = parseInt(body.getAttribute("data-refresh-ms") || "0", 10) || 0;
  var intervalMs = configured > 0 ? configured : 5000;
  var timer = null;

  function stored() {
    try {
      return window.localStorage.getItem(STORAGE_KEY);
    } catch (e) {
      return null;
    }
  }

  function store(value) {
    try {
      window.localStorage.setItem(STORAGE_KEY, value);
    } catch (e) {
      /* private mode: the choice lasts for this page only */
    }
  }

  function formatCount(n, estimated) {
    return (estimated ? "\u2248" : "") + Number(n).toLocaleString("en-US");
  }

  // Values are written with textContent only: nothing from the server becomes markup.
  function apply(data) {
    var byName = {};
    data.queues.forEach(function (q) { byName[q.name] = q; });
    var totals = Object.assign({}, data.totals, {
      workers: data.workers,
      estimated: data.totals_estimated
    });
    var nodes = document.querySelectorAll("[data-count-queue][data-count-field]");
    Array.prototype.forEach.call(nodes, function (node) {
      var name = node.getAttribute("data-count-queue");
      var field = node.getAttribute("data-count-field");
      var source = name === "*" ? totals : byName[name];
      if (!source || !(field in source)) {
        return;
      }
      var value = source[field];
      if (field === "health_score") {
        node.textContent = String(value);
        node.className = "health h" + Math.floor(value / 25) * 25;
        return;
      }
      var estimated = Array.isArray(source.estimated) && source.estimated.indexOf(field) >= 0;
      node.textContent = formatCount(value, estimated);
      node.classList.toggle("zero", value === 0);
    });
    if (data.history_ready && document.querySelector("[data-history-pending]")) {
      window.location.reload();
    }
  }

  function poll(label) {
    if (document.hidden) {
      return;
    }
    window.fetch(countsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        apply(data);
        label.classList.remove("stale");
        label.title = "Counts refreshed " + new Date().toLocaleTimeString();
      })
      .catch(function (error) {
        label.classList.add("stale");
        label.title = "Refresh failed: " + error.message;
      });
  }

  function setUp() {
    var box = document.getElementById("auto-refresh");
    if (!box || !countsUrl) {
      return;
    }
    var label = box.parentElement;
    var choice = stored();
    box.checked = choice === null ? configured > 0 : choice === "on";
    label.hidden = false;
    label.title = "Refresh the counts every " + intervalMs / 1000 + " s";

    function schedule() {
      if (timer !== null) {
        window.clearInterval(timer);
        timer = null;
      }
      if (box.checked) {
        timer = window.setInterval(function () { poll(label); }, intervalMs);
      }
    }

    box.addEventListener("change", function () {
      store(box.checked ? "on" : "off");
      schedule();
      if (box.checked) {
        poll(label);
      }
    });
    schedule();
  }

  function confirmations() {
    var forms = document.querySelectorAll("form[data-confirm]");
    Array.prototype.forEach.call(forms, function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
  }

  // The job lists' checkboxes: "check all" (shown only with this script), the count of
  // checked rows, and a confirmation on the buttons that ask for one (bulk delete).
  function bulkSelection() {
    var form = document.getElementById("bulk-form");
    if (!form) {
      return;
    }
    var all = form.querySelector("[data-check-all]");
    var counter = form.querySelector("[data-checked-count]");
    var boxes = form.querySelectorAll("input[type=checkbox][name=id]");
    function count() {
      var n = 0;
      Array.prototype.forEach.call(boxes, function (box) { if (box.checked) { n += 1; } });
      if (counter) {
        counter.textContent = String(n);
      }
      if (all) {
        all.checked = n > 0 && n === boxes.length;
        all.indeterminate = n > 0 && n < boxes.length;
      }
    }
    if (all) {
      all.hidden = false;
      all.addEventListener("change", function () {
        Array.prototype.forEach.call(boxes, function (box) { box.checked = all.checked; });
        count();
      });
    }
    Array.prototype.forEach.call(boxes, function (box) { box.addEventListener("change", count); });
    var asking = form.querySelectorAll("button[data-confirm]");
    Array.prototype.forEach.call(asking, function (button) {
      button.addEventListener("click", function (event) {
        if (!window.confirm(button.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
    count();
  }

  setUp();
  confirmations();
  bulkSelection();
})();
