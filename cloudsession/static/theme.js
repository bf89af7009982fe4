// The reader's theme: light or dark as the system prefers, unless the reader picked one with the
// toggle; the choice persists in localStorage. Loaded in <head> (not deferred) so the page never
// flashes the other theme; the toggle is wired once the document is parsed. Also localises every
// <time datetime> to the reader's time zone and locale (the server renders UTC as the fallback).
(function () {
  "use strict";
  var KEY = "cloudsession-theme";
  var root = document.documentElement;

  function stored() {
    try {
      var value = localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : null;
    } catch (e) {
      return null;
    }
  }

  function current() {
    var chosen = root.getAttribute("data-theme");
    if (chosen) return chosen;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  var initial = stored();
  if (initial) root.setAttribute("data-theme", initial);

  function label(button) {
    var next = current() === "dark" ? "light" : "dark";
    button.textContent = next === "dark" ? "Dark" : "Light";
    button.setAttribute("aria-label", "Switch to the " + next + " theme");
    button.title = "Switch to the " + next + " theme";
  }

  var timeFormat = null;
  function localise(scope) {
    if (!window.Intl || !Intl.DateTimeFormat) return;
    if (!timeFormat) {
      timeFormat = new Intl.DateTimeFormat(undefined, {
        year: "numeric", month: "short", day: "numeric", hour: "numeric", minute: "2-digit", second: "2-digit",
      });
    }
    (scope || document).querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.hasAttribute("data-local")) return;
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      if (!el.title) el.title = el.getAttribute("datetime");
      el.textContent = timeFormat.format(when);
      el.setAttribute("data-local", "");
    });
  }
  window.cloudsessionLocalise = localise;

  document.addEventListener("DOMContentLoaded", function () {
    localise(document);
    var button = document.getElementById("theme-toggle");
    if (!button) return;
    button.hidden = false;
    label(button);
    button.addEventListener("click", function () {
      var next = current() === "dark" ? "light" : "dark";
      root.setAttribute("data-theme", next);
      try {
        localStorage.setItem(KEY, next);
      } catch (e) {
        /* private mode: the choice lasts for this page only */
      }
      label(button);
    });
  });
})();
