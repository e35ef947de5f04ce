// The site's own script; every page works without it. It counts a tap on a phone number as a call,
// and on a page with the lead form it checks the form before sending, marks each problem beside
// its field, and shows a sending state that stops a second submit.

// A tap on a tel: link is counted as a call, on the row of this page's view: its path, its utm_ tags
// and its referrer, which named the view's source. No identifier: the beacon carries only these and
// goes on its own, so the call is never held up.
(function () {
  "use strict";
  if (!navigator.sendBeacon || !window.URLSearchParams) return;
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest('a[href^="tel:"]');
    if (!link) return;
    var address = new URLSearchParams(location.search), tags = new URLSearchParams();
    ["utm_source", "utm_medium", "utm_campaign"].forEach(function (name) {
      if (address.has(name)) tags.set(name, address.get(name));
    });
    var call = new URLSearchParams({ page: location.pathname, query: tags.toString(), referrer: document.referrer });
    try {
      navigator.sendBeacon("/calls", call);
    } catch (error) {} // a call not counted is still a call
  }, true);
})();

(function () {
  "use strict";
  var form = document.querySelector(".lead-form");
  var summary = document.getElementById("form-errors");
  if (!form || !summary) return;
  var button = form.querySelector("button[type=submit]");
  var idle = button.textContent;
  var sending = false;
  var flagged = [];
  var ownSummary = false;
  var get = function (name) { return form.elements.namedItem(name); };
  var words = form.dataset;  // the page's language: data-name-missing, data-reach-missing, data-check-one, ...

  // Only what the server would surely refuse; the server has the last word on everything else.
  function problems() {
    var found = [];
    if (!get("name").value.trim()) found.push([get("name"), words.nameMissing]);
    if (!get("phone").value.trim() && !get("email").value.trim()) found.push([get("phone"), words.reachMissing]);
    return found;
  }

  function describedBy(field, id, add) {
    var ids = (field.getAttribute("aria-describedby") || "").split(" ").filter(function (x) { return x && x !== id; });
    if (add) ids.push(id);
    if (ids.length) field.setAttribute("aria-describedby", ids.join(" "));
    else field.removeAttribute("aria-describedby");
  }

  function mark(field, message) {
    var id = field.id + "-error";
    var note = document.getElementById(id);
    if (!note) {
      note = document.createElement("p");
      note.className = "error";
      note.id = id;
      field.parentNode.appendChild(note);
    }
    note.textContent = message;
    field.parentNode.classList.add("has-error");
    field.setAttribute("aria-invalid", "true");
    describedBy(field, id, true);
    flagged.push(field);
  }

  function unmark(field) {
    var note = document.getElementById(field.id + "-error");
    if (note) note.remove();
    field.parentNode.classList.remove("has-error");
    field.removeAttribute("aria-invalid");
    describedBy(field, field.id + "-error", false);
  }

  function show(found) {
    flagged.splice(0).forEach(unmark);
    found.forEach(function (pair) { mark(pair[0], pair[1]); });
    var intro = document.createElement("p");
    intro.textContent = found.length === 1 ? words.checkOne : words.checkMany;
    var list = document.createElement("ul");
    found.forEach(function (pair) {
      var link = document.createElement("a");
      link.href = "#" + pair[0].id;
      link.textContent = pair[1];
      list.appendChild(document.createElement("li")).appendChild(link);
    });
    summary.replaceChildren(intro, list);
    summary.hidden = false;
    ownSummary = true;
    found[0][0].focus();
  }

  function ready() {
    sending = false;
    button.removeAttribute("aria-disabled");
    button.textContent = idle;
  }

  form.addEventListener("submit", function (event) {
    if (sending) return event.preventDefault();
    var found = problems();
    if (found.length) {
      event.preventDefault();
      return show(found);
    }
    sending = true;
    button.setAttribute("aria-disabled", "true");
    button.textContent = words.sending;
    setTimeout(ready, 15000);
  });

  // A message the visitor has just fixed goes away as they type.
  form.addEventListener("input", function () {
    var open = problems().map(function (pair) { return pair[0]; });
    flagged = flagged.filter(function (field) {
      if (open.indexOf(field) >= 0) return true;
      unmark(field);
      return false;
    });
    if (ownSummary && !flagged.length) summary.hidden = true;
  });

  window.addEventListener("pageshow", function (event) {
    if (event.persisted) ready();
  });
})();
