// Live updates for the share page (served by cloudsession; see docs/views.md).
//
// The page is complete without this script. With it, the page listens on /ws/<id>?format=events
// and, for every sync, fetches rendered fragments of just the messages that changed from
// /share/<id>/fragments, then swaps them in place: no reload, the reader's scroll position and
// opened sections are kept. After a disconnect it reconnects with backoff and catches up by
// comparing content hashes of the messages on this page.
(function () {
  "use strict";

  var body = document.body;
  var shareId = body.getAttribute("data-share-id");
  if (!shareId) return;

  // Start-up work waits until the first frame is on screen: the page reads complete without this
  // script, so nothing optional (diff marks, the navigator, find, the live socket, laying out
  // every message) may hold back the first paint. A page parsed in one go would otherwise run all
  // of it between parsing and painting. A hidden tab (opened in the background) has no frames to
  // wait for, and would otherwise stay offline until shown.
  function afterFirstFrame(work) {
    if (document.visibilityState === "hidden") setTimeout(work, 0);
    else afterFrame(work);
  }

  // Runs work once the next frame has been rendered (in a background tab, once it is shown).
  function afterFrame(work) {
    requestAnimationFrame(function () {
      setTimeout(work, 0);
    });
  }

  // Messages are laid out only near the viewport (app.css, "Long pages"), with an estimated size
  // until they have been laid out once. A scroll to a target (a link to a message, find, the
  // latest) needs true sizes above it, so the first one lays the whole page out (rememberSizes);
  // a reader who only scrolls never needs it: the browser's scroll anchoring keeps the place when
  // a message above turns out taller or shorter than its estimate. A browser without scroll
  // anchoring (Safari) is laid out at start-up instead (toTarget).
  var sizing = 0; // how many times the page has been laid out whole; sizes are true once it has
  var anchoring = !!(window.CSS && CSS.supports && CSS.supports("overflow-anchor", "auto"));

  // Lay every message out once so that each remembers its true size, then let off-screen ones be
  // skipped again once a rendered frame has recorded the sizes; then() runs while everything is
  // laid out. Only the latest call lets go: an earlier one's frame may have come before the
  // change the latest one measures.
  function rememberSizes(then) {
    var root = document.documentElement;
    var mine = ++sizing;
    root.classList.add("laid-out");
    if (then) then();
    afterFrame(function () {
      if (mine === sizing) root.classList.remove("laid-out");
    });
  }

  function withSizes(then) {
    if (sizing) then();
    else rememberSizes(then);
  }

  // Once sizes are known, a change that alters heights off screen (a new width, the other diff
  // view) has them measured again, keeping the reader's place.
  function sizesChange(change) {
    if (!change && !sizing) return;
    keepScroll(function () {
      if (change) change();
      if (sizing) rememberSizes();
    });
  }

  // The element the address's #fragment names, if any (a malformed escape names none).
  function hashTarget() {
    try {
      return location.hash ? decodeURIComponent(location.hash.slice(1)) : "";
    } catch (e) {
      return "";
    }
  }

  var page = parseInt(body.getAttribute("data-page"), 10) || 1;
  var syncCount = parseInt(body.getAttribute("data-sync-count"), 10) || 0;
  var base = "/share/" + encodeURIComponent(shareId);
  // A private share's read token arrives in the link (?token=); every request of the page
  // must carry it on, or the share answers 404 (docs/protocol.md).
  var readToken = new URLSearchParams(location.search).get("token");
  var pending = { ids: new Set(), header: false, diffs: false, digest: false };
  var inflight = false;
  var timer = null;
  var retries = 0;
  var stopped = false;
  var socket = null;

  function byId(id) {
    return document.getElementById(id);
  }

  function setStatus(text, kind) {
    var el = byId("live-status");
    if (!el) return;
    el.hidden = false;
    el.textContent = text;
    el.className = "live-status " + kind;
  }

  function banner(id, text, link, kind) {
    var el = byId(id);
    if (!el) return;
    el.textContent = text;
    if (link) {
      var a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      el.appendChild(document.createTextNode(" "));
      el.appendChild(a);
    }
    el.className = "banner" + (kind ? " " + kind : "");
    el.hidden = false;
  }

  // Server-rendered, sanitised HTML to a node (a <template> keeps it inert while parsing).
  function fromHtml(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  // Carry the open/closed state of <details data-k> from the old element to its replacement.
  function keepOpen(oldEl, newEl) {
    var state = {};
    oldEl.querySelectorAll("details[data-k]").forEach(function (d) {
      state[d.getAttribute("data-k")] = d.open;
    });
    newEl.querySelectorAll("details[data-k]").forEach(function (d) {
      var key = d.getAttribute("data-k");
      if (Object.prototype.hasOwnProperty.call(state, key)) d.open = state[key];
    });
  }

  function replaceEl(oldEl, html) {
    if (!oldEl) return;
    var fresh = fromHtml(html);
    if (!fresh) return;
    keepOpen(oldEl, fresh);
    if (oldEl.id === "share-header") {
      // The live indicator lives in the header; keep its current text.
      var oldStatus = byId("live-status");
      var newStatus = fresh.querySelector("#live-status");
      if (oldStatus && newStatus) newStatus.replaceWith(oldStatus);
    }
    oldEl.replaceWith(fresh);
    localise(fresh);
    applyDiffMode(fresh);
    return fresh;
  }

  function localise(el) {
    if (window.cloudsessionLocalise && el) window.cloudsessionLocalise(el);
  }

  // Run a DOM change without moving what the reader is looking at: the first message visible
  // at the top keeps its position; a reader at the very bottom stays at the bottom (following).
  function keepScroll(change) {
    var doc = document.documentElement;
    var following = window.innerHeight + window.scrollY >= doc.scrollHeight - 40 && window.scrollY > 0;
    var anchorId = null;
    var anchorTop = 0;
    var candidates = document.querySelectorAll("#messages > article, #diffs");
    for (var i = 0; i < candidates.length; i++) {
      var rect = candidates[i].getBoundingClientRect();
      if (rect.bottom > 0) {
        anchorId = candidates[i].id;
        anchorTop = rect.top;
        break;
      }
    }
    change();
    if (following) {
      window.scrollTo(0, doc.scrollHeight);
    } else if (anchorId && window.scrollY > 0) {
      var anchor = byId(anchorId);
      if (anchor) {
        var delta = anchor.getBoundingClientRect().top - anchorTop;
        if (delta) window.scrollBy(0, delta);
      }
    }
  }

  function navList() {
    return byId("nav-list");
  }

  // The navigator holds every message of the pages near this one (li[data-id], in order by
  // data-n) and links standing for the other pages (li.nav-more[data-from][data-to]).
  function navMore(n) {
    var list = navList();
    var found = null;
    if (list) list.querySelectorAll("li.nav-more").forEach(function (li) {
      if (+li.getAttribute("data-from") <= n && n <= +li.getAttribute("data-to")) found = li;
    });
    return found;
  }

  function lastNavPage() {
    var list = navList();
    var last = list && list.lastElementChild;
    if (!last) return 0;
    return +(last.getAttribute("data-to") || last.getAttribute("data-p") || 0);
  }

  function applyNav(m) {
    var list = navList();
    if (!list || !m.nav) return;
    var existing = list.querySelector('li[data-id="' + CSS.escape(m.id) + '"]');
    if (existing) {
      existing.replaceWith(fromHtml(m.nav));
      return;
    }
    if (navMore(m.page)) return; // that page is a link: its entries are fetched when shown
    if (m.page > lastNavPage() + 1 || (m.page > page + 1 && !list.querySelector('li[data-p="' + m.page + '"]'))) {
      // A new page far from this one: a link to it, like the server renders.
      var more = document.createElement("li");
      more.className = "nav-more";
      more.setAttribute("data-from", String(m.page));
      more.setAttribute("data-to", String(m.page));
      var a = document.createElement("a");
      a.href = pageUrl(m.page);
      a.textContent = "Page " + m.page;
      more.appendChild(a);
      list.appendChild(more);
      watchMore(more);
      return;
    }
    var item = fromHtml(m.nav);
    var at = null;
    for (var li = list.firstElementChild; li; li = li.nextElementSibling) {
      var n = li.getAttribute("data-n");
      if (n !== null ? +n > m.number : +li.getAttribute("data-from") > m.page) {
        at = li;
        break;
      }
    }
    list.insertBefore(item, at);
  }

  // Links standing for other pages are expanded into their prompts when they come into view
  // (at most a few pages per request; the server answers with a link for the rest).
  var moreObserver = "IntersectionObserver" in window ? new IntersectionObserver(function (seen) {
    seen.forEach(function (entry) {
      if (entry.isIntersecting) expandMore(entry.target);
    });
  }) : null;

  function watchMore(li) {
    if (moreObserver) moreObserver.observe(li);
  }

  function expandMore(li) {
    if (li.getAttribute("data-loading")) return;
    li.setAttribute("data-loading", "1");
    if (moreObserver) moreObserver.unobserve(li);
    var params = new URLSearchParams({ from: li.getAttribute("data-from"), to: li.getAttribute("data-to"), page: String(page) });
    if (readToken) params.set("token", readToken);
    fetch(base + "/nav?" + params.toString(), { headers: { Accept: "application/json" } })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (data) {
        if (!data || typeof data.html !== "string" || !li.parentNode) return;
        var holder = document.createElement("template");
        holder.innerHTML = data.html;
        var added = Array.prototype.slice.call(holder.content.children);
        li.replaceWith(holder.content);
        added.forEach(function (el) {
          if (el.classList.contains("nav-more")) watchMore(el);
        });
        scheduleTrack();
      })
      .catch(function () {
        li.removeAttribute("data-loading");
        watchMore(li);
      });
  }

  function watchAllMore() {
    var list = navList();
    if (list) list.querySelectorAll("li.nav-more").forEach(watchMore);
  }

  // A message a live update adds or changes is laid out whole (app.css, "Long pages") until a
  // rendered frame has recorded its size: it has none yet, and a reader following at the bottom
  // must see all of it.
  function markLive(el) {
    if (!el) return el;
    el.classList.add("live");
    afterFrame(function () { el.classList.remove("live"); });
    return el;
  }

  function applyMessage(m) {
    applyNav(m);
    var el = byId("msg-" + m.id);
    if (m.page !== page || !m.html) {
      if (!el && m.page > page) {
        var latest = "?page=last" + (readToken ? "&token=" + encodeURIComponent(readToken) : "");
        banner("new-below", "New messages on later pages.", { href: latest, text: "Go to the latest" });
      }
      return;
    }
    if (el) {
      if (el.getAttribute("data-hash") !== m.hash) markLive(replaceEl(el, m.html));
      return;
    }
    var fresh = markLive(fromHtml(m.html));
    var list = byId("messages");
    var before = m.before ? byId("msg-" + m.before) : null;
    if (before) list.insertBefore(fresh, before);
    else list.appendChild(fresh);
    fresh.classList.add("flash");
    localise(fresh);
    applyDiffMode(fresh);
    var waiting = byId("waiting");
    if (waiting) waiting.remove();
  }

  function apply(data) {
    keepScroll(function () {
      if (typeof data.header === "string") replaceEl(byId("share-header"), data.header);
      if (typeof data.diffs === "string") replaceEl(byId("diffs"), data.diffs);
      if (typeof data.nav === "string" && data.nav) {
        // A catch-up: the navigator as the server has it now.
        var list = navList();
        if (list) {
          list.innerHTML = data.nav;
          watchAllMore();
        }
      }
      (data.messages || []).forEach(applyMessage);
      // A revert hides that message and every later one: drop them from the page.
      (Array.isArray(data.hidden) ? data.hidden : []).forEach(function (id) {
        var el = byId("msg-" + id);
        if (el) el.remove();
        var list = navList();
        var item = list && list.querySelector('li[data-id="' + CSS.escape(id) + '"]');
        if (item) item.remove();
      });
    });
    scheduleTrack();
    var count = byId("nav-count");
    var shown = navList();
    if (count && typeof data.messageCount === "number") count.textContent = String(data.messageCount);
    // Messages that came back (a revert undone) are not named by any sync event: when this
    // page's entries in the navigator disagree with the server's count, catch up once.
    if (typeof data.pageCount === "number" && !Array.isArray(data.digest) &&
        document.querySelectorAll("#messages > article").length !== data.pageCount) {
      catchUp();
    }
    if (Array.isArray(data.digest)) {
      // Catch-up: anything on this page whose content hash differs (or is absent) is refetched.
      data.digest.forEach(function (d) {
        var el = byId("msg-" + d.id);
        if (!el || el.getAttribute("data-hash") !== d.hash) pending.ids.add(d.id);
      });
    }
    if (typeof data.pages === "number") body.setAttribute("data-pages", String(data.pages));
    updateJump();
    if (typeof data.syncCount === "number") syncCount = data.syncCount;
    body.setAttribute("data-sync-count", String(syncCount));
  }

  function schedule(delay) {
    if (timer || inflight || stopped) return;
    timer = setTimeout(flush, delay);
  }

  function requeue(ids, want) {
    ids.forEach(function (id) { pending.ids.add(id); });
    pending.header = pending.header || want.header;
    pending.diffs = pending.diffs || want.diffs;
    pending.digest = pending.digest || want.digest;
  }

  function flush() {
    timer = null;
    if (inflight || stopped) return;
    var want = { header: pending.header, diffs: pending.diffs, digest: pending.digest };
    pending.header = pending.diffs = pending.digest = false;
    var params = new URLSearchParams({ page: String(page) });
    if (readToken) params.set("token", readToken);
    // At most 200 ids, and a URL well under the server's 8 KB request-line limit; the rest
    // go in the next request.
    var ids = [];
    var length = 0;
    pending.ids.forEach(function (id) {
      var cost = encodeURIComponent(id).length + 4;
      if (ids.length < 200 && (length + cost <= 6000 || !ids.length)) {
        ids.push(id);
        length += cost;
      }
    });
    ids.forEach(function (id) {
      pending.ids.delete(id);
      params.append("id", id);
    });
    if (!ids.length && !want.header && !want.diffs && !want.digest) return;

    if (want.header) params.set("header", "1");
    if (want.diffs) params.set("diffs", "1");
    if (want.digest) {
      params.set("digest", "1");
      params.set("nav", "1");
    }
    inflight = true;
    fetch(base + "/fragments?" + params.toString(), { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (res) {
        if (res.status === 404) {
          gone();
          return null;
        }
        if (res.status >= 400 && res.status < 500) return null; // a bad request is not retried
        if (!res.ok) throw new Error("HTTP " + res.status);
        return res.json();
      })
      .then(function (data) {
        inflight = false;
        if (data) apply(data);
        if (pending.ids.size || pending.header || pending.diffs || pending.digest) schedule(0);
      })
      .catch(function () {
        inflight = false;
        requeue(ids, want);
        setTimeout(function () { schedule(0); }, 2000);
      });
  }

  function catchUp() {
    pending.digest = pending.header = pending.diffs = true;
    schedule(0);
  }

  function handle(event) {
    if (event.type === "hello") {
      if (event.syncCount !== syncCount) catchUp();
    } else if (event.type === "sync") {
      (event.messages || []).forEach(function (id) { pending.ids.add(id); });
      pending.header = true; // counts, times and the sync count change with every sync
      if (event.diffs) pending.diffs = true;
      schedule(30);
    } else if (event.type === "resync") {
      catchUp();
    } else if (event.type === "deleted") {
      gone();
    }
  }

  function gone() {
    if (stopped) return;
    stopped = true;
    if (socket) socket.close();
    setStatus("deleted", "down");
    banner("live-banner", "This share has been deleted. What you see is the last version shown.", null, "gone");
  }

  function reconnectLater() {
    if (stopped) return;
    // 1 s, 2 s, 4 s ... capped at 30 s, with jitter so viewers do not reconnect in lockstep.
    var delay = Math.min(30000, 1000 * Math.pow(2, retries)) * (0.5 + Math.random() / 2);
    retries += 1;
    setTimeout(connect, delay);
  }

  function connect() {
    if (stopped) return;
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var url = scheme + "//" + location.host + "/ws/" + encodeURIComponent(shareId) + "?format=events";
    if (readToken) url += "&token=" + encodeURIComponent(readToken);
    try {
      socket = new WebSocket(url);
    } catch (e) {
      reconnectLater();
      return;
    }
    socket.onopen = function () {
      retries = 0;
      setStatus("live", "ok");
      updateJump();
    };
    socket.onmessage = function (message) {
      var event;
      try {
        event = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (event && typeof event.type === "string") handle(event);
    };
    socket.onclose = function (closeEvent) {
      socket = null;
      updateJump();
      if (closeEvent.code === 4404) {
        gone();
        return;
      }
      setStatus("reconnecting…", "down");
      // While disconnected, one fetch tells whether the share still exists and catches up.
      catchUp();
      reconnectLater();
    };
  }

  // A link to #msg-<id> or #part-<id> of something on another page: the navigator knows the
  // page of the messages near this one; for anything else the server is asked (one small
  // request, never the whole share).
  function followHash() {
    var hash = hashTarget();
    if (!/^(msg|part)-./.test(hash) || byId(hash)) return;
    var list = navList();
    var item = hash.indexOf("msg-") === 0 && list && list.querySelector('li[data-id="' + CSS.escape(hash.slice(4)) + '"]');
    if (item) {
      go(parseInt(item.getAttribute("data-p"), 10));
      return;
    }
    var params = new URLSearchParams({ anchor: hash });
    if (readToken) params.set("token", readToken);
    fetch(base + "/locate?" + params.toString(), { headers: { Accept: "application/json" } })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (data) { if (data && typeof data.page === "number") go(data.page); })
      .catch(function () {});

    function go(target) {
      if (target && target !== page) location.href = pageUrl(target) + "#" + encodeURIComponent(hash);
    }
  }

  // The navigator is a side column on wide screens and a drawer on narrow ones (the toggle in
  // the top bar; without JavaScript the drawer opens as the #navigator target).
  function setDrawer(open) {
    body.classList.toggle("nav-open", open);
    var toggle = byId("nav-toggle");
    if (toggle) toggle.setAttribute("aria-expanded", open ? "true" : "false");
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) return;
    if (target.closest("#nav-toggle")) {
      event.preventDefault();
      setDrawer(!body.classList.contains("nav-open"));
    } else if (target.closest("#nav-close")) {
      event.preventDefault();
      setDrawer(false);
    } else if (target.closest("#nav-list a")) {
      setDrawer(false);
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") setDrawer(false);
  });

  function pageUrl(n) {
    var params = new URLSearchParams({ page: String(n) });
    if (readToken) params.set("token", readToken);
    return "?" + params.toString();
  }

  // The navigator follows the reader: the prompt of the turn at the top of the viewport is
  // marked current and kept in view inside the navigator (never scrolling the page itself).
  var tracking = false;
  function trackTurn() {
    tracking = false;
    var articles = document.querySelectorAll("#messages > article");
    var top = null;
    for (var i = 0; i < articles.length; i++) {
      if (articles[i].getBoundingClientRect().bottom > 80) {
        top = articles[i];
        break;
      }
    }
    var list = navList();
    if (!top || !list) return;
    // The turn of the message at the top: the last prompt at or before it.
    var number = +top.getAttribute("data-n");
    var item = null;
    list.querySelectorAll("li.nav-user").forEach(function (li) {
      if (+li.getAttribute("data-n") <= number) item = li;
    });
    list.querySelectorAll("li.current").forEach(function (li) {
      if (li !== item) li.classList.remove("current");
    });
    if (!item || item.classList.contains("current")) return;
    item.classList.add("current");
    var box = byId("navigator");
    if (box && box.scrollHeight > box.clientHeight) {
      var itemTop = item.getBoundingClientRect().top - box.getBoundingClientRect().top + box.scrollTop;
      if (itemTop < box.scrollTop + 40 || itemTop > box.scrollTop + box.clientHeight - 40) {
        box.scrollTop = Math.max(0, itemTop - box.clientHeight / 3);
      }
    }
  }
  function scheduleTrack() {
    if (tracking) return;
    tracking = true;
    requestAnimationFrame(trackTurn);
  }
  window.addEventListener("scroll", scheduleTrack, { passive: true });
  window.addEventListener("resize", scheduleTrack);

  // ------------------------------------------------------------------ search within the page
  // Matches are marked with the CSS Custom Highlight API: no element is added to the page, so
  // live updates and the reader's selection are untouched. Collapsed sections are searched too
  // and opened when a match inside them is shown.
  var find = { ranges: [], index: -1, query: "" };
  var MAX_MATCHES = 5000;

  function findScopes() {
    return [byId("messages"), byId("diffs")].filter(Boolean);
  }

  function runFind(query) {
    find.query = query;
    find.ranges = [];
    find.index = -1;
    var needle = query.toLowerCase();
    if (needle.length >= 2) {
      findScopes().forEach(function (scope) {
        var walker = document.createTreeWalker(scope, NodeFilter.SHOW_TEXT);
        var node;
        while ((node = walker.nextNode()) && find.ranges.length < MAX_MATCHES) {
          var hay = node.nodeValue.toLowerCase();
          var at = hay.indexOf(needle);
          while (at !== -1 && find.ranges.length < MAX_MATCHES) {
            var range = document.createRange();
            range.setStart(node, at);
            range.setEnd(node, at + needle.length);
            find.ranges.push(range);
            at = hay.indexOf(needle, at + needle.length);
          }
        }
      });
    }
    if (window.CSS && CSS.highlights && window.Highlight) {
      CSS.highlights.set("find", new Highlight(...find.ranges));
      CSS.highlights.delete("find-current");
    }
    showCount();
    findElsewhere(query);
  }

  // Other pages: the server counts matches across the whole share; each page with matches
  // links to its first match and carries the query on (?find=), where the search runs again.
  var elsewhereSeq = 0;
  function findElsewhere(query) {
    var box = byId("find-elsewhere");
    var pages = parseInt(body.getAttribute("data-pages"), 10) || 1;
    if (!box) return;
    box.textContent = "";
    if (pages < 2 || query.length < 2) return;
    var seq = ++elsewhereSeq;
    var params = new URLSearchParams({ q: query });
    if (readToken) params.set("token", readToken);
    fetch(base + "/search?" + params.toString(), { headers: { Accept: "application/json" } })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (data) {
        if (!data || seq !== elsewhereSeq) return;
        var others = data.pages.filter(function (p) { return p.page !== page; });
        if (!others.length) return;
        box.appendChild(document.createTextNode("other pages: "));
        others.slice(0, 12).forEach(function (p, i) {
          var first = data.hits.filter(function (h) { return h.page === p.page; })[0];
          var link = document.createElement("a");
          var url = new URLSearchParams({ page: String(p.page), find: query });
          if (readToken) url.set("token", readToken);
          link.href = "?" + url.toString() + (first ? "#msg-" + encodeURIComponent(first.id) : "");
          link.textContent = p.page + " (" + p.count + ")";
          link.className = "find-page";
          if (i) box.appendChild(document.createTextNode(" "));
          box.appendChild(link);
        });
      })
      .catch(function () {});
  }

  function showCount() {
    var count = byId("find-count");
    if (!count) return;
    var n = find.ranges.length;
    if (!find.query || find.query.length < 2) count.textContent = "";
    else if (!n) count.textContent = "no matches";
    else {
      var total = (n >= MAX_MATCHES ? n + "+" : String(n)) + (n === 1 ? " match" : " matches");
      count.textContent = find.index >= 0 ? find.index + 1 + " of " + total : total;
    }
  }

  function step(delta) {
    if (!find.ranges.length) return;
    find.index = (find.index + delta + find.ranges.length) % find.ranges.length;
    var range = find.ranges[find.index];
    var el = range.startContainer.parentElement;
    for (var d = el && el.closest("details"); d; d = d.parentElement && d.parentElement.closest("details")) d.open = true;
    if (window.CSS && CSS.highlights && window.Highlight) CSS.highlights.set("find-current", new Highlight(range));
    withSizes(function () {
      var rect = range.getBoundingClientRect();
      if (rect.top < 80 || rect.bottom > window.innerHeight - 40) window.scrollBy(0, rect.top - window.innerHeight / 3);
    });
    showCount();
  }

  function setupFind() {
    var form = byId("find");
    var input = byId("find-input");
    if (!form || !input) return;
    form.hidden = false;
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { runFind(input.value.trim()); }, 150);
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (input.value.trim() !== find.query) runFind(input.value.trim());
      step(1);
    });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && event.shiftKey) {
        event.preventDefault();
        step(-1);
      } else if (event.key === "Escape") {
        input.value = "";
        runFind("");
      }
    });
    var initial = new URLSearchParams(location.search).get("find");
    if (initial) {
      input.value = initial.slice(0, 200);
      runFind(input.value.trim());
    }
    var prev = byId("find-prev");
    var next = byId("find-next");
    if (prev) prev.addEventListener("click", function () { step(-1); });
    if (next) next.addEventListener("click", function () { step(1); });
    document.addEventListener("keydown", function (event) {
      if (event.key === "/" && document.activeElement === document.body) {
        event.preventDefault();
        input.focus();
      }
    });
  }

  // ------------------------------------------------------------------ copy buttons
  // One floating button serves every code block, command and output ("Copy") and every message
  // and part ("Copy link": a deep link that names the page, so it works from anywhere).
  var copyButton = null;
  var copyTarget = null;

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    try {
      document.execCommand("copy");
    } finally {
      area.remove();
    }
    return Promise.resolve();
  }

  function codeText(pre) {
    var text = pre.textContent;
    var more = pre.nextElementSibling;
    if (more && more.matches("details.more")) {
      var rest = more.querySelector("pre");
      if (rest) text += "\n" + rest.textContent;
    }
    if (pre.classList.contains("cont")) {
      var head = pre.closest("details.more");
      head = head && head.previousElementSibling;
      if (head && head.tagName === "PRE") return codeText(head);
    }
    return text;
  }

  function deepLink(el) {
    var params = new URLSearchParams({ page: String(page) });
    if (readToken) params.set("token", readToken);
    return location.origin + location.pathname + "?" + params.toString() + "#" + el.id;
  }

  function placeCopy(target, label) {
    if (!copyButton) {
      copyButton = document.createElement("button");
      copyButton.type = "button";
      copyButton.id = "copy-button";
      copyButton.className = "copy-button";
      copyButton.addEventListener("click", function (event) {
        event.preventDefault();
        if (!copyTarget) return;
        var text = copyTarget.tagName === "PRE" ? codeText(copyTarget) : deepLink(copyTarget);
        var button = copyButton;
        copyText(text).then(function () {
          button.textContent = "Copied";
          button.setAttribute("data-copied", text.length > 200 ? text.slice(0, 200) : text);
        });
      });
      document.body.appendChild(copyButton);
    }
    copyTarget = target;
    copyButton.textContent = label;
    var rect = target.getBoundingClientRect();
    copyButton.hidden = false;
    copyButton.style.top = window.scrollY + rect.top + 4 + "px";
    copyButton.style.left = Math.max(0, window.scrollX + rect.right - copyButton.offsetWidth - 6) + "px";
  }

  document.addEventListener("mouseover", function (event) {
    var target = event.target;
    if (!(target instanceof Element) || target === copyButton) return;
    var pre = target.closest("#messages pre, #diffs pre");
    var holder = pre || target.closest("#messages section.part[id], #messages article.message[id]");
    if (!holder || holder === copyTarget) return;
    placeCopy(holder, pre ? "Copy" : "Copy link");
  });

  // ------------------------------------------------------------------ jump to the latest
  function atBottom() {
    var doc = document.documentElement;
    return window.innerHeight + window.scrollY >= doc.scrollHeight - 120;
  }

  function updateJump() {
    var jump = byId("jump-latest");
    if (!jump) return;
    var live = !!(socket && socket.readyState === 1);
    var pages = parseInt(body.getAttribute("data-pages"), 10) || 1;
    jump.hidden = !live || (page >= pages && atBottom());
  }

  function setupJump() {
    var jump = byId("jump-latest");
    if (!jump) return;
    jump.addEventListener("click", function () {
      var pages = parseInt(body.getAttribute("data-pages"), 10) || 1;
      if (page < pages) {
        location.href = pageUrl("last");
        return;
      }
      var articles = document.querySelectorAll("#messages > article");
      var last = articles[articles.length - 1];
      withSizes(function () {
        if (last) window.scrollTo(0, window.scrollY + last.getBoundingClientRect().bottom - window.innerHeight + 16);
      });
      updateJump();
    });
    window.addEventListener("scroll", function () { requestAnimationFrame(updateJump); }, { passive: true });
  }

  // ------------------------------------------------------------------ code review
  // Within-line changes: the server names the changed character ranges of each paired line
  // (td[data-ch]); they are marked with highlights, over the syntax colouring, without markup.
  var marked = { del: [], add: [] };

  function textRanges(cell, spec) {
    var nodes = [];
    var walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    var node;
    while ((node = walker.nextNode())) {
      nodes.push(node);
    }
    var ranges = [];
    spec.split(" ").forEach(function (pair) {
      var bounds = pair.split("-");
      var start = parseInt(bounds[0], 10);
      var end = parseInt(bounds[1], 10);
      if (!(end > start)) return;
      var range = document.createRange();
      var seen = 0;
      var begun = false;
      for (var i = 0; i < nodes.length; i++) {
        var len = nodes[i].nodeValue.length;
        if (!begun && start < seen + len) {
          range.setStart(nodes[i], start - seen);
          begun = true;
        }
        if (begun && end <= seen + len) {
          range.setEnd(nodes[i], end - seen);
          ranges.push(range);
          return;
        }
        seen += len;
      }
    });
    return ranges;
  }

  function markDiffs() {
    if (!(window.CSS && CSS.highlights && window.Highlight)) return;
    marked = { del: [], add: [] };
    document.querySelectorAll("td[data-ch]").forEach(function (cell) {
      var kind = cell.classList.contains("d-del") || cell.parentElement.classList.contains("d-del") ? "del" : "add";
      marked[kind] = marked[kind].concat(textRanges(cell, cell.getAttribute("data-ch")));
    });
    CSS.highlights.set("diff-del", new Highlight(...marked.del));
    CSS.highlights.set("diff-add", new Highlight(...marked.add));
  }

  // Split view: built from the unified table on demand (the page itself stays unified, so it
  // reads without JavaScript); the reader's choice persists.
  var DIFF_KEY = "cloudsession-diff";
  function diffMode() {
    try {
      return localStorage.getItem(DIFF_KEY) === "split" ? "split" : "unified";
    } catch (e) {
      return "unified";
    }
  }

  function cell(cls, from) {
    var td = document.createElement("td");
    td.className = cls;
    if (from) {
      td.innerHTML = from.innerHTML;
      if (from.hasAttribute("data-ch")) td.setAttribute("data-ch", from.getAttribute("data-ch"));
    }
    return td;
  }

  function splitRow(left, right) {
    var tr = document.createElement("tr");
    var l = left ? left.cells : null;
    var r = right ? right.cells : null;
    tr.appendChild(l ? cell("ln", l[0]) : cell("ln gap"));
    var oldCode = l ? cell("dc " + left.className, l[2]) : cell("dc gap");
    tr.appendChild(oldCode);
    tr.appendChild(r ? cell("ln", r[1]) : cell("ln gap"));
    tr.appendChild(r ? cell("dc " + right.className, r[2]) : cell("dc gap"));
    return tr;
  }

  function buildSplit(table) {
    var split = document.createElement("table");
    split.className = "diff hl split";
    var rows = Array.prototype.slice.call(table.rows);
    for (var i = 0; i < rows.length; ) {
      var row = rows[i];
      if (row.classList.contains("d-hunk") || row.classList.contains("d-note")) {
        var tr = document.createElement("tr");
        tr.className = row.className;
        var td = cell("dc", row.cells[2]);
        td.colSpan = 4;
        tr.appendChild(td);
        split.appendChild(tr);
        i++;
      } else if (row.classList.contains("d-ctx")) {
        split.appendChild(splitRow(row, row));
        i++;
      } else {
        var dels = [];
        var adds = [];
        while (i < rows.length && rows[i].classList.contains("d-del")) dels.push(rows[i++]);
        while (i < rows.length && rows[i].classList.contains("d-add")) adds.push(rows[i++]);
        for (var k = 0; k < Math.max(dels.length, adds.length); k++) split.appendChild(splitRow(dels[k], adds[k]));
      }
    }
    return split;
  }

  function applyDiffMode(scope) {
    var mode = diffMode();
    document.documentElement.setAttribute("data-diff", mode);
    (scope || document).querySelectorAll(".diff-mode").forEach(function (button) {
      button.hidden = false;
      button.textContent = mode === "split" ? "Unified view" : "Split view";
    });
    if (mode === "split") {
      (scope || document).querySelectorAll("table.diff:not(.split):not(.unified-source)").forEach(function (table) {
        table.classList.add("unified-source");
        table.after(buildSplit(table));
      });
    }
    markDiffs();
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element && event.target.closest(".diff-mode");
    if (!button) return;
    event.preventDefault();
    try {
      localStorage.setItem(DIFF_KEY, diffMode() === "split" ? "unified" : "split");
    } catch (e) {
      /* private mode: this page only */
    }
    sizesChange(function () { applyDiffMode(document); });
  });

  // A new width changes the height of every message, off screen too: measured again once the
  // resizing (or zooming) has stopped.
  var sizedWidth = window.innerWidth;
  var resizing = 0;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      if (window.innerWidth === sizedWidth) return;
      sizedWidth = window.innerWidth;
      sizesChange();
    }, 200);
  });

  // Long outputs: once opened, a "show less" at their end closes them again and brings the
  // reader back to where the output starts.
  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.open) return;
    if (!details.matches("details.more, details.tool-output, details.tool-input")) return;
    if (details.querySelector(":scope > .collapse-end")) return;
    var less = document.createElement("button");
    less.type = "button";
    less.className = "collapse-end";
    less.textContent = "show less";
    less.addEventListener("click", function () {
      details.open = false;
      var top = details.parentElement.getBoundingClientRect().top;
      if (top < 0) window.scrollBy(0, top - 20);
    });
    details.appendChild(less);
  }, true);

  // Downloads of a private share need its read token, which this page has in its address.
  if (readToken) {
    document.querySelectorAll("#download-menu a").forEach(function (a) {
      a.href = a.getAttribute("href") + "?token=" + encodeURIComponent(readToken);
    });
  }

  // A message, part or diff the address's #fragment names on this page: the first time, lay the
  // page out and put it back at the top (the browser scrolled to it with estimated sizes above);
  // after that the browser's own scroll to it is right. A collapsed diff of the Changes list is
  // opened. Without scroll anchoring the first call lays the page out, target or not: a reader
  // scrolling up past estimates would see the page jump.
  function toTarget() {
    var target = hashTarget() ? byId(hashTarget()) : null;
    var placed = target && target.closest("#messages, #diffs");
    if (sizing) {
      if (placed) openDiff();
      return;
    }
    if (!placed && anchoring) return;
    rememberSizes(function () {
      if (placed) target.scrollIntoView();
      openDiff();
    });
  }

  // A file of the Changes list opens its (possibly collapsed) diff.
  function openDiff() {
    var target = /^#diff-\d+$/.test(location.hash) ? byId(location.hash.slice(1)) : null;
    if (target && target.tagName === "DETAILS" && !target.open) {
      target.open = true;
      target.scrollIntoView();
    }
  }

  window.addEventListener("hashchange", followHash);
  window.addEventListener("hashchange", toTarget);
  // Before the first frame, only what decides what it shows: a link to a message on another
  // page goes there instead of painting this one, and a reader who chose split diffs gets them
  // from the start (that cost falls on those readers only).
  followHash();
  var split = diffMode() === "split";
  if (split) applyDiffMode(document);
  afterFirstFrame(function () {
    if (!split) applyDiffMode(document);
    setupFind();
    setupJump();
    trackTurn();
    watchAllMore();
    connect();
    // A page opened at a message or a diff is laid out once (the longest piece of the start-up:
    // in a task of its own, after the rest) and put back at its target.
    setTimeout(toTarget, 0);
  });
})();
