/*
 * The task board page (namespaces/board/templates/board.html), on sbio.js.
 *
 * - connects to /board, sending the login token (if any) in the handshake;
 * - after a login subscribes to "boards", "stats" and "cards" of the open
 *   board: the server pushes every change, so the page never polls;
 * - shows the connection status; sbio.js reconnects and resubscribes by
 *   itself, and onConnect re-joins the open board's room.
 */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var TOKEN_KEY = "sbio-board-token";

  var token = sessionStorage.getItem(TOKEN_KEY);
  var user = null;
  var columns = [];
  var boards = [];
  var current = null;      // the open board's name
  var cardsSub = null;     // the id of its "cards" subscription
  var subscribed = false;  // "boards" and "stats" subscribed?

  // -- the connection ------------------------------------------------------------

  var conn = sbio.connect("/board", {
    // A function: called on every (re)connect, so it sends the latest token.
    auth: function (cb) { cb(token ? { token: token } : {}); },
    // Runs on every connect and reconnect, before subscriptions are re-sent.
    onConnect: async function (c) {
      var who = await c.call("whoami");
      if (who && current) await c.call("open_board", current);   // rooms are per connection
      loggedIn(who);
    },
  });

  var STATUS_TEXT = { connecting: "connecting…", open: "live", closed: "offline" };
  conn.on("status", function (s) {
    var el = $("status");
    el.textContent = STATUS_TEXT[s] || s;
    el.className = "status status-" + s;
    $("reconnect").hidden = s !== "closed";   // sbio.js retries by itself unless the server
  });                                         // ended the connection on purpose
  $("reconnect").addEventListener("click", function () { conn.connect(); });
  conn.on("error", function (err) { showError(err.message || err.code); });
  conn.on("activity", function (a) { addActivity((a.own ? "you" : a.user) + " " + a.text); });

  function subscribeAll() {
    if (subscribed) {
      conn.resubscribe();   // logged in again: fetch everything afresh
      return;
    }
    subscribed = true;
    conn.subscribe("boards", [], renderBoards, { onError: subscriptionError });
    conn.subscribe("stats", [], renderStats, { onError: subscriptionError });
  }

  function subscriptionError(err) {
    if (err.code === "forbidden") return;   // logged out meanwhile: the login form shows
    showError(err.message || err.code);
  }

  // -- logging in and out ---------------------------------------------------------

  function loggedIn(who) {
    user = who || null;
    $("loading").hidden = true;
    $("login-view").hidden = !!user;
    $("board-view").hidden = !user;
    $("me").hidden = $("logout").hidden = !user;
    $("me").textContent = user ? "Logged in as " + user : "";
    if (user) subscribeAll();
    else $("username").focus();
  }

  $("login-form").addEventListener("submit", async function (e) {
    e.preventDefault();
    var error = $("login-error");
    error.hidden = true;
    try {
      var me = await conn.call("login", $("username").value.trim(), $("password").value);
      token = me.token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("password").value = "";
      loggedIn(me.user);
      if (current) run(conn.call("open_board", current));   // logging out left its room
    } catch (err) {
      error.textContent = err.code === "bad_credentials" ? err.message : "Cannot log in: " + err.message;
      error.hidden = false;
    }
  });

  $("logout").addEventListener("click", function () {
    run(conn.call("logout", token || ""));
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    loggedIn(null);
  });

  // -- boards ------------------------------------------------------------------------

  function renderBoards(data) {
    columns = data.columns;
    boards = data.boards;
    var list = $("boards");
    list.replaceChildren();
    boards.forEach(function (b) {
      var a = element("a", { href: "#" + b.name, className: b.name === current ? "active" : "" }, b.name);
      a.appendChild(element("span", { className: "count" }, String(b.cards)));
      list.appendChild(element("li", {}, a));
    });
    var wanted = location.hash.slice(1);
    if (!current || !boards.some(function (b) { return b.name === current; })) {
      var names = boards.map(function (b) { return b.name; });
      openBoard(names.indexOf(wanted) >= 0 ? wanted : names[0]);
    }
  }

  window.addEventListener("hashchange", function () {
    var name = location.hash.slice(1);
    if (name && name !== current && boards.some(function (b) { return b.name === name; })) openBoard(name);
  });

  function openBoard(name) {
    if (!name) return;
    current = name;
    $("board-title").textContent = name;
    Array.prototype.forEach.call($("boards").querySelectorAll("a"), function (a) {
      a.className = a.getAttribute("href") === "#" + name ? "active" : "";
    });
    if (location.hash.slice(1) !== name) history.replaceState(null, "", "#" + name);
    $("activity").replaceChildren(element("li", { className: "muted" }, "Nothing yet."));
    run(conn.call("open_board", name));
    if (cardsSub) conn.unsubscribe(cardsSub);
    $("columns").replaceChildren();
    cardsSub = conn.subscribe("cards", [name], renderCards, { onError: subscriptionError });
  }

  $("board-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = $("board-name");
    run(conn.call("add_board", input.value).then(function (name) {
      input.value = "";
      openBoard(name);
    }));
  });

  // -- cards ------------------------------------------------------------------------

  function renderCards(cards) {
    var box = $("columns");
    box.replaceChildren();
    columns.forEach(function (column, i) {
      var mine = cards.filter(function (c) { return c.column === column; });
      var list = element("ul", { className: "cards" });
      mine.forEach(function (card) { list.appendChild(renderCard(card, i)); });
      if (!mine.length) list.appendChild(element("li", { className: "empty" }, "No cards"));
      var head = element("h2", {}, column);
      head.appendChild(element("span", { className: "count" }, String(mine.length)));
      box.appendChild(element("div", { className: "column", "data-column": column }, head, list));
    });
  }

  function renderCard(card, i) {
    var actions = element("div", { className: "actions" });
    if (i > 0) actions.appendChild(button("←", "Move to " + columns[i - 1], function () { move(card, columns[i - 1]); }));
    if (i < columns.length - 1) actions.appendChild(button("→", "Move to " + columns[i + 1], function () { move(card, columns[i + 1]); }));
    actions.appendChild(button("✕", "Delete", function () { run(conn.call("delete_card", current, card.id)); }));
    return element("li", { className: "card", "data-id": card.id },
      element("div", { className: "card-title" }, card.title),
      element("div", { className: "card-meta" }, "by " + card.author + " · " + time(card.created)),
      actions);
  }

  function move(card, column) { run(conn.call("move_card", current, card.id, column)); }

  $("card-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = $("card-title");
    run(conn.call("add_card", current, input.value).then(function () { input.value = ""; }));
  });

  // -- activity and statistics -------------------------------------------------

  function addActivity(text) {
    var list = $("activity");
    var empty = list.querySelector(".muted");
    if (empty) empty.remove();
    list.prepend(element("li", {}, element("time", {}, time(new Date().toISOString())), " " + text));
    while (list.children.length > 6) list.lastChild.remove();
  }

  function renderStats(s) {       // pushed whenever they change
    var cards = s.cards.map(function (c) { return c[0] + " " + c[1]; }).join(" · ");
    $("stats").textContent = "Online: " + (s.online.join(", ") || "nobody") + "  —  " + s.boards +
      " boards, cards: " + cards + "  —  as of " + time(new Date().toISOString());
  }

  // -- helpers -------------------------------------------------------------------

  function run(promise) { promise.catch(function (err) { showError(err.message || err.code); }); }

  var errorTimer = null;
  function showError(text) {
    var el = $("error");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(function () { el.hidden = true; }, 6000);
  }

  function time(iso) {
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function button(text, title, onclick) {
    var b = element("button", { type: "button", title: title, className: "icon" }, text);
    b.setAttribute("aria-label", title);
    b.addEventListener("click", onclick);
    return b;
  }

  function element(tag, attrs) {
    var el = document.createElement(tag);
    Object.keys(attrs).forEach(function (k) {
      if (k === "className") el.className = attrs[k];
      else el.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      el.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return el;
  }
})();
