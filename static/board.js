/*
 * The task board page (namespaces/board/templates/board.html), on sbio.js.
 *
 * - connects to /board, sending the login token (if any) in the handshake;
 * - after a login subscribes to "boards", "stats" and "cards" of the open
 *   board: the server pushes every change, so the page never polls;
 * - shows the connection status; sbio.js reconnects and resubscribes by
 *   itself, and onConnect re-joins the open board's room;
 * - an action taken while disconnected waits for the connection, and the
 *   outbox under the top bar says so at once, then what became of it.
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
    $("me-name").textContent = user || "";
    if (user) subscribeAll();
    else $("username").focus();
  }

  $("login-form").addEventListener("submit", async function (e) {
    e.preventDefault();
    // While disconnected the login waits for the connection: say so at once.
    formMessage(conn.status === "open" ? "" : "Waiting for the connection to the server…", "waiting");
    try {
      var me = await conn.call("login", $("username").value.trim(), $("password").value);
      token = me.token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("password").value = "";
      formMessage("");
      loggedIn(me.user);
      if (current) run(conn.call("open_board", current));   // logging out left its room
    } catch (err) {
      formMessage(err.code === "bad_credentials" ? err.message : "Cannot log in: " + err.message, "error");
    }
  });

  function formMessage(text, kind) {
    var el = $("login-error");
    el.textContent = text;
    el.className = "form-message " + (kind || "");
    el.hidden = !text;
  }

  $("logout").addEventListener("click", function () {
    // The page logs out once the server has: while disconnected the call waits,
    // and the reconnect logs in with the token first, so the logout revokes it.
    act("Log out", "logout", [token || ""], function () {
      token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      loggedIn(null);
    });
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
    if (conn.status === "open") run(conn.call("open_board", name));   // else onConnect does
    if (cardsSub) conn.unsubscribe(cardsSub);
    $("columns").replaceChildren();
    // delta: after the first result, a changed board arrives as a JSON Patch
    // (one moved card, not the whole list); renderCards still gets every card.
    cardsSub = conn.subscribe("cards", [name], renderCards, { onError: subscriptionError, delta: true });
  }

  $("board-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = $("board-name");
    act("Add board “" + input.value.trim() + "”", "add_board", [input.value], function (err, name) {
      if (err) return;
      input.value = "";
      openBoard(name);
    });
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
    actions.appendChild(button("✕", "Delete", function () {
      act("Delete “" + card.title + "”", "delete_card", [current, card.id]);
    }));
    return element("li", { className: "card", "data-id": card.id },
      element("div", { className: "card-title" }, card.title),
      element("div", { className: "card-meta" }, "by " + card.author + " · " + time(card.created)),
      actions);
  }

  function move(card, column) {
    act("Move “" + card.title + "” to " + column, "move_card", [current, card.id, column]);
  }

  $("card-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = $("card-title");
    var title = input.value;
    input.value = "";             // ready for the next card, even while this one waits
    act("Add card “" + title.trim() + "”", "add_card", [current, title], function (err) {
      if (err && !input.value) input.value = title;   // failed: nothing typed is lost
    });
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

  // -- actions: what the user asks the server to do -----------------------------------
  //
  // act() makes the call, then calls after(err, result). While the connection
  // is down the call waits in sbio.js (socket.io's send buffer) and goes out
  // on reconnect, if that happens within ACTION_WAIT_MS; otherwise it fails
  // without being sent. Taken while disconnected, an action shows in the
  // outbox at once, then what became of it. Other failures show in the banner.

  var ACTION_WAIT_MS = 30000;
  var OUTBOX_MAX = 6;             // notes shown at most: the oldest settled ones go first

  function act(what, event, args, after) {
    var note = conn.status === "open" ? null : outboxNote(what);
    var calls = conn.timeout(ACTION_WAIT_MS);
    calls.call.apply(calls, [event].concat(args)).then(function (result) {
      if (note) note.settle("sent", "done: sent when the connection came back.");
      if (after) after(null, result);
    }, function (err) {
      var why = failure(err);
      if (note) note.settle("failed", "failed: " + why);
      else showError(what + " failed: " + why);
      if (after) after(err);
    });
  }

  function failure(err) {
    if (err.code === "timeout" && conn.status !== "open") {
      return "not sent, the connection did not come back within " + ACTION_WAIT_MS / 1000 + " s.";
    }
    if (err.code === "closed") return "not sent, the connection is closed (Reconnect).";
    if (err.code === "disconnected") return "the connection dropped before the answer: it may or may not be done.";
    return err.message || err.code;
  }

  function outboxNote(what) {
    var state = element("span", { className: "state" }, "waiting for the connection…");
    var note = element("li", { "data-state": "waiting" },
      element("span", { className: "text" }, element("b", {}, what), " ", state));
    note.appendChild(button("✕", "Dismiss", function () { note.remove(); }));
    var box = $("outbox");
    box.appendChild(note);
    while (box.children.length > OUTBOX_MAX) {
      (box.querySelector("li:not([data-state=waiting])") || box.firstChild).remove();
    }
    return {
      settle: function (outcome, text) {
        note.setAttribute("data-state", outcome);
        state.textContent = text;
        if (outcome === "sent") setTimeout(function () { note.remove(); }, 8000);
      },
    };
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
