/*!
 * sbio.js — the client for sbio servers (socket.io-client v4 underneath).
 *
 * Browser: every sbio server serves this file and socket.io-client's browser
 * build; load both (in either order) and the page gets a global `sbio`:
 *   <script src="/sbio/socket.io.min.js"></script>
 *   <script src="/sbio/sbio.js"></script>
 * npm (`sbio-client`, built from static/ of the sbio repository):
 *   const sbio = require("sbio-client");     // or: import sbio from "sbio-client";
 *
 *   const conn = sbio.connect("http://127.0.0.1:8282/board");  // like io(url)
 *   // or sbio.connect("/board", { url, auth: { token } }) (url: the page's server by default)
 *   const me = await conn.call("login", "ann", "secret");
 *   const id = conn.subscribe("cards", [], (cards) => render(cards), { onError: show });
 *   conn.unsubscribe(id);
 *   conn.on("status", (s) => ...);      // "connecting" | "open" | "closed"
 *   conn.close();
 *
 * Reference: docs/js-client.md. Wire protocol: docs/protocol.md.
 */
(function (root, factory) {
  "use strict";
  if (typeof module === "object" && module && module.exports) {
    // CommonJS (Node, bundlers).
    module.exports = factory(function () {
      return require("socket.io-client");
    });
  } else if (typeof define === "function" && define.amd) {
    define(["socket.io-client"], function (io) {
      return factory(function () {
        return io;
      });
    });
  } else {
    // Browser global. socket.io-client is looked up when a connection is
    // made, so the two <script> tags may come in either order.
    root.sbio = factory(function () {
      return root.io;
    });
  }
})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this, function (loadIo) {
  "use strict";

  var VERSION = "0.1.0";

  /** scheme://host[:port] (1), path (2) and ?query (3) of a full URL given to connect(). */
  var FULL_URL = /^((?:https?|wss?):\/\/[^\/?#]+)([^?#]*)(\?[^#]*)?(?:#.*)?$/i;
  var api = {};

  /** Largest delay setTimeout accepts (about 24.8 days); used for "no timeout". */
  var MAX_TIMEOUT = 2147483647;

  /** Options sbio.js consumes itself; every other option goes to socket.io-client's io(). */
  var OWN_OPTIONS = {
    url: 1,
    auth: 1,
    callTimeout: 1,
    onConnect: 1,
    io: 1,
    autoConnect: 1,
  };

  /** Defaults handed to socket.io-client (each can be overridden in connect()'s options). */
  var SOCKET_DEFAULTS = {
    reconnection: true,
    reconnectionAttempts: Infinity,
    reconnectionDelay: 500, // first retry after ~0.5 s ...
    reconnectionDelayMax: 10000, // ... doubling up to 10 s ...
    randomizationFactor: 0.5, // ... each delay jittered by +/-50 %
    timeout: 20000, // connection (handshake) timeout
  };

  /** Event names socket.io-client refuses to emit. */
  var RESERVED_EVENTS = {
    connect: 1,
    connect_error: 1,
    disconnect: 1,
    disconnecting: 1,
    newListener: 1,
    removeListener: 1,
  };

  /** Events that conn.on() handles itself; any other name is a server event. */
  var LOCAL_EVENTS = {
    status: 1,
    error: 1,
    connect_error: 1,
    connect: 1,
    disconnect: 1,
    reconnecting: 1,
  };

  // ---------------------------------------------------------------- helpers

  /**
   * An error from sbio: `code` is machine-readable ("forbidden", "timeout",
   * an application code, ...), `message` human-readable; `data` (connect
   * refusals), `event` (sbio:error reports) and `subscription` (a failed
   * subscription's id) are set when they apply.
   */
  function SbioError(code, message, extra) {
    var self = new Error(message || code);
    Object.setPrototypeOf(self, SbioError.prototype);
    self.name = "SbioError";
    self.code = code;
    if (extra) {
      for (var k in extra) {
        if (Object.prototype.hasOwnProperty.call(extra, k) && extra[k] !== undefined) self[k] = extra[k];
      }
    }
    if (Error.captureStackTrace) Error.captureStackTrace(self, SbioError);
    return self;
  }
  SbioError.prototype = Object.create(Error.prototype, {
    constructor: { value: SbioError, writable: true, configurable: true },
  });
  Object.setPrototypeOf(SbioError, Error);

  /** An SbioError from a wire `error` object {code, message}. */
  function wireError(error, extra) {
    if (!error || typeof error !== "object") {
      return SbioError("bad_response", "malformed error from the server: " + safeJson(error), extra);
    }
    return SbioError(
      typeof error.code === "string" && error.code ? error.code : "internal",
      typeof error.message === "string" ? error.message : "",
      extra
    );
  }

  function safeJson(value) {
    try {
      return JSON.stringify(value);
    } catch (e) {
      return String(value);
    }
  }

  /** JSON with object keys sorted: two equal results encode the same. */
  function canonical(value) {
    if (value === null || typeof value !== "object") {
      var s = JSON.stringify(value);
      return s === undefined ? "null" : s;
    }
    if (Array.isArray(value)) {
      var parts = [];
      for (var i = 0; i < value.length; i++) parts.push(canonical(value[i]));
      return "[" + parts.join(",") + "]";
    }
    if (typeof value.toJSON === "function") return canonical(value.toJSON());
    var keys = Object.keys(value).sort();
    var out = [];
    for (var j = 0; j < keys.length; j++) {
      if (value[keys[j]] === undefined) continue;
      out.push(JSON.stringify(keys[j]) + ":" + canonical(value[keys[j]]));
    }
    return "{" + out.join(",") + "}";
  }

  // ---- JSON Patch (RFC 6902): the delta pushes of `delta: true` subscriptions

  /** JSON equality: the same value in JSON terms (key order does not matter). */
  function sameJson(a, b) {
    if (a === b) return a !== 0 || 1 / a === 1 / b; // 0 and -0 differ, as in Python's patches
    if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
    var arr = Array.isArray(a);
    if (arr !== Array.isArray(b)) return false;
    if (arr) {
      if (a.length !== b.length) return false;
      for (var i = 0; i < a.length; i++) if (!sameJson(a[i], b[i])) return false;
      return true;
    }
    var keys = Object.keys(a);
    if (keys.length !== Object.keys(b).length) return false;
    for (var k = 0; k < keys.length; k++) {
      if (!Object.prototype.hasOwnProperty.call(b, keys[k]) || !sameJson(a[keys[k]], b[keys[k]])) return false;
    }
    return true;
  }

  function patchError(message) {
    return SbioError("bad_patch", message);
  }

  function pointerTokens(pointer) {
    if (typeof pointer !== "string" || (pointer !== "" && pointer.charAt(0) !== "/")) {
      throw patchError("not a JSON pointer: " + safeJson(pointer));
    }
    if (pointer === "") return [];
    return pointer.slice(1).split("/").map(function (t) {
      return t.replace(/~1/g, "/").replace(/~0/g, "~");
    });
  }

  function arrayIndex(token, size, appending) {
    if (appending && token === "-") return size;
    if (!/^(0|[1-9][0-9]*)$/.test(token)) throw patchError("not an array index: " + safeJson(token));
    var index = Number(token);
    if (index > size || (index === size && !appending)) {
      throw patchError("array index " + index + " out of range (length " + size + ")");
    }
    return index;
  }

  function isContainer(v) {
    return v !== null && typeof v === "object";
  }

  function hasMember(obj, key) {
    return Object.prototype.hasOwnProperty.call(obj, key);
  }

  /**
   * `value` with the JSON Patch operations `patch` applied (all six RFC 6902
   * operations). `value` itself is not changed: the containers on the
   * changed paths are copied (once each), everything else is shared, so an
   * unchanged card keeps its identity from one result to the next.
   * Throws an SbioError with code "bad_patch" if the patch does not apply.
   */
  function applyPatch(value, patch) {
    if (!Array.isArray(patch)) throw patchError("a JSON Patch is a list of operations");
    var copies = typeof Set === "function" ? new Set() : null;
    var copied = [];
    function own(container) {
      if (!isContainer(container)) throw patchError("cannot look up a member of " + safeJson(container));
      if (copies ? copies.has(container) : copied.indexOf(container) >= 0) return container;
      var copy = Array.isArray(container) ? container.slice() : Object.assign({}, container);
      if (copies) copies.add(copy);
      else copied.push(copy);
      return copy;
    }
    var root = value;
    function parentOf(tokens) {
      var node = (root = own(root));
      for (var i = 0; i < tokens.length - 1; i++) {
        var t = tokens[i];
        if (Array.isArray(node)) {
          var idx = arrayIndex(t, node.length, false);
          node = node[idx] = own(node[idx]);
        } else {
          if (!hasMember(node, t)) throw patchError("no member " + safeJson(t));
          node = node[t] = own(node[t]);
        }
      }
      return node;
    }
    function get(tokens) {
      var node = root;
      for (var i = 0; i < tokens.length; i++) {
        var t = tokens[i];
        if (Array.isArray(node)) node = node[arrayIndex(t, node.length, false)];
        else if (isContainer(node) && hasMember(node, t)) node = node[t];
        else throw patchError("no member " + safeJson(t));
      }
      return node;
    }
    function add(tokens, v) {
      if (!tokens.length) {
        root = v;
        return;
      }
      var parent = parentOf(tokens);
      var t = tokens[tokens.length - 1];
      if (Array.isArray(parent)) parent.splice(arrayIndex(t, parent.length, true), 0, v);
      else parent[t] = v;
    }
    function remove(tokens) {
      if (!tokens.length) throw patchError("cannot remove the whole document");
      var parent = parentOf(tokens);
      var t = tokens[tokens.length - 1];
      if (Array.isArray(parent)) return parent.splice(arrayIndex(t, parent.length, false), 1)[0];
      if (!hasMember(parent, t)) throw patchError("no member " + safeJson(t) + " to remove");
      var old = parent[t];
      delete parent[t];
      return old;
    }
    for (var i = 0; i < patch.length; i++) {
      var op = patch[i];
      if (!isContainer(op) || Array.isArray(op)) throw patchError("a JSON Patch operation is an object");
      var tokens = pointerTokens(op.path);
      if ((op.op === "add" || op.op === "replace" || op.op === "test") && !hasMember(op, "value")) {
        throw patchError(safeJson(op.op) + " needs a value");
      }
      if (op.op === "add") add(tokens, op.value);
      else if (op.op === "remove") remove(tokens);
      else if (op.op === "replace") {
        if (!tokens.length) root = op.value;
        else {
          var parent = parentOf(tokens);
          var t = tokens[tokens.length - 1];
          if (Array.isArray(parent)) parent[arrayIndex(t, parent.length, false)] = op.value;
          else if (hasMember(parent, t)) parent[t] = op.value;
          else throw patchError("no member " + safeJson(t) + " to replace");
        }
      } else if (op.op === "move" || op.op === "copy") {
        var from = pointerTokens(op.from);
        if (op.op === "move") {
          if (tokens.length > from.length && from.every(function (f, k) { return tokens[k] === f; })) {
            throw patchError("cannot move a value into itself");
          }
          add(tokens, remove(from));
        } else {
          add(tokens, JSON.parse(JSON.stringify(get(from))));
        }
      } else if (op.op === "test") {
        if (!sameJson(get(tokens), op.value)) throw patchError("test failed at " + safeJson(op.path));
      } else throw patchError("unknown operation " + safeJson(op.op));
    }
    return root;
  }

  /** Run a user callback; an exception is re-thrown asynchronously so it
   * neither breaks socket.io's packet loop nor is swallowed. */
  function invoke(fn, self, args) {
    try {
      fn.apply(self, args);
    } catch (e) {
      var handler = api.onCallbackError;
      if (typeof handler === "function") {
        try {
          handler(e);
          return;
        } catch (e2) {
          e = e2;
        }
      }
      setTimeout(function () {
        throw e;
      }, 0);
    }
  }

  function clampTimeout(ms) {
    if (typeof ms !== "number" || !isFinite(ms) || ms <= 0) return MAX_TIMEOUT;
    return Math.min(Math.max(1, Math.floor(ms)), MAX_TIMEOUT);
  }

  function flattenIds(args) {
    var ids = [];
    for (var i = 0; i < args.length; i++) {
      if (Array.isArray(args[i])) ids.push.apply(ids, flattenIds(args[i]));
      else if (args[i] !== undefined && args[i] !== null) ids.push(String(args[i]));
    }
    return ids;
  }

  function warn() {
    if (typeof console !== "undefined" && console.warn) console.warn.apply(console, arguments);
  }

  // ------------------------------------------------------------- Connection

  /**
   * One connection to one sbio namespace. Use sbio.connect() to make one.
   *
   * @param {string} namespace  e.g. "/board"
   * @param {object} [options]  see docs/js-client.md
   */
  function Connection(namespace, options) {
    if (!(this instanceof Connection)) return new Connection(namespace, options);
    options = options || {};
    if (typeof namespace !== "string" || !namespace) throw new TypeError("sbio.connect: namespace must be a string like \"/board\" or \"http://host:8282/board\"");
    var serverUrl = options.url;
    var query = "";
    var full = FULL_URL.exec(namespace);
    if (full) {
      // A full URL, as io() takes it: the origin is the server, the path the namespace.
      if (options.url) throw new TypeError("sbio.connect: pass the server either in the URL or as options.url, not both");
      serverUrl = full[1];
      query = full[3] || "";
      namespace = full[2] || "/";
    }
    if (namespace.charAt(0) !== "/") namespace = "/" + namespace;

    this.namespace = namespace;
    /** "connecting" | "open" | "closed" */
    this.status = "closed";
    /** The last connect refusal (an SbioError with code "connection_refused"), or null. */
    this.refused = null;
    this.callTimeout = options.callTimeout === undefined ? 10000 : options.callTimeout;

    this._listeners = {};
    this._subs = new Map(); // id -> subscription record
    this._nextSub = 0;
    this._pending = new Set(); // unsettled call()s: {reject}
    this._epoch = 0; // bumped on every connect / disconnect
    this._everOpened = false;
    this._statusEmitted = false;
    this._onConnect = options.onConnect || null;
    this._closedByUser = false;

    var io = options.io || loadIo();
    if (typeof io !== "function") {
      throw new Error("sbio.js needs socket.io-client: load socket.io.min.js before calling sbio.connect() (or pass options.io)");
    }

    var ioOptions = {};
    var k;
    for (k in SOCKET_DEFAULTS) ioOptions[k] = SOCKET_DEFAULTS[k];
    for (k in options) {
      if (Object.prototype.hasOwnProperty.call(options, k) && !OWN_OPTIONS[k]) ioOptions[k] = options[k];
    }
    ioOptions.autoConnect = false;
    if (options.auth !== undefined) ioOptions.auth = options.auth;

    var target;
    if (serverUrl) {
      target = String(serverUrl).replace(/\/+$/, "") + namespace + query;
    } else if (typeof location !== "undefined" && location && location.host) {
      target = namespace; // same origin as the page
    } else {
      throw new TypeError("sbio.connect: options.url (e.g. \"http://127.0.0.1:8282\") is required outside a browser page");
    }

    /** The underlying socket.io-client Socket (for anything sbio.js does not wrap). */
    this.socket = io(target, ioOptions);
    this._bindSocket();

    if (options.autoConnect !== false) this.connect();
  }

  var proto = Connection.prototype;

  // ---- events

  /**
   * Listen to a connection event ("status", "error", "connect_error",
   * "connect", "disconnect", "reconnecting") or to an event the server emits
   * to this connection (any other name; handed to the socket.io socket).
   */
  proto.on = function (event, fn) {
    if (typeof fn !== "function") throw new TypeError("conn.on: listener must be a function");
    if (LOCAL_EVENTS[event]) {
      (this._listeners[event] = this._listeners[event] || []).push(fn);
    } else {
      this.socket.on(event, fn);
    }
    return this;
  };

  /** Remove a listener added with on() (or every listener of `event` when `fn` is omitted). */
  proto.off = function (event, fn) {
    if (LOCAL_EVENTS[event]) {
      var list = this._listeners[event];
      if (!list) return this;
      if (!fn) delete this._listeners[event];
      else {
        var i = list.indexOf(fn);
        if (i >= 0) list.splice(i, 1);
        // once() wrappers
        for (var j = list.length - 1; j >= 0; j--) if (list[j]._orig === fn) list.splice(j, 1);
      }
    } else if (fn) {
      this.socket.off(event, fn);
    } else {
      this.socket.off(event);
    }
    return this;
  };

  /** Like on(), for one call only. */
  proto.once = function (event, fn) {
    var self = this;
    var wrapper = function () {
      self.off(event, wrapper);
      return fn.apply(this, arguments);
    };
    wrapper._orig = fn;
    return this.on(event, wrapper);
  };

  proto._emit = function (event) {
    var list = this._listeners[event];
    var args = Array.prototype.slice.call(arguments, 1);
    if (!list || !list.length) return false;
    list = list.slice();
    for (var i = 0; i < list.length; i++) invoke(list[i], this, args);
    return true;
  };

  proto._setStatus = function (status) {
    if (this.status === status) return;
    this.status = status;
    this._statusEmitted = true;
    this._emit("status", status);
  };

  /** Report an error to "error" listeners, or to the console if there are none. */
  proto._reportError = function (err) {
    if (!this._emit("error", err)) warn("sbio " + this.namespace + ":", err.code, err.message);
  };

  // ---- lifecycle

  proto._bindSocket = function () {
    var self = this;
    var socket = this.socket;

    socket.on("connect", function () {
      self._handleConnect();
    });

    socket.on("disconnect", function (reason) {
      self._epoch++;
      if (self._closedByUser) return; // close() has already done the bookkeeping
      self._emit("disconnect", reason);
      if (reason === "io server disconnect" || !socket.active || !self._willRetry()) {
        // The server ended this connection on purpose: socket.io does not
        // reconnect; neither do we (call conn.connect() to try again).
        self._failPending("disconnected", "the server closed the connection");
        self._setStatus("closed");
      } else {
        self._setStatus("connecting"); // socket.io reconnects by itself
      }
    });

    socket.on("connect_error", function (err) {
      if (self._closedByUser) return;
      var data = err && err.data;
      var message = (err && err.message) || "connection failed";
      if (socket.active && !self._willRetry()) {
        // Transport-level failure with reconnection disabled: nothing retries.
        self._failPending("connect_failed", message);
        self._setStatus("closed");
        self._emit("connect_error", SbioError("connect_failed", message, { data: data, cause: err }));
        return;
      }
      if (socket.active) {
        // Transport-level failure (server down, network): socket.io retries.
        self._setStatus("connecting");
        self._emit("connect_error", SbioError("connect_failed", message, { data: data, cause: err }));
        return;
      }
      // The namespace refused the connection (CONNECT_ERROR): socket.io does
      // not retry. Calls waiting for the connection cannot succeed.
      var refusal = SbioError("connection_refused", message, { data: data });
      self.refused = refusal;
      self._failPending("connection_refused", message, { data: data });
      self._setStatus("closed");
      if (!self._emit("connect_error", refusal)) warn("sbio " + self.namespace + ": connection refused:", message, data);
    });

    var manager = socket.io;
    if (manager && typeof manager.on === "function") {
      manager.on("reconnect_attempt", function (attempt) {
        if (!self._closedByUser) self._emit("reconnecting", attempt);
      });
      manager.on("reconnect_failed", function () {
        if (self._closedByUser) return;
        self._failPending("connect_failed", "gave up reconnecting");
        self._setStatus("closed");
      });
    }

    socket.on("sbio:error", function (payload) {
      payload = payload || {};
      self._reportError(wireError(payload, { event: payload.event }));
    });

    socket.on("sbio:update", function (msg) {
      self._handleUpdate(msg);
    });
  };

  /** Whether socket.io will reconnect by itself after a transport failure. */
  proto._willRetry = function () {
    var manager = this.socket.io;
    return !manager || typeof manager.reconnection !== "function" || manager.reconnection() !== false;
  };

  /**
   * Open the connection (done by sbio.connect() unless autoConnect: false),
   * or open it again after close(), a refusal or a server-side disconnect.
   * Live subscriptions are re-sent once it is open.
   *
   * @param {object|function} [auth]  replaces the handshake auth payload
   */
  proto.connect = function (auth) {
    if (auth !== undefined) this.setAuth(auth);
    this._closedByUser = false;
    this.refused = null;
    if (this.status === "open" || (this.status === "connecting" && this.socket.active)) return this;
    if (!this._statusEmitted) {
      // The first "connecting" is announced a tick later, so listeners
      // attached right after sbio.connect() returns see it too.
      var self = this;
      this.status = "connecting";
      Promise.resolve().then(function () {
        if (!self._statusEmitted && self.status === "connecting") {
          self._statusEmitted = true;
          self._emit("status", "connecting");
        }
      });
    } else {
      this._setStatus("connecting");
    }
    this.socket.connect();
    return this;
  };

  /**
   * Replace the handshake auth payload (an object, or a function(cb) called
   * on every connection attempt). Used from the next (re)connect on.
   */
  proto.setAuth = function (auth) {
    this.socket.auth = auth;
    return this;
  };

  /**
   * Close the connection for good: no reconnect, pending calls reject with
   * code "closed". Subscriptions stay registered (without callbacks) and are
   * re-sent if connect() is called again.
   */
  proto.close = function () {
    this._closedByUser = true;
    this._epoch++;
    this._failPending("closed", "the connection was closed");
    this.socket.disconnect();
    this._setStatus("closed");
    return this;
  };

  /**
   * A promise that resolves (with this connection) once the status is
   * "open", or rejects with the refusal / closing error.
   */
  proto.ready = function () {
    var self = this;
    if (this.status === "open") return Promise.resolve(this);
    if (this.status === "closed") return Promise.reject(this._closedError());
    return new Promise(function (resolve, reject) {
      var onStatus = function (s) {
        if (s === "open") {
          self.off("status", onStatus);
          resolve(self);
        } else if (s === "closed") {
          self.off("status", onStatus);
          reject(self._closedError());
        }
      };
      self.on("status", onStatus);
    });
  };

  proto._closedError = function () {
    if (this.refused) return SbioError("connection_refused", this.refused.message, { data: this.refused.data });
    return SbioError("closed", "the connection is closed");
  };

  proto._handleConnect = function () {
    var self = this;
    var epoch = ++this._epoch;
    var reconnect = this._everOpened;
    this._everOpened = true;
    this.refused = null;
    this._emit("connect", { reconnect: reconnect });

    var finish = function () {
      if (epoch !== self._epoch || !self.socket.connected) return; // dropped again meanwhile
      self._setStatus("open");
      self._subs.forEach(function (sub) {
        self._sendSubscribe(sub, reconnect || sub.sent ? "resubscribe" : "subscribe");
      });
    };

    if (!this._onConnect) return finish();
    var result;
    try {
      result = this._onConnect(this, { reconnect: reconnect });
    } catch (e) {
      this._reportHookError(e);
      return finish();
    }
    if (result && typeof result.then === "function") {
      result.then(finish, function (e) {
        self._reportHookError(e);
        finish();
      });
    } else {
      finish();
    }
  };

  proto._reportHookError = function (e) {
    var err = e && e.code ? e : SbioError("on_connect_failed", (e && e.message) || String(e), { cause: e });
    this._reportError(err);
  };

  // ---- calls

  /**
   * Call the server handler on_<event>(...args).
   * @returns {Promise} resolves with the handler's result; rejects with an
   *   SbioError whose `code` is the server's (forbidden, not_found,
   *   bad_request, internal, an application code) or the client's
   *   (timeout, disconnected, closed, connection_refused, bad_response).
   */
  proto.call = function (event) {
    return this._call(this.callTimeout, event, Array.prototype.slice.call(arguments, 1));
  };

  /**
   * Per-call timeout: conn.timeout(30000).call("export", id).
   * 0 / Infinity / null means no timeout.
   */
  proto.timeout = function (ms) {
    var self = this;
    return {
      call: function (event) {
        return self._call(ms, event, Array.prototype.slice.call(arguments, 1));
      },
    };
  };

  proto._call = function (timeoutMs, event, args) {
    var self = this;
    if (typeof event !== "string" || !event) {
      return Promise.reject(SbioError("bad_request", "conn.call: the event name must be a non-empty string"));
    }
    if (RESERVED_EVENTS[event]) {
      return Promise.reject(SbioError("bad_request", "conn.call: \"" + event + "\" is reserved by socket.io"));
    }
    if (this.status === "closed") return Promise.reject(this._closedError());

    return new Promise(function (resolve, reject) {
      var entry = { reject: reject, settled: false };
      self._pending.add(entry);
      var settle = function (fn, value) {
        if (entry.settled) return;
        entry.settled = true;
        self._pending.delete(entry);
        fn(value);
      };
      entry.reject = function (err) {
        settle(reject, err);
      };
      var ack = function (err, envelope) {
        if (err) {
          // socket.io's own errors: the ack timer ran out (the packet is
          // also removed from the send buffer, so it is never sent late),
          // or the connection dropped after the packet left.
          if (/timed out/i.test(err.message)) {
            settle(reject, SbioError("timeout", "no reply to \"" + event + "\" within " + timeoutMs + " ms", { event: event }));
          } else {
            settle(reject, SbioError("disconnected", "the connection dropped before \"" + event + "\" was answered", { event: event }));
          }
          return;
        }
        if (!envelope || typeof envelope !== "object" || typeof envelope.ok !== "boolean") {
          settle(reject, SbioError("bad_response", "malformed reply to \"" + event + "\": " + safeJson(envelope), { event: event }));
        } else if (envelope.ok) {
          settle(resolve, envelope.data);
        } else {
          settle(reject, wireError(envelope.error, { event: event }));
        }
      };
      try {
        var emitArgs = [event].concat(args, [ack]);
        var s = self.socket.timeout(clampTimeout(timeoutMs));
        s.emit.apply(s, emitArgs);
      } catch (e) {
        settle(reject, SbioError("bad_request", e.message, { event: event }));
      }
    });
  };

  /**
   * Emit an event without waiting for a reply. If the server fails to
   * handle it, it reports through an "error" event.
   */
  proto.emit = function (event) {
    if (this.status === "closed") throw this._closedError();
    this.socket.emit.apply(this.socket, arguments);
    return this;
  };

  /** Reject every unsettled call; drop packets still waiting in socket.io's
   * send buffer and fire its ack timers now (so nothing is sent late and no
   * timer outlives the connection). */
  proto._failPending = function (code, message, extra) {
    var pending = Array.from(this._pending);
    this._pending.clear();
    for (var i = 0; i < pending.length; i++) pending[i].reject(SbioError(code, message, extra));
    var socket = this.socket;
    socket.sendBuffer = [];
    var acks = socket.acks;
    if (acks) {
      Object.keys(acks).forEach(function (id) {
        var ack = acks[id];
        delete acks[id];
        if (ack && ack.withError) invoke(ack, socket, [new Error("socket has been disconnected")]);
      });
    }
  };

  // ---- subscriptions

  /**
   * Subscribe to on_<event>(...args): `callback(data, trigger)` gets the
   * first result and every changed result after that, including the fresh
   * result after each reconnect.
   *
   * @param {string} event
   * @param {Array} [args]
   * @param {function} callback  (data, trigger)
   * @param {object} [options]   {onError(err), delta: true (later results
   *   travel as JSON Patches when smaller; the callback still gets whole
   *   values, which it must not modify)}
   * @returns {string} the subscription id, for unsubscribe()
   */
  proto.subscribe = function (event, args, callback, options) {
    if (typeof args === "function") {
      options = callback;
      callback = args;
      args = [];
    }
    if (typeof event !== "string" || !event) throw new TypeError("conn.subscribe: the event name must be a non-empty string");
    if (typeof callback !== "function") throw new TypeError("conn.subscribe: callback must be a function");
    if (args === undefined || args === null) args = [];
    else if (!Array.isArray(args)) args = [args];
    options = options || {};

    var id = "s" + ++this._nextSub;
    var sub = {
      id: id,
      event: event,
      args: args.slice(),
      callback: callback,
      onError: options.onError || null,
      delta: options.delta === true,
      value: undefined, // delta: the value the next patch applies to
      hasValue: false, // delta: a data push arrived since the last sbio:subscribe / error
      gen: 0, // bumped on every sbio:subscribe sent
      sent: false,
      updatedSinceSend: false,
      hasLast: false,
      lastKey: null,
    };
    this._subs.set(id, sub);
    if (this.status === "open") this._sendSubscribe(sub, "subscribe");
    // otherwise it is sent when the connection opens
    return id;
  };

  /**
   * Stop one or more subscriptions: unsubscribe(id), unsubscribe(id1, id2),
   * unsubscribe([id1, id2]). Unknown ids are ignored.
   * @returns {number} how many live subscriptions were removed
   */
  proto.unsubscribe = function () {
    var ids = flattenIds(arguments);
    var count = 0;
    var sent = [];
    for (var i = 0; i < ids.length; i++) {
      var sub = this._subs.get(ids[i]);
      if (!sub) continue;
      this._subs.delete(ids[i]);
      count++;
      if (sub.sent) sent.push(ids[i]);
    }
    // While disconnected there is nothing to tell: the server forgets a
    // connection's subscriptions with the connection, and they are not
    // re-sent any more.
    if (sent.length && this.socket.connected) this.socket.emit("sbio:unsubscribe", { ids: sent });
    return count;
  };

  /**
   * Send one subscription (or all) again now and deliver its fresh result,
   * e.g. after a login made a subscription that failed with "forbidden"
   * allowed.
   */
  proto.resubscribe = function () {
    var self = this;
    var ids = flattenIds(arguments);
    if (this.status !== "open") return this;
    (ids.length ? ids : Array.from(this._subs.keys())).forEach(function (id) {
      var sub = self._subs.get(id);
      if (sub) self._sendSubscribe(sub, "resubscribe");
    });
    return this;
  };

  /** The ids of the live subscriptions. */
  proto.subscriptions = function () {
    return Array.from(this._subs.keys());
  };

  proto._sendSubscribe = function (sub, trigger) {
    var self = this;
    var gen = ++sub.gen;
    sub.sent = true;
    sub.updatedSinceSend = false;
    sub.hasValue = false; // patches until the next whole push belong to the replaced subscription
    var ack = function (err, envelope) {
      if (self._subs.get(sub.id) !== sub || sub.gen !== gen) return; // unsubscribed or sent again since
      if (err) {
        if (/timed out/i.test(err.message)) {
          self._deliverError(sub, SbioError("timeout", "no first result for \"" + sub.event + "\" within " + self.callTimeout + " ms"));
        }
        // disconnected: it is sent again on reconnect
        return;
      }
      if (!envelope || typeof envelope !== "object" || typeof envelope.ok !== "boolean") {
        self._deliverError(sub, SbioError("bad_response", "malformed reply to sbio:subscribe: " + safeJson(envelope)));
      } else if (!envelope.ok) {
        self._deliverError(sub, wireError(envelope.error));
      } else if (!sub.updatedSinceSend) {
        // An sbio:update that overtook this ack was computed after the
        // server recorded the subscription: it is at least as fresh, so
        // the ack's result is dropped in that case.
        self._deliver(sub, envelope.data, trigger);
      }
    };
    var s = this.socket.timeout(clampTimeout(this.callTimeout));
    var payload = { id: sub.id, event: sub.event, args: sub.args };
    if (sub.delta) payload.delta = true;
    s.emit("sbio:subscribe", payload, ack);
  };

  proto._handleUpdate = function (msg) {
    if (!msg || typeof msg !== "object") return;
    var sub = this._subs.get(msg.id);
    if (!sub) return; // unsubscribed: drop late pushes
    if (msg.error !== undefined && msg.error !== null) {
      sub.updatedSinceSend = true;
      sub.hasValue = false;
      this._deliverError(sub, wireError(msg.error));
      return;
    }
    var data = msg.data;
    if (msg.patch !== undefined) {
      // The server pushes whole after a subscribe and after an error, so a
      // patch before that belongs to the subscription this one replaced.
      if (!sub.hasValue) return;
      try {
        data = applyPatch(sub.value, msg.patch);
      } catch (err) {
        // cannot happen with an sbio server; recover by asking for the whole value
        this._reportError(SbioError("bad_patch", "sbio:update for \"" + sub.event + "\": " + err.message));
        this._sendSubscribe(sub, "resubscribe");
        return;
      }
    }
    sub.updatedSinceSend = true;
    if (sub.delta) {
      sub.value = data;
      sub.hasValue = true;
    }
    this._deliver(sub, data, msg.trigger);
  };

  /** Deliver a result unless it equals the last result delivered for this
   * subscription (the same data after a reconnect, or an update racing a
   * resubscribe, is never delivered twice in a row). */
  proto._deliver = function (sub, data, trigger) {
    var key = canonical(data);
    if (sub.hasLast && sub.lastKey === key) return;
    sub.hasLast = true;
    sub.lastKey = key;
    invoke(sub.callback, this, [data, trigger]);
  };

  proto._deliverError = function (sub, err) {
    err.subscription = sub.id;
    err.event = sub.event;
    sub.hasLast = false; // the next good result is delivered even if unchanged
    if (sub.onError) invoke(sub.onError, this, [err]);
    else this._reportError(err);
  };

  // ---------------------------------------------------------------- exports

  /**
   * Connect to an sbio namespace.
   * @param {string} namespace  e.g. "/board" (the page's server, or options.url),
   *   or a full URL as io() takes it: "http://127.0.0.1:8282/board"
   * @param {object} [options]  url, auth, callTimeout, onConnect, transports,
   *   reconnection* options and any other socket.io-client option
   * @returns {Connection}
   */
  function connect(namespace, options) {
    return new Connection(namespace, options);
  }

  api.version = VERSION;
  api.connect = connect;
  api.Connection = Connection;
  api.SbioError = SbioError;
  /** socket.io-client options sbio.js passes unless connect() overrides them. */
  api.defaults = SOCKET_DEFAULTS;
  /**
   * Called with an exception thrown by an application callback (subscription
   * callback, event listener). Default (null): re-thrown asynchronously, so
   * it shows up as an uncaught error (browser console, Node's
   * uncaughtException) without breaking sbio.js's own bookkeeping.
   */
  api.onCallbackError = null;
  api._canonical = canonical;
  /** Apply a JSON Patch (RFC 6902) without changing `value` (what `delta: true` does). */
  api.applyPatch = applyPatch;
  return api;
});
