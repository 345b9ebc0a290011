// yatai dashboard: small progressive enhancements. Every page works without
// this file; it adds copy buttons, confirmation dialogs and live updates.
"use strict";
(function () {
  function onReady(f) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", f);
    else f();
  }

  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.addEventListener("click", function () {
        var el = document.getElementById(b.getAttribute("data-copy"));
        if (!el) return;
        var text = el.textContent;
        var done = function () { b.textContent = "Copied"; setTimeout(function () { b.textContent = "Copy"; }, 1500); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { select(el); });
        } else {
          select(el);
        }
      });
    });
  }

  function select(el) {
    var r = document.createRange();
    r.selectNodeContents(el);
    var s = window.getSelection();
    s.removeAllRanges();
    s.addRange(r);
  }

  // <button data-dialog="ID"> opens <dialog id=ID>; [data-close] closes it.
  function dialogs() {
    document.querySelectorAll("button[data-dialog]").forEach(function (b) {
      var d = document.getElementById(b.getAttribute("data-dialog"));
      if (!d || typeof d.showModal !== "function") return;
      b.type = "button";
      b.addEventListener("click", function (e) { e.preventDefault(); d.showModal(); });
    });
    document.querySelectorAll("dialog [data-close]").forEach(function (b) {
      b.addEventListener("click", function (e) { e.preventDefault(); b.closest("dialog").close(); });
    });
  }

  // The page's event streams. They are closed when the page is hidden: a page
  // kept in the back/forward cache would otherwise hold its connections open,
  // and with six connections per host a few deployment pages in the history
  // stall every later load. A page restored from that cache reopens them.
  var streams = [];
  function stream(open) {
    streams.push({ open: open, es: open() });
  }
  window.addEventListener("pagehide", function () {
    streams.forEach(function (s) {
      if (s.es) { s.es.close(); s.es = null; }
    });
  });
  window.addEventListener("pageshow", function (e) {
    if (!e.persisted) return;
    streams.forEach(function (s) {
      if (!s.es) s.es = s.open();
    });
  });

  // A deployment page: status, replicas and charts over server-sent events.
  function liveDeployment() {
    var root = document.querySelector("[data-live]");
    if (!root || typeof EventSource === "undefined") return;
    stream(function () {
      var es = new EventSource(root.getAttribute("data-live"));
      es.addEventListener("state", function (e) {
        var s;
        try { s = JSON.parse(e.data); } catch (_) { return; }
        document.querySelectorAll("[data-live-status]").forEach(function (el) {
          el.textContent = s.status;
          el.className = "badge s-" + s.status;
        });
        var reason = document.querySelector("[data-live-reason]");
        if (reason) reason.textContent = s.reason || "";
        var url = document.querySelector("[data-live-url]");
        if (url && s.url && s.status !== "terminated" && url.getAttribute("data-live-url") !== s.url) {
          var a = document.createElement("a");
          a.href = s.url;
          a.textContent = s.url;
          a.setAttribute("data-testid", "url");
          url.textContent = "";
          url.appendChild(a);
          url.setAttribute("data-live-url", s.url);
        }
        var body = document.querySelector("[data-live-replicas]");
        if (body && Array.isArray(s.replicas)) {
          body.textContent = "";
          s.replicas.forEach(function (r) {
            var tr = document.createElement("tr");
            tr.setAttribute("data-testid", "replica");
            [r.id, r.state, String(r.restarts), String(r.inflight), r.pid == null ? "" : String(r.pid)].forEach(function (v, i) {
              var td = document.createElement("td");
              if (i >= 2) td.className = "num";
              td.textContent = v;
              tr.appendChild(td);
            });
            body.appendChild(tr);
          });
          var empty = document.querySelector("[data-live-noreplicas]");
          if (empty) empty.hidden = s.replicas.length > 0;
        }
        if (s.charts) {
          Object.keys(s.charts).forEach(function (id) {
            var fig = document.getElementById(id);
            if (fig) fig.outerHTML = s.charts[id];
          });
        }
      });
      es.onerror = function () { /* EventSource reconnects by itself */ };
      return es;
    });
  }

  function liveLogs() {
    var box = document.querySelector("[data-logs-url]");
    if (!box || typeof EventSource === "undefined") return;
    var code = box.querySelector("code") || box;
    stream(function () {
      var es = new EventSource(box.getAttribute("data-logs-url"));
      var first = true;
      es.onmessage = function (e) {
        if (first) { code.textContent = ""; first = false; }
        var stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 20;
        code.appendChild(document.createTextNode(e.data + "\n"));
        var lines = code.childNodes;
        while (lines.length > 2000) code.removeChild(lines[0]);
        if (stick) box.scrollTop = box.scrollHeight;
      };
      es.onerror = function () { /* reconnects; the server resends the tail */ first = true; };
      return es;
    });
  }

  // The deployment form: choosing a repository loads its versions.
  function versionPicker() {
    var repo = document.querySelector("select[data-versions-url]");
    if (!repo || typeof fetch !== "function") return;
    repo.addEventListener("change", function () {
      var url = repo.getAttribute("data-versions-url") + "?bento_repository=" + encodeURIComponent(repo.value);
      fetch(url, { credentials: "same-origin" }).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (html) {
        var old = document.getElementById("version-picker");
        if (html && old) old.outerHTML = html;
      }).catch(function () { /* the text field still works */ });
    });
  }

  // The cluster form: a kubeconfig file chosen is read into the textarea.
  // The form sends only that text, so pasting it works without this script
  // (the file input stays hidden then).
  function kubeconfigFile() {
    var box = document.querySelector("[data-kubeconfig-file]");
    var area = document.getElementById("kube_config");
    if (!box || !area || typeof FileReader === "undefined") return;
    var input = box.querySelector("input[type=file]");
    var status = box.querySelector("[data-kubeconfig-status]");
    box.hidden = false;
    input.addEventListener("change", function () {
      var f = input.files && input.files[0];
      if (!f) return;
      if (f.size > 1048576) {
        status.textContent = f.name + " is larger than 1 MiB: export only this cluster's context.";
        input.value = "";
        return;
      }
      var reader = new FileReader();
      reader.onload = function () {
        area.value = String(reader.result);
        status.textContent = "Read " + f.name + " (" + f.size + " bytes) into the field below.";
        input.value = "";
      };
      reader.onerror = function () { status.textContent = "Could not read " + f.name + ": paste its text instead."; };
      reader.readAsText(f);
    });
  }

  // The secret forms: "Add an item" appends an empty copy of the last row
  // (without the script, the rows the server rendered are there).
  function secretItems() {
    document.querySelectorAll("button[data-add-item]").forEach(function (b) {
      var box = b.form && b.form.querySelector("[data-items]");
      if (!box) return;
      b.hidden = false;
      b.addEventListener("click", function () {
        var rows = box.querySelectorAll("[data-item]");
        var last = rows[rows.length - 1];
        var n = rows.length + 1;
        var row = last.cloneNode(true);
        row.removeAttribute("data-key");
        row.querySelectorAll("[id]").forEach(function (el) { el.id = el.id.replace(/-\d+$/, "-" + n); });
        row.querySelectorAll("label[for]").forEach(function (el) {
          el.htmlFor = el.htmlFor.replace(/-\d+$/, "-" + n);
        });
        row.querySelectorAll("input, textarea").forEach(function (el) { el.value = ""; });
        row.querySelectorAll("textarea").forEach(function (el) { el.placeholder = ""; });
        row.querySelectorAll("[data-retype]").forEach(function (el) { el.remove(); });
        var legend = row.querySelector("legend");
        if (legend) legend.textContent = "Item " + n;
        box.appendChild(row);
        row.querySelector("input").focus();
      });
    });
  }

  onReady(function () {
    versionPicker();
    secretItems();
    kubeconfigFile();
    copyButtons();
    dialogs();
    liveDeployment();
    liveLogs();
  });
})();
