// Instant filtering of the visible session cards while typing (the form still searches all
// shares on the server when submitted). Served by cloudsession; no other script is needed.
(function () {
  "use strict";
  var box = document.getElementById("search");
  var cards = document.querySelectorAll("#session-list .session-card");
  if (!box || !cards.length) return;
  box.addEventListener("input", function () {
    var q = box.value.trim().toLowerCase();
    cards.forEach(function (card) {
      var text = (card.getAttribute("data-title") || "") + " " + (card.getAttribute("data-directory") || "");
      card.hidden = q !== "" && text.indexOf(q) === -1;
    });
  });
})();
